"""The library API on real sockets: guard / guard_of / unguard / peer, reload, refusals."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import sockgate
from sockgate import guard as guard_mod
from sockgate.ebpf.program import compile_service
from sockgate.errors import AdapterError, UnsupportedInKernel, UnsupportedPlatform, UsageError
from sockgate.kernel.ebpfopts import OPTIONS
from sockgate.linux import filter as kfilter
from sockgate.policy.parser import parse_policy
from support.verdicts import local_sockets, tcp_reach, udp_reach

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only")

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
service web tcp/80 {
    allow { 127.0.0.1, 127.0.0.3 }
    deny 127.0.0.0/8
    default allow
}
service strict {
    allow 127.0.0.1
    default deny
}
service named {
    allow host .example.com
    default deny
}
"""
ACCEPT_ALL = kfilter.SOCK_FILTER.pack(0x06, 0, 0, 0xFFFFFFFF)  # ret #-1: a foreign filter


@pytest.fixture
def policy() -> sockgate.Policy:
    return parse_policy(POLICY, "guard.policy")


@pytest.fixture
def listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(512)
    yield s
    s.close()


def reach(listener: socket.socket, *sources: str) -> dict[str, bool]:
    dest = {socket.AF_INET: listener.getsockname()[:2]}
    return tcp_reach(dest, sources, local_sockets(), wait=0.8, listener=listener)


def test_guard_round_trip(policy: sockgate.Policy, listener: socket.socket) -> None:
    assert sockgate.guard_of(listener).state == "none"
    g = policy.guard(listener, "web")  # auto, as root: eBPF
    assert isinstance(g, guard_mod.Guarded)
    assert (g.service, g.digest, g.backend) == ("web", compile_service(policy.service("web"), options=OPTIONS).digest, "ebpf")
    info = sockgate.guard_of(listener.fileno())  # a bare fd works too
    assert (info.state, info.service, info.digest, info.instructions) == ("sockgate", "web", g.digest, g.instructions)
    assert reach(listener, "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.1.2.3") == {
        "127.0.0.1": True, "127.0.0.2": False, "127.0.0.3": True, "127.1.2.3": False,
    }
    assert sockgate.unguard(listener) is True
    assert sockgate.guard_of(listener).state == "none"
    assert sockgate.unguard(listener) is False
    assert reach(listener, "127.0.0.2") == {"127.0.0.2": True}


def test_udp_socket(policy: sockgate.Policy) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        guard_mod.guard(policy, u, "strict")
        dest = {socket.AF_INET: u.getsockname()}
        got = udp_reach(u, dest, ["127.0.0.1", "127.0.0.9"], local_sockets(socket.SOCK_DGRAM))
        assert got == {"127.0.0.1": True, "127.0.0.9": False}


def test_dual_stack_socket(policy: sockgate.Policy) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::ffff:127.0.0.1", 0))
        s.listen(64)
        policy.guard(s, "strict")
        dest = {socket.AF_INET: ("127.0.0.1", s.getsockname()[1])}
        got = tcp_reach(dest, ["127.0.0.1", "127.0.0.2"], local_sockets(), wait=0.8, listener=s)
        assert got == {"127.0.0.1": True, "127.0.0.2": False}


def test_reload_swaps_in_place(policy: sockgate.Policy, listener: socket.socket) -> None:
    policy.guard(listener, "web")
    assert reach(listener, "127.0.0.3") == {"127.0.0.3": True}
    # queued, not yet accepted connections survive the swap
    queued = [socket.create_connection(listener.getsockname(), timeout=2) for _ in range(3)]
    g = policy.guard(listener, "strict")
    assert sockgate.guard_of(listener).service == "strict" == g.service
    listener.setblocking(False)
    accepted = []
    for _ in range(3):
        conn, _ = listener.accept()
        accepted.append(conn)
    for c in queued + accepted:
        c.close()
    assert reach(listener, "127.0.0.3", "127.0.0.1") == {"127.0.0.3": False, "127.0.0.1": True}


def test_bad_policy_leaves_old_filter(policy: sockgate.Policy, listener: socket.socket) -> None:
    policy.guard(listener, "web", backend="cbpf")  # a classic filter, read back whole below
    before = kfilter.get(listener)
    with pytest.raises(UsageError, match="no service 'nope'.*web, strict, named"):
        policy.guard(listener, "nope")
    with pytest.raises(UnsupportedInKernel):
        policy.guard(listener, "named")
    assert kfilter.get(listener) == before


def test_foreign_filter_detected_and_replaced(policy: sockgate.Policy, listener: socket.socket) -> None:
    kfilter.attach(listener, ACCEPT_ALL)
    info = sockgate.guard_of(listener)
    assert (info.state, info.instructions, info.service) == ("foreign", 1, None)
    assert "foreign filter (1 instructions)" in info.describe()
    policy.guard(listener, "strict")  # the library owns its socket: replacing is allowed
    assert sockgate.guard_of(listener).state == "sockgate"


def test_locked_filter_refused(policy: sockgate.Policy, listener: socket.socket) -> None:
    policy.guard(listener, "web")
    kfilter.lock(listener)
    assert sockgate.guard_of(listener).locked
    with pytest.raises(AdapterError, match="locked"):
        policy.guard(listener, "strict")
    with pytest.raises(AdapterError, match="locked"):
        sockgate.unguard(listener)
    assert sockgate.guard_of(listener).service == "web"


def test_not_a_socket(policy: sockgate.Policy) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(AdapterError, match="not a socket"):
            policy.guard(r, "web")
    finally:
        os.close(r)
        os.close(w)


def test_unix_socket_is_refused_not_silenced(policy: sockgate.Policy) -> None:
    """A filter on a Unix socket sees no IP header and would drop every message."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        with pytest.raises(UsageError, match=r"is a Unix socket: a kernel address filter guards IPv4/IPv6 sockets only"):
            policy.guard(a, "web")
        assert sockgate.guard_of(a).state == "none"
        b.send(b"still delivered")
        a.settimeout(2)
        assert a.recv(64) == b"still delivered"


def test_closed_fd_is_refused(policy: sockgate.Policy) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(AdapterError, match="not an open file descriptor"):
        policy.guard(r, "web")


def test_unsupported_platform(policy: sockgate.Policy, listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_mod, "_UNSUPPORTED", "kernel enforcement needs Linux; sockgate still decides in user space")
    with pytest.raises(UnsupportedPlatform, match="user space"):
        policy.guard(listener, "web")
    with pytest.raises(UnsupportedPlatform):
        sockgate.guard_of(listener)
    a, b = socket.socketpair()
    with a, b, pytest.raises(UnsupportedPlatform, match="Unix peer credentials"):
        sockgate.peer(a)
    assert sockgate.guard_of is guard_mod.guard_of


def test_peer_unix_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        p = sockgate.peer(a)
    assert (p.uid, p.gid, p.pid) == (os.getuid(), os.getgid(), os.getpid())
    assert p.exe == os.path.realpath(sys.executable)
    assert set(os.getgroups()) <= set(p.groups) | {os.getgid()}
    assert p.address is None


def test_peer_ip(listener: socket.socket) -> None:
    with socket.socket() as c:
        c.bind(("127.0.0.5", 0))
        c.connect(listener.getsockname())
        conn, _ = listener.accept()
        with conn:
            p = sockgate.peer(conn)
            assert (str(p.address), p.port, str(p.server_address)) == ("127.0.0.5", c.getsockname()[1], "127.0.0.1")
    with socket.socket() as lone, pytest.raises(sockgate.PeerError, match="not connected"):
        sockgate.peer(lone)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_peer_unix_other_user() -> None:
    where = tempfile.mkdtemp(prefix="sgt-peer-")  # reachable by the other user, unlike tmp_path
    os.chmod(where, 0o755)
    path = os.path.join(where, "s")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, where, True)
        srv = stack.enter_context(socket.socket(socket.AF_UNIX))
        srv.bind(path)
        os.chmod(path, 0o777)
        srv.listen(1)
        code = f"import socket,time; s=socket.socket(socket.AF_UNIX); s.connect({path!r}); time.sleep(3)"
        proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code])
        try:
            srv.settimeout(10)
            conn, _ = srv.accept()
            with conn:
                p = sockgate.peer(conn)
        finally:
            proc.kill()
            proc.wait()
    assert (p.uid, p.gid, p.pid, p.groups) == (65534, 65534, proc.pid, frozenset())
    assert p.exe == os.path.realpath(sys.executable)
    assert sockgate.check(parse_policy("service d { allow uid 65534\n default deny }"), "d", p).allowed


def test_asyncio_example(tmp_path: Path) -> None:
    pol = tmp_path / "echo.policy"
    pol.write_text("service echo {\n    allow 127.0.0.1\n    default deny\n}\n")
    example = ROOT / "docs" / "examples" / "asyncio_server.py"
    proc = subprocess.Popen(
        [sys.executable, str(example), str(pol), "echo", "127.0.0.1", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert "sockgate service echo" in lines[0], lines
        port = int(lines[1].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=3) as c:
            c.sendall(b"hello\n")
            assert c.recv(64) == b"hello\n"
        got = tcp_reach({socket.AF_INET: ("127.0.0.1", port)}, ["127.0.0.2"], local_sockets(), wait=0.8)
        assert got == {"127.0.0.2": False}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
        proc.stdout.close()


FAKE_UVICORN = """
import socket, sys
args = sys.argv[1:]
assert args[:2] == ["--fd", "3"] and args[2] == "--app-dir" and args[-1] == "uvicorn_app:app", args
s = socket.socket(fileno=3)  # what `uvicorn --fd 3` serves; EBADF if fd 3 was not inherited
print("serving", s.getsockname()[1], flush=True)
while True:
    c, a = s.accept()
    c.sendall(("hello %s\\n" % a[0]).encode())
    c.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs CAP_NET_ADMIN to filter TCP sockets")
def test_uvicorn_example_hands_the_guarded_socket_over_on_fd_3(tmp_path: Path) -> None:
    """uvicorn is not a dependency: a stand-in named `uvicorn` on PATH checks the command line
    and serves fd 3 the way `uvicorn --fd 3` does."""
    pol = tmp_path / "web.policy"
    pol.write_text("service web {\n    allow 127.0.0.1\n    default deny\n}\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "uvicorn"
    fake.write_text(f"#!{sys.executable}\n{FAKE_UVICORN}")
    fake.chmod(0o755)
    example = ROOT / "docs" / "examples" / "uvicorn_app.py"
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, str(example), str(pol), "web", "127.0.0.1", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("serving "), (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.split()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=3) as c:
            assert c.recv(64) == b"hello 127.0.0.1\n"
        got = tcp_reach({socket.AF_INET: ("127.0.0.1", port)}, ["127.0.0.2"], local_sockets(), wait=0.8)
        assert got == {"127.0.0.2": False}
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def test_uvicorn_example_app_answers_http() -> None:
    import asyncio
    import importlib.util

    spec = importlib.util.spec_from_file_location("uvicorn_app", ROOT / "docs" / "examples" / "uvicorn_app.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, object]) -> None:
        sent.append(msg)

    asyncio.run(mod.app({"type": "http", "client": ("127.0.0.1", 5555)}, receive, send))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"hello 127.0.0.1\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_unprivileged_guard_udp_and_tcp_message() -> None:
    """UDP sockets take a filter from anybody; where the kernel reserves TCP filters for
    CAP_NET_ADMIN (Linux commit 5d39580f68e6) the refusal says so and what to do."""
    code = (
        "import socket, sockgate\n"
        "from sockgate.policy.parser import parse_policy\n"
        "p = parse_policy('service a {\\n allow 127.0.0.1\\n default deny\\n}\\n')\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "print(p.guard(u, 'a').service)\n"
        "t = socket.socket()\n"
        "try:\n"
        "    print(p.guard(t, 'a').service)\n"
        "except sockgate.AdapterError as e:\n"
        "    print(e)\n"
    )
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert r.returncode == 0, r.stderr
    udp, tcp = r.stdout.splitlines()
    assert udp == "a"
    assert tcp == "a" or ("operation not permitted" in tcp and "CAP_NET_ADMIN" in tcp and "sockgate run" in tcp), tcp
