"""``sockgate proxy --workers``: each worker pinned to one CPU, and handed the connections
that CPU processed (``SO_INCOMING_CPU`` on its own ``SO_REUSEPORT`` listener) — checked in
the real kernel with clients pinned to each CPU, and the worker holding each accepted
socket found through /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sockgate.linux import cpus
from support.proxyproc import EchoServer, ProxyProc, connect, roundtrip, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux CPU affinity and SO_INCOMING_CPU")

ALLOWED = cpus.allowed()


def start(procs: list[ProxyProc], tmp_path: Path, echo: EchoServer, *args: str) -> ProxyProc:
    p = ProxyProc(["--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}", *args],
                  tmp_path / f"proxy{len(procs)}.log")
    procs.append(p)
    p.ready()
    return p


def workers(p: ProxyProc, n: int) -> list[int]:
    """The proxy's worker processes (its children), once all ``n`` exist."""
    def children() -> list[int]:
        text = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text()
        return [int(x) for x in text.split()]
    wait_for(lambda: len(children()) == n)
    return children()


def affinity(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def holder(workers: list[int], client_port: int) -> int:
    """The worker holding the accepted end of the client connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        local, remote = f[1], f[2]
        if int(remote.split(":")[1], 16) == client_port and remote.startswith("0100007F") and local.startswith("0100007F"):
            inode = f[9]  # the proxy's end: its peer is the client's port
    assert inode is not None and inode != "0", f"no accepted socket for client port {client_port}"
    for pid in workers:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError(f"no worker holds socket {inode}")


def from_cpu(cpu: int, port: int, count: int) -> list[socket.socket]:
    """``count`` connections made by a thread pinned to ``cpu`` (the handshake is processed
    on the sender's CPU on loopback), each echoed once and left open."""
    out: list[socket.socket] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # this thread only
            for i in range(count):
                s = connect(port)
                out.append(s)
                assert roundtrip(s, b"c%d" % i) == b"c%d" % i
        except BaseException as e:  # reported by the test's thread
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive() and not err, err
    return out


def test_each_worker_is_pinned_and_gets_its_cpus_connections(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    n = max(2, len(ALLOWED))
    p = start(procs, tmp_path, echo, "--workers", str(n))
    pids = workers(p, n)
    notice = p.find(event="notice", message="listening")[0]
    assert notice["cpus"] == ",".join(map(str, ALLOWED))
    pinned = {}
    for pid in pids:
        wait_for(lambda: len(affinity(pid)) == 1)  # pinned right after the fork
        pinned[pid] = next(iter(affinity(pid)))
    assert sorted(pinned.values()) == sorted(ALLOWED[i % len(ALLOWED)] for i in range(n))
    assert affinity(p.pid) == set(ALLOWED)  # the parent, which only forwards signals, is not
    for cpu in ALLOWED[:4]:
        conns = from_cpu(cpu, p.tcp_port(), 12)
        try:
            for s in conns:
                w = holder(pids, s.getsockname()[1])
                assert pinned[w] == cpu, f"a connection made on CPU {cpu} went to the worker on CPU {pinned[w]}"
        finally:
            for s in conns:
                s.close()
    assert p.stop() == 0


def test_none_leaves_workers_unpinned_and_one_worker_is_never_pinned(tmp_path: Path, echo: EchoServer,
                                                                    procs: list[ProxyProc]) -> None:
    p = start(procs, tmp_path, echo, "--workers", "2", "--cpu-affinity", "none")
    for pid in workers(p, 2):
        assert affinity(pid) == set(ALLOWED)
    assert "cpus" not in p.find(event="notice", message="listening")[0]
    one = start(procs, tmp_path, echo)
    with connect(one.tcp_port()) as s:
        assert roundtrip(s, b"x") == b"x"
    assert affinity(one.pid) == set(ALLOWED)
    last = start(procs, tmp_path, echo, "--cpu-affinity", str(ALLOWED[-1]))  # a list: pinned even alone
    assert affinity(last.pid) == {ALLOWED[-1]}
    with connect(last.tcp_port()) as s:
        assert roundtrip(s, b"z") == b"z"


def test_a_list_pins_in_its_order_and_auto_counts_the_cpus(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    order = list(reversed(ALLOWED))
    p = start(procs, tmp_path, echo, "--workers", "auto", "--cpu-affinity", ",".join(map(str, order)))
    pids = workers(p, len(ALLOWED))
    for pid in pids:
        wait_for(lambda: len(affinity(pid)) == 1)
    assert sorted(next(iter(affinity(pid))) for pid in pids) == sorted(order)
    with connect(p.tcp_port()) as s:
        assert roundtrip(s, b"y") == b"y"


@pytest.mark.parametrize(("args", "why"), [
    (["--cpu-affinity", str(max(ALLOWED) + 1)], "is not one this process may run on"),
    (["--cpu-affinity", "1-0"], "is not a range of CPUs"),
    (["--cpu-affinity", "0,,1"], "is not auto, none or a CPU list"),
    (["--cpu-affinity", "\u00b2"], "is not auto, none or a CPU list"),
    (["--workers", "two"], "expected a number or auto"),
    (["--workers", "0"], "must be at least 1"),
])
def test_bad_affinity_or_workers_is_a_one_line_refusal(echo: EchoServer, args: list[str], why: str) -> None:
    out = subprocess.run([sys.executable, "-m", "sockgate", "proxy", "--listen", "tcp://127.0.0.1:0", "--forward",
                          f"tcp://127.0.0.1:{echo.port}", "--workers", "2", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert why in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
