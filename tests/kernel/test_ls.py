"""`sockgate ls` against the real kernel, with `ss -tuwxapn` as the oracle.

The test process opens one socket of each kind (TCP/UDP over IPv4 and IPv6, Unix stream,
dgram and seqpacket on a path and in the abstract namespace, a socket pair, a raw ICMP
socket), runs `sockgate ls` as a separate process, and compares every socket it holds with
what ss reports for the same (pid, fd). Guards are checked on a guarded socket, an unguarded
one, one with a hand-made filter, one held by a process running as `nobody`, and — running
`sockgate ls` itself as nobody — on a root-owned socket it may not look into.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import needs_root, needs_tool

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="Linux sockets"), needs_tool("ss")]

NOBODY = 65534
ACCEPT_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0xFFFF)  # ret #0xffff: a one-instruction foreign filter
SG = [sys.executable, "-m", "sockgate"]


def sockgate_ls(*args: str, as_nobody: bool = False) -> list[dict[str, Any]]:
    argv = SG + ["ls", "--json", *args]
    if as_nobody:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True, cwd="/")
    return [json.loads(line) for line in out.stdout.splitlines()]


_USERS = re.compile(r'\("([^"]*)",pid=(\d+),fd=(\d+)\)')


def ss_by_holder(pid: int) -> dict[tuple[int, int], dict[str, str]]:
    """ss -tuwxapn rows of process ``pid``, keyed by (pid, fd)."""
    out = subprocess.run(["ss", "-tuwxapn"], capture_output=True, text=True, timeout=60, check=True).stdout
    rows: dict[tuple[int, int], dict[str, str]] = {}
    for line in out.splitlines()[1:]:
        f = line.split()
        if len(f) < 6:
            continue
        rec = {"netid": f[0], "state": f[1]}
        if f[0].startswith("u_"):
            rec["local"], rec["inode"] = f[4], f[5]
        else:
            rec["local"] = f[4]
        for _name, p, fd in _USERS.findall(line):
            if int(p) == pid:
                rows[(int(p), int(fd))] = rec
    return rows


def canon_inet(local: str) -> tuple[str, int]:
    addr, port = local.rsplit(":", 1)
    addr = addr.strip("[]")
    return ("::" if addr in ("*", "::") else addr), int(port)


def by_holder(rows: list[dict[str, Any]], pid: int) -> dict[tuple[int, int], dict[str, Any]]:
    out = {}
    for r in rows:
        for p in r["processes"]:
            if p["pid"] == pid:
                for fd in p["fds"]:
                    out[(pid, fd)] = r
    return out


@pytest.fixture
def zoo(tmp_path: Path) -> Iterator[dict[str, socket.socket]]:
    """One socket of every kind, all held by this process."""
    tag = secrets.token_hex(4)
    made: dict[str, socket.socket] = {}

    def add(name: str, family: int, kind: int, addr: Any, listen: bool, proto: int = 0) -> None:
        s = socket.socket(family, kind, proto)
        made[name] = s
        if addr is not None:
            s.bind(addr)
        if listen:
            s.listen(4)

    try:
        add("tcp4", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0), True)
        add("tcp6", socket.AF_INET6, socket.SOCK_STREAM, ("::1", 0), True)
        add("udp4", socket.AF_INET, socket.SOCK_DGRAM, ("0.0.0.0", 0), False)
        add("udp6", socket.AF_INET6, socket.SOCK_DGRAM, ("::", 0), False)
        add("unix_path", socket.AF_UNIX, socket.SOCK_STREAM, str(tmp_path / "s.sock"), True)
        add("unix_seq", socket.AF_UNIX, socket.SOCK_SEQPACKET, str(tmp_path / "q.sock"), True)
        add("unix_abstract", socket.AF_UNIX, socket.SOCK_DGRAM, f"\0sgt-ls-{tag}", False)
        a, b = socket.socketpair()
        made["pair_a"], made["pair_b"] = a, b
        if os.geteuid() == 0:
            add("raw4", socket.AF_INET, socket.SOCK_RAW, None, False, socket.IPPROTO_ICMP)
        yield made
    finally:
        for s in made.values():
            s.close()


def test_inventory_agrees_with_ss(zoo: dict[str, socket.socket]) -> None:
    pid = os.getpid()
    ours = by_holder(sockgate_ls("-a", "--pid", str(pid)), pid)
    theirs = ss_by_holder(pid)
    for name, s in zoo.items():
        key = (pid, s.fileno())
        assert key in theirs, f"ss does not list {name}"
        assert key in ours, f"sockgate ls does not list {name}"
        o, t = ours[key], theirs[key]
        assert o["state"] == t["state"], name
        if o["family"] == "unix":
            assert o["netid"] == t["netid"], name
            assert str(o["inode"]) == t["inode"], name
            assert (o["path"] or "*") == t["local"], name
        else:
            assert o["proto"] == t["netid"], name
            assert canon_inet(o["local"]) == canon_inet(t["local"]), name
    # ... and nothing else of ours that the two disagree on (ss lists no ICMP ping sockets)
    assert {k for k, r in ours.items() if r["proto"] != "icmp"} == set(theirs)


def test_default_shows_listening_and_bound_only(zoo: dict[str, socket.socket]) -> None:
    pid = os.getpid()
    shown = by_holder(sockgate_ls("--pid", str(pid)), pid)
    fds = {fd for _, fd in shown}
    for name in ("tcp4", "tcp6", "udp4", "udp6", "unix_path", "unix_seq", "unix_abstract"):
        assert zoo[name].fileno() in fds, name
    assert zoo["pair_a"].fileno() not in fds and zoo["pair_b"].fileno() not in fds


def test_kind_and_port_filters(zoo: dict[str, socket.socket]) -> None:
    pid = str(os.getpid())
    assert {r["proto"] for r in sockgate_ls("-t", "--pid", pid)} == {"tcp"}
    assert {r["proto"] for r in sockgate_ls("-x", "-u", "--pid", pid)} == {"unix", "udp"}
    port = zoo["udp6"].getsockname()[1]
    rows = sockgate_ls("--port", str(port), "--pid", pid)
    assert [(r["proto"], r["port"], r["family"]) for r in rows] == [("udp", port, "ipv6")]


def test_exposure_column(zoo: dict[str, socket.socket]) -> None:
    pid = os.getpid()
    rows = by_holder(sockgate_ls("-a", "--pid", str(pid)), pid)
    kind = {name: rows[(pid, s.fileno())]["exposure"] for name, s in zoo.items()}
    assert kind["tcp4"]["kind"] == kind["tcp6"]["kind"] == "loopback"
    assert kind["udp4"]["kind"] == kind["udp6"]["kind"] == "any"
    assert kind["unix_abstract"]["kind"] == "abstract"
    assert kind["pair_a"]["kind"] == "connected"
    path = zoo["unix_path"].getsockname()
    st = os.stat(path)
    assert kind["unix_path"]["mode"] == f"{st.st_mode & 0o7777:04o}"


@needs_root
def test_raw_socket_listed(zoo: dict[str, socket.socket]) -> None:
    pid = os.getpid()
    row = by_holder(sockgate_ls("-w", "--pid", str(pid)), pid)[(pid, zoo["raw4"].fileno())]
    assert (row["proto"], row["port"], row["state"]) == ("raw", socket.IPPROTO_ICMP, "UNCONN")


def _policy(tmp_path: Path) -> Any:
    import sockgate

    p = tmp_path / "ls.policy"
    p.write_text("service web tcp/80 {\n    allow 127.0.0.1\n    default deny\n}\n")
    return sockgate.load(p)


def _guard(sock: socket.socket, tmp_path: Path, backend: str = "cbpf") -> str:
    """Guard ``sock`` with a compiled sockgate program from ``backend``; its expected guard text."""
    try:
        from sockgate.guard import guard

        g = guard(_policy(tmp_path), sock, "web", backend=backend)
        assert g.backend == backend
        return f"sockgate web {g.digest}" + (" (ebpf, 0 refused)" if backend == "ebpf" else "")
    except ImportError:
        from sockgate import bpf
        from sockgate.linux import filter as sockfilter

        program = bpf.compile_service(_policy(tmp_path).service("web"))
        sockfilter.attach(sock, program.encode())
        marker = bpf.identify(bpf.decode(program.encode()))
        assert marker is not None
        return f"sockgate web {marker.digest}"


@pytest.mark.parametrize("backend", ["cbpf", "ebpf"])
def test_guard_column(tmp_path: Path, backend: str) -> None:
    """Our guard from either backend is named, with ``guard.backend`` in the JSON row."""
    from sockgate.linux import filter as sockfilter

    pid = os.getpid()
    with socket.socket() as guarded, socket.socket() as plain, socket.socket() as foreign:
        for s in (guarded, plain, foreign):
            s.bind(("127.0.0.1", 0))
            s.listen(1)
        expected = _guard(guarded, tmp_path, backend)
        sockfilter.attach(foreign, ACCEPT_ALL)
        rows = by_holder(sockgate_ls("-t", "--pid", str(pid)), pid)
        assert rows[(pid, guarded.fileno())]["guard"]["text"] == expected
        assert rows[(pid, guarded.fileno())]["guard"]["status"] == "sockgate"
        assert rows[(pid, guarded.fileno())]["guard"]["backend"] == backend
        assert rows[(pid, plain.fileno())]["guard"]["text"] == "none"
        assert rows[(pid, foreign.fileno())]["guard"]["text"] == "foreign filter (1 insns)"
        unguarded = by_holder(sockgate_ls("-t", "--unguarded", "--pid", str(pid)), pid)
        assert (pid, guarded.fileno()) not in unguarded
        assert {(pid, plain.fileno()), (pid, foreign.fileno())} <= set(unguarded)


_CHILD = """
import socket, sys
from sockgate.linux import filter
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
filter.attach(s, %r)
print(s.getsockname()[1], s.fileno(), flush=True)
sys.stdin.read()
"""


@needs_root
@needs_tool("setpriv")
def test_another_users_socket_is_read_as_root() -> None:
    child = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c", _CHILD % ACCEPT_ALL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert child.stdout is not None
        port, fd = map(int, child.stdout.readline().split())
        [row] = sockgate_ls("--port", str(port), "-u")
        assert row["user"] == "nobody" and row["uid"] == NOBODY
        assert [(p["pid"], p["fds"]) for p in row["processes"]] == [(child.pid, [fd])]
        assert row["guard"]["text"] == "foreign filter (1 insns)"
        assert sockgate_ls("-u", "--port", str(port), "--user", str(NOBODY)) == [row]
        assert sockgate_ls("-u", "--port", str(port), "--user", "root") == []
    finally:
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        child.wait(timeout=10)


@needs_root
@needs_tool("setpriv")
def test_no_permission_is_unknown_never_a_guess(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        _guard(s, tmp_path)
        [row] = sockgate_ls("-t", "--port", str(s.getsockname()[1]), as_nobody=True)
        assert row["guard"]["status"] == "unknown"
        assert row["guard"]["text"] == "unknown (no permission)"
        assert row["user"] == "root"
        assert row["processes"] == []


def test_plain_columns_when_piped(zoo: dict[str, socket.socket]) -> None:
    out = subprocess.run(SG + ["ls", "-t", "--pid", str(os.getpid())], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["Proto", "State", "Local", "Process", "User", "Exposure", "Guard"]
    for name, netid in (("tcp4", "tcp "), ("tcp6", "tcp6")):
        local = ins_local(zoo[name])
        assert any(line.startswith(netid) and f" {local} " in line for line in lines[1:]), (name, out.stdout)
    col = lines[0].index("Local")
    assert all(line[col - 2 : col] == "  " for line in lines)
    assert "\x1b[" not in out.stdout


def ins_local(s: socket.socket) -> str:
    host, port = s.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def test_unknown_user_name_is_refused_and_an_unused_uid_shows_nothing() -> None:
    name = f"no-such-user-{secrets.token_hex(3)}"
    out = subprocess.run(SG + ["ls", "--user", name], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"sockgate: --user {name!r}: no such user (give a user name or a numeric uid)\n"
    assert sockgate_ls("--user", "4000000000") == []  # a uid is taken as given, like ss's uid filters



def test_shared_socket_is_one_row_with_every_holder() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        fd = s.fileno()
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, pass_fds=(fd,)
        )
        try:
            rows = sockgate_ls("-t", "--port", str(s.getsockname()[1]))
            assert len(rows) == 1
            holders = {(p["pid"], tuple(p["fds"])) for p in rows[0]["processes"]}
            assert holders == {(os.getpid(), (fd,)), (child.pid, (fd,))}
            assert rows[0]["guard"]["status"] == "none"
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=10)


def test_proc_fallback_agrees_with_sock_diag(zoo: dict[str, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    """With every diag family 'missing', the /proc/net tables give the same sockets."""
    from sockgate.linux import sockdiag

    inodes = {os.fstat(s.fileno()).st_ino for s in zoo.values()}
    kinds = ["tcp", "udp", "raw", "unix"]
    # every state but TIME-WAIT: the zoo has none, and a busy host may have tens of thousands
    masks = dict.fromkeys(kinds, sockdiag.ALL_STATES & ~(1 << sockdiag.TCP_TIME_WAIT))

    def view() -> dict[int, tuple[Any, ...]]:
        return {
            s.inode: (s.proto, s.family, s.type, s.state, s.local_addr, s.local_port, s.unix_name)
            for s in sockdiag.inventory(kinds, masks)
            if s.inode in inodes
        }

    via_diag = view()

    def missing(*_: Any) -> Any:
        raise OSError(2, "no diag family")

    monkeypatch.setattr(sockdiag, "_inet_dump", missing)
    monkeypatch.setattr(sockdiag, "_unix_dump", missing)
    assert view() == via_diag
    assert len(via_diag) == len(zoo)


def test_ping_socket_listed_inside_a_namespace(lab: Any) -> None:
    lab.client.run("sysctl", "-qw", "net.ipv4.ping_group_range=0 0")
    with lab.client.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) as ping:
        ping.bind((lab.client_v4, 0))
        ident = ping.getsockname()[1]
        out = lab.client.run(*SG, "ls", "-w", "--json", cwd="/")
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        [row] = [r for r in rows if r["inode"] == os.fstat(ping.fileno()).st_ino]
        assert (row["netid"], row["address"], row["port"], row["state"]) == ("icmp", lab.client_v4, ident, "UNCONN")
        assert row["exposure"]["kind"] == "address"
        assert [p["pid"] for p in row["processes"]] == [os.getpid()]


def test_a_genuine_marker_in_front_of_allow_all_is_modified(tmp_path: Path) -> None:
    """The forgery, in the kernel: a real program's marker, then an allow-all body, attached
    with SO_ATTACH_FILTER and read back by `sockgate ls --json` and by `guard_of`."""
    from sockgate import bpf
    from sockgate.guard import guard_of
    from sockgate.linux import filter as sockfilter

    program = bpf.compile_service(_policy(tmp_path).service("web"))
    marker_len = program.insns[0].k + 1
    forged = bpf.encode(program.insns[:marker_len] + (bpf.stmt(bpf.BPF_RET | bpf.BPF_K, 0xFFFF),))
    pid = os.getpid()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # UDP: any process may filter it
        s.bind(("127.0.0.1", 0))
        sockfilter.attach(s, forged)
        assert sockfilter.get(s.fileno()) == forged  # the kernel keeps it as given
        info = guard_of(s)
        assert (info.state, info.service, info.digest) == ("modified", "web", program.digest)
        assert "modified sockgate filter" in info.describe()
        row = by_holder(sockgate_ls("-u", "--pid", str(pid)), pid)[(pid, s.fileno())]
        assert row["guard"]["status"] == "modified"
        assert row["guard"]["text"] == f"modified (marker claims web {program.digest}; {marker_len + 1} insns)"
        assert (pid, s.fileno()) in by_holder(sockgate_ls("-u", "--unguarded", "--pid", str(pid)), pid)
        sockfilter.attach(s, program.encode())  # the genuine program is recognised as such
        assert guard_of(s).state == "sockgate"
        assert by_holder(sockgate_ls("-u", "--pid", str(pid)), pid)[(pid, s.fileno())]["guard"]["status"] == "sockgate"


def test_identities_are_the_bound_sockets_the_inventory_lists(lab: Any) -> None:
    """``sockdiag.identities`` (the poll's cheap look) names exactly the sockets ``inventory``
    lists with a local port, in a namespace holding only this test's sockets."""
    from sockgate.linux import sockdiag

    states = {"tcp": 1 << sockdiag.TCP_LISTEN, "udp": 1 << sockdiag.TCP_CLOSE}
    made = []
    for family, kind, addr in ((socket.AF_INET, socket.SOCK_STREAM, lab.client_v4), (socket.AF_INET6, socket.SOCK_STREAM, "::"),
                               (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"), (socket.AF_INET6, socket.SOCK_DGRAM, "::1")):
        s = lab.client.socket(family, kind)
        s.bind((addr, 0))
        if kind == socket.SOCK_STREAM:
            s.listen(1)
        made.append(s)
    made.append(lab.client.socket(socket.AF_INET, socket.SOCK_STREAM))  # not listening: not listed
    try:
        got = lab.client.call(lambda: sockdiag.identities(["tcp", "udp"], states))
        listed = lab.client.call(lambda: {(s.proto, s.family, s.inode) for s in sockdiag.inventory(["tcp", "udp"], states)
                                          if s.local_port})
        assert got == listed
        assert {inode for _, _, inode in got} == {os.fstat(s.fileno()).st_ino for s in made[:4]}
        assert sorted((p, f) for p, f, _ in got) == [("tcp", "ipv4"), ("tcp", "ipv6"), ("udp", "ipv4"), ("udp", "ipv6")]
    finally:
        for s in made:
            s.close()
