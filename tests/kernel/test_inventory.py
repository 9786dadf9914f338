"""``inventory.listeners`` against real sockets of processes the test starts: hostile names
(a newline and bytes that are not UTF-8 in argv[0] and comm), a listener shared across fork,
clients left out, and processes that exit while the inventory is being taken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable, Iterator

import pytest

from sockgate import inventory
from sockgate.linux import procfs
from support.children import reap

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc and sock_diag are Linux-only")

# Listens on TCP, binds UDP, keeps a connected UDP client, optionally forks a worker sharing
# them; renames itself (comm) when asked; reports what it made as JSON; exits on stdin EOF.
CHILD = r"""
import ctypes, json, os, signal, socket, sys
comm = sys.argv[1].encode("utf-8", "surrogateescape")
if comm:
    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(comm))  # PR_SET_NAME
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.connect(("127.0.0.1", 9))
out = {"tcp": [t.fileno(), t.getsockname()[1]], "udp": [u.fileno(), u.getsockname()[1]],
       "client": [c.fileno(), c.getsockname()[1]], "worker": None}
if "fork" in sys.argv[2:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies with its parent
        os.close(r); os.close(w)
        signal.pause()
        os._exit(0)
    out["worker"] = pid
print(json.dumps(out), flush=True)
sys.stdin.read()
"""

Spawn = Callable[..., tuple[subprocess.Popen[bytes], dict[str, Any]]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv0: bytes, comm: str = "", *opts: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        p = subprocess.Popen(
            [argv0, b"-c", CHILD.encode(), os.fsencode(comm), *map(os.fsencode, opts)],
            executable=sys.executable, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        procs.append(p)
        assert p.stdout is not None
        return p, json.loads(p.stdout.readline())

    yield start
    reap(procs)


def holders_by_port(scan: inventory.Scan) -> dict[tuple[str, int], tuple[inventory.Holder, ...]]:
    return {(f.sock.proto, f.sock.local_port or 0): f.holders for f in scan.found}


def test_listeners_name_their_holders_exactly(spawn: Spawn) -> None:
    argv0 = b"/opt/odd dir/sgt\nd\xffmon"  # a newline and a byte that is not UTF-8
    p, made = spawn(argv0, os.fsdecode(b"sgt\nw\xe9"), "fork")
    ports = {made[k][1] for k in ("tcp", "udp", "client")}
    scan = inventory.listeners(ports)
    got = holders_by_port(scan)
    assert set(got) == {("tcp", made["tcp"][1]), ("udp", made["udp"][1])}  # the client is left out
    for proto in ("tcp", "udp"):
        hs = got[(proto, made[proto][1])]
        assert [(h.pid, h.fds) for h in hs] == sorted([(p.pid, (made[proto][0],)), (made["worker"], (made[proto][0],))])
        for h in hs:
            assert h.name is not None and h.argv0 is not None
            assert os.fsencode(h.name) == b"sgt\nw\xe9"
            assert os.fsencode(h.argv0) == b"sgt\nd\xffmon"
    # the kernel's cookie is the one the socket itself gives
    (tcp,) = [f.sock for f in scan.found if f.sock.proto == "tcp"]
    assert tcp.cookie and tcp.listening and inventory.guardable(tcp)
    assert inventory.listeners(ports, ["udp"]).found == tuple(f for f in scan.found if f.sock.proto == "udp")


@pytest.mark.parametrize("when", ["before the fd scan", "before the names", "a zombie before the names"])
def test_a_process_exiting_mid_scan_is_left_out(spawn: Spawn, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    victim, vmade = spawn(b"victim")
    survivor, smade = spawn(b"survivor")
    ports = {vmade["tcp"][1], smade["tcp"][1]}
    killed: list[int] = []

    def kill_victim() -> None:
        if not killed:
            victim.kill()
            if when.startswith("a zombie"):  # dead, not reaped: /proc/PID stays, its fds are gone
                os.waitid(os.P_PID, victim.pid, os.WEXITED | os.WNOWAIT)
            else:
                victim.wait()
            killed.append(victim.pid)

    real_holders, real_names = procfs.holders, procfs.names

    def holders(*a: Any, **kw: Any) -> procfs.HolderIndex:
        if when == "before the fd scan":
            kill_victim()
        return real_holders(*a, **kw)

    def names(pid: int, *a: Any, **kw: Any) -> procfs.Names | None:
        if when != "before the fd scan" and pid == victim.pid:
            kill_victim()
        return real_names(pid, *a, **kw)

    monkeypatch.setattr(procfs, "holders", holders)
    monkeypatch.setattr(procfs, "names", names)
    got = holders_by_port(inventory.listeners(ports, ["tcp"]))
    assert killed == [victim.pid]
    assert got[("tcp", vmade["tcp"][1])] == ()  # listed by the kernel before it went: no holder now
    (h,) = got[("tcp", smade["tcp"][1])]
    assert (h.pid, h.fds, h.argv0) == (survivor.pid, (smade["tcp"][0],), "survivor")
