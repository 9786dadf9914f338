"""`sockgate proxy` as a real process on loopback: relay semantics, kernel filter, bans,
reload, drain, UDP, Unix credentials, systemd activation and notify."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from sockgate.proxy.lane import LANE_BUILT
from support import netlab
from support.launch import ls_guard
from support.proxyproc import EchoServer, ProxyProc, connect, is_filtered, is_reset, lab_round_trip, roundtrip, wait_for

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the proxy's kernel filter is Linux-only"),
]


# the relay paths: the C lane (the default where built) and the Python one (its fallback)
RELAYS = ["c", "python"] if LANE_BUILT else ["python"]  # (test_relay_both: CI fails without the lane)


def start(procs: list[ProxyProc], tmp_path: Path, *args: str, **kw: object) -> ProxyProc:
    p = ProxyProc(list(args), tmp_path / f"proxy{len(procs)}.log", **kw)  # type: ignore[arg-type]
    procs.append(p)
    p.ready()
    return p


def policy(tmp_path: Path, body: str, name: str = "p.conf") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_one_off_relays_bulk_and_logs_bytes(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    p = start(procs, tmp_path, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}")
    data = os.urandom(3 << 20)
    with connect(p.tcp_port()) as s:
        assert roundtrip(s, data) == data
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""  # half-close reached the backend, which closed
    rec = p.wait_record(event="close")
    assert rec["bytes_up"] == rec["bytes_down"] == len(data)
    assert rec["end"] == "closed" and rec["decision"] == "allow" and rec["service"] == "proxy"
    assert rec["peer"].startswith("127.0.0.1:") and rec["duration"] > 0
    dec = p.find(event="decision")[0]
    assert dec["decision"] == "allow" and dec["rule"] == "default"
    assert p.stop() == 0


def test_both_tcp_legs_have_nodelay(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    """Small writes are not held back by Nagle on either leg: the client's socket inherits
    TCP_NODELAY from the listener, the backend's gets it when created."""
    from sockgate.linux.pidfd import borrowed

    p = start(procs, tmp_path, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}")
    with connect(p.tcp_port()) as s:
        assert roundtrip(s, b"x") == b"x"
        mine = {s.getsockname()[1], echo.port}  # the proxy's sockets whose peer is one of these
        legs = []
        for fd in map(int, os.listdir(f"/proc/{p.pid}/fd")):
            try:
                with borrowed(p.pid, fd) as dup:
                    if not stat.S_ISSOCK(os.fstat(dup).st_mode):
                        continue
                    t = socket.socket(fileno=os.dup(dup))
            except OSError:
                continue  # gone
            with t:
                if t.type == socket.SOCK_STREAM and t.family == socket.AF_INET:
                    try:
                        peer = t.getpeername()[1]
                    except OSError:
                        continue  # the listener
                    if peer in mine:
                        legs.append(t.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        assert sorted(legs) == [1, 1], legs


def test_server_speaks_first(tmp_path: Path, procs: list[ProxyProc]) -> None:
    """SMTP, SSH, FTP: the backend talks before the client sends anything; the relay's first
    read of the client finds nothing and the banner still comes through at once."""
    lsock = socket.create_server(("127.0.0.1", 0))
    try:
        p = start(procs, tmp_path, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{lsock.getsockname()[1]}")
        with connect(p.tcp_port()) as s:
            b, _ = lsock.accept()
            with b:
                b.sendall(b"220 ready\r\n")
                assert s.recv(64) == b"220 ready\r\n"
                s.sendall(b"QUIT\r\n")
                b.settimeout(3)
                assert b.recv(64) == b"QUIT\r\n"
    finally:
        lsock.close()


@pytest.mark.parametrize("relay", RELAYS)
def test_half_close_is_propagated_both_ways(tmp_path: Path, procs: list[ProxyProc], relay: str) -> None:
    backend = EchoServer(on_eof=b"bye")  # answers EOF with a last word, then closes
    try:
        p = start(procs, tmp_path, "--relay", relay, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{backend.port}")
        with connect(p.tcp_port()) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(16):
                got += chunk
            assert got == b"bye"
    finally:
        backend.close()


@pytest.mark.parametrize("relay", RELAYS)
def test_resets_are_propagated(tmp_path: Path, procs: list[ProxyProc], relay: str) -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    try:
        port = lsock.getsockname()[1]
        p = start(procs, tmp_path, "--relay", relay, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{port}")
        # backend resets -> client sees a reset
        with connect(p.tcp_port()) as s:
            b, _ = lsock.accept()
            s.sendall(b"go")
            b.settimeout(3)
            assert b.recv(2) == b"go"  # the relay runs
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            b.close()
            with pytest.raises(ConnectionResetError):
                s.recv(10)
        assert p.wait_record(event="close")["end"] == "reset by backend"
        # client resets -> backend sees a reset
        s = connect(p.tcp_port())
        b, _ = lsock.accept()
        b.settimeout(3)
        s.sendall(b"go")
        assert b.recv(2) == b"go"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.close()
        with pytest.raises(ConnectionResetError):
            b.recv(10)
        b.close()
        wait_for(lambda: len(p.find(event="close")) == 2)
        assert p.find(event="close")[1]["end"] == "reset by client"
    finally:
        lsock.close()


@pytest.mark.parametrize("relay", RELAYS)
def test_backend_down_closes_the_client_promptly(tmp_path: Path, procs: list[ProxyProc], relay: str) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    p = start(procs, tmp_path, "--relay", relay, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{port}")
    t0 = time.monotonic()
    with connect(p.tcp_port()) as s:
        s.sendall(b"x")
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
    assert time.monotonic() - t0 < 1.0
    rec = p.wait_record(event="close")
    assert "backend" in rec["end"] and "refused" in rec["end"].lower()


def _established(s: socket.socket) -> bool:
    """tcp_info's first byte is the state: 1 is ESTABLISHED (the handshake was answered)."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1


@pytest.mark.parametrize("relay", RELAYS)
def test_connect_and_idle_timeouts(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc], relay: str) -> None:
    # A backend whose accept queue is full never answers a SYN: the connect must time out.
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fillers = []
    try:
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(stuck.getsockname())
            fillers.append(f)
        wait_for(lambda: any(_established(f) for f in fillers))  # the accept queue is full
        p = start(procs, tmp_path, "--relay", relay, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{stuck.getsockname()[1]}", "--connect-timeout", "0.5")
        t0 = time.monotonic()
        with connect(p.tcp_port(), timeout=5) as s:
            assert s.recv(10) == b""
        assert 0.4 < time.monotonic() - t0 < 3.0
        assert "connect timeout" in p.wait_record(event="close")["end"]
    finally:
        for f in fillers:
            f.close()
        stuck.close()
    q = start(procs, tmp_path, "--relay", relay, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}", "--idle-timeout", "1")
    with connect(q.tcp_port(), timeout=5) as s:
        assert roundtrip(s, b"hi") == b"hi"
        t0 = time.monotonic()
        with pytest.raises(ConnectionResetError):
            s.recv(10)
        assert 0.9 < time.monotonic() - t0 < 3.5
    assert q.wait_record(event="close")["end"] == "idle timeout"


@pytest.mark.parametrize("backend", ["cbpf", "ebpf"])  # the proxy's kernel part on both backends
def test_denied_sources_are_dropped_in_the_kernel(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc], backend: str) -> None:
    pol = policy(
        tmp_path,
        f"""
        service web tcp/80 {{
            listen tcp://127.0.0.1:0
            forward tcp://127.0.0.1:{echo.port}
            deny 127.0.0.2
            allow 127.0.0.0/8
            default deny
        }}
        """,
    )
    p = start(procs, tmp_path, str(pol), "--backend", backend)
    port = p.tcp_port()
    assert ls_guard(port)["backend"] == backend
    assert is_filtered(port, "127.0.0.2")  # no SYN-ACK: the kernel dropped it
    with connect(port, "127.0.0.1") as s:
        assert roundtrip(s, b"ok") == b"ok"
    p.stop()
    assert all(not r.get("peer", "").startswith("127.0.0.2") for r in p.records())
    assert p.find(event="decision", decision="allow")


@pytest.mark.parametrize("backend", ["cbpf", "ebpf"])  # the proxy's kernel part on both backends
def test_rate_ban_is_pushed_into_the_kernel_and_lifted(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc], backend: str) -> None:
    pol = policy(
        tmp_path,
        f"""
        service web tcp/80 {{
            listen tcp://127.0.0.1:0
            forward tcp://127.0.0.1:{echo.port}
            allow 127.0.0.0/8 limit rate 3/2s per source ban 3s
            default deny
        }}
        """,
    )
    p = start(procs, tmp_path, str(pol), "--backend", backend)
    port = p.tcp_port()
    for _ in range(3):
        with connect(port, "127.0.0.3") as s:
            assert roundtrip(s, b"a") == b"a"
    assert is_reset(port, "127.0.0.3")  # the 4th is over the rate: refused and banned
    ban = p.wait_record(event="ban")
    assert ban["peer"] == "127.0.0.3" and "banned for 3s" in ban["reason"]
    t_ban = time.monotonic()
    assert is_filtered(port, "127.0.0.3")  # SYNs now die in the kernel
    with connect(port, "127.0.0.1") as s:  # others are still served
        assert roundtrip(s, b"b") == b"b"
    denied = p.find(event="decision", decision="deny")
    assert len(denied) == 1 and denied[0]["rule"] == "limit"
    p.wait_record(event="unban", timeout=6)
    assert time.monotonic() - t_ban > 2.0
    with connect(port, "127.0.0.3") as s:
        assert roundtrip(s, b"c") == b"c"


@pytest.mark.parametrize("backend", ["cbpf", "ebpf"])  # the proxy's kernel part on both backends
def test_sighup_swaps_policy_and_filter_keeping_live_connections(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc],
                                                                 backend: str) -> None:
    text = """
        service web tcp/80 {{
            listen tcp://127.0.0.1:0
            forward tcp://127.0.0.1:{port}
            {rule} 127.0.0.4
            allow 127.0.0.0/8
            default deny
        }}
        """
    pol = policy(tmp_path, text.format(port=echo.port, rule="allow"))
    p = start(procs, tmp_path, str(pol), "--backend", backend)
    port = p.tcp_port()
    live = connect(port, "127.0.0.4")
    try:
        assert roundtrip(live, b"1") == b"1"
        pol.write_text("service web tcp/80 { this does not parse")
        p.signal(signal.SIGHUP)
        assert "reload failed" in p.wait_record(event="error")["message"]
        pol.write_text(text.format(port=echo.port, rule="deny"))
        p.signal(signal.SIGHUP)
        p.wait_record(event="notice", message="policy reloaded")
        assert roundtrip(live, b"2") == b"2"  # the live connection goes on
        assert is_filtered(port, "127.0.0.4")  # new ones are dropped by the new filter
        with connect(port, "127.0.0.5") as s:
            assert roundtrip(s, b"3") == b"3"
        assert ls_guard(port)["backend"] == backend
    finally:
        live.close()


def test_sigterm_stops_accepting_drains_and_exits_0(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    p = start(procs, tmp_path, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}", "--drain-timeout", "5")
    port = p.tcp_port()
    live = connect(port)
    assert roundtrip(live, b"x") == b"x"
    p.signal(signal.SIGTERM)
    p.wait_record(event="notice", message="stopping: draining connections")
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    assert roundtrip(live, b"still") == b"still"
    live.close()
    assert p.proc.wait(5) == 0
    # and a connection that never ends is cut at the drain deadline
    q = start(procs, tmp_path, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}", "--drain-timeout", "0.5")
    with connect(q.tcp_port()) as s:
        assert roundtrip(s, b"y") == b"y"
        q.signal(signal.SIGTERM)
        assert q.proc.wait(5) == 0
    assert q.find(event="close")[0]["end"] == "shutdown deadline"


def test_udp_flows_with_idle_timeout(tmp_path: Path, procs: list[ProxyProc]) -> None:
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    backend.bind(("127.0.0.1", 0))
    backend.settimeout(3)
    try:
        p = start(procs, tmp_path, "--listen", "udp://127.0.0.1:0", "--forward", f"udp://127.0.0.1:{backend.getsockname()[1]}", "--udp-timeout", "0.6")
        port = p.tcp_port()
        clients = []
        for src in ("127.0.0.1", "127.0.0.6"):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((src, 0))
            c.settimeout(3)
            clients.append(c)
            c.sendto(src.encode(), ("127.0.0.1", port))
            data, flow = backend.recvfrom(100)
            assert data == src.encode()
            backend.sendto(b"re:" + data, flow)
            assert c.recvfrom(100) == (b"re:" + src.encode(), ("127.0.0.1", port))
        wait_for(lambda: len(p.find(event="close")) == 2, timeout=5)
        assert {r["end"] for r in p.find(event="close")} == {"idle timeout"}
        assert all(r["bytes_up"] == 9 or r["bytes_up"] == 10 for r in p.find(event="close"))
        for c in clients:
            c.close()
    finally:
        backend.close()


_AS_USER = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect(sys.argv[1].encode().replace(b'@',b'\\0',1))\n"
    "try:\n s.sendall(b'x'); d=s.recv(10)\nexcept OSError as e: d=type(e).__name__.encode()\n"
    "print(d.decode() or 'EOF')\n"
)


def _as_user(user: str, address: str) -> str:
    import pwd

    # the system interpreter: the test's venv may not be readable by other users
    gid = pwd.getpwnam(user).pw_gid
    out = subprocess.run(
        ["/usr/bin/python3", "-c", _AS_USER, address], user=user, group=gid, extra_groups=[], capture_output=True, text=True, timeout=10
    )
    return out.stdout.strip() or out.stderr


@pytest.fixture
def temp_user() -> Iterator[str]:
    name = f"sgtpx{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="needs root and /usr/bin/python3 to connect as other users")
def test_unix_service_guarded_by_uid_and_group(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc], temp_user: str) -> None:
    import pwd

    name = f"sgt-proxy-{os.getpid()}"
    pol = policy(
        tmp_path,
        f"""
        service app unix:@{name} {{
            listen unix:@{name}
            forward tcp://127.0.0.1:{echo.port}
            allow uid 0
            allow group {temp_user}
            default deny
        }}
        """,
    )
    p = start(procs, tmp_path, str(pol))
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect(b"\0" + name.encode())
    assert roundtrip(s, b"root") == b"root"
    s.close()
    assert _as_user(temp_user, "@" + name) == "x"  # in the allowed group
    assert _as_user("nobody", "@" + name) in ("EOF", "ConnectionResetError", "BrokenPipeError")
    rec = p.wait_record(event="decision", decision="deny")
    nobody = pwd.getpwnam("nobody").pw_uid
    assert f"uid={nobody}" in rec["peer"] and "default deny" in rec["reason"]
    allowed = p.find(event="decision", decision="allow")
    assert "uid=0" in allowed[0]["peer"] and allowed[0]["rule"].endswith(":5")
    assert f"uid={pwd.getpwnam(temp_user).pw_uid}" in allowed[1]["peer"] and allowed[1]["rule"].endswith(":6")


def test_systemd_activation_and_notify(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_name = f"sgt-notify-{os.getpid()}"
    notify.bind(b"\0" + notify_name.encode())
    notify.settimeout(10)
    try:
        fd = lsock.fileno()
        # fd 3 with LISTEN_PID = the exec'd process, as systemd passes them
        wrapper = f"import os,sys; os.dup2({fd}, 3); os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[1], sys.argv[1:])"
        prefix = [sys.executable, "-c", wrapper]
        p = start(
            procs,
            tmp_path,
            "--listen", "tcp://127.0.0.1:1?name=web",
            "--forward", f"tcp://127.0.0.1:{echo.port}",
            env={"NOTIFY_SOCKET": "@" + notify_name, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
            pass_fds=[fd],
            prefix=prefix,
        )
        assert notify.recv(200) == b"READY=1"
        with connect(lsock.getsockname()[1]) as s:
            assert roundtrip(s, b"act") == b"act"
        p.signal(signal.SIGHUP)
        assert notify.recv(200).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert notify.recv(200) == b"READY=1"
        p.signal(signal.SIGTERM)
        assert notify.recv(200) == b"STOPPING=1"
        assert p.proc.wait(5) == 0
    finally:
        notify.close()
        lsock.close()


def test_host_name_rules_use_confirmed_reverse_dns(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    # /etc/hosts names 127.0.0.1 "localhost" both ways; 127.0.0.5 has no name at all.
    import socket as s_

    try:
        verified = s_.getnameinfo(("127.0.0.1", 0), s_.NI_NAMEREQD)[0] == "localhost"
    except OSError:
        verified = False
    if not verified:
        pytest.skip("127.0.0.1 does not resolve to localhost here")
    pol = policy(
        tmp_path,
        f"""
        service web tcp/80 {{
            listen tcp://127.0.0.1:0
            forward tcp://127.0.0.1:{echo.port}
            allow host localhost
            default deny
        }}
        """,
    )
    p = start(procs, tmp_path, str(pol), "--name-timeout", "2")
    port = p.tcp_port()
    with connect(port, "127.0.0.1") as s:
        assert roundtrip(s, b"named") == b"named"
    with connect(port, "127.0.0.5", timeout=5) as s:  # the kernel lets it in: only a lookup can tell
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
    p.stop()
    allow = p.find(event="decision", decision="allow")[0]
    deny = p.find(event="decision", decision="deny")[0]
    assert allow["peer"].startswith("localhost[127.0.0.1:") and allow["rule"].endswith(":5")
    assert deny["peer"].startswith("127.0.0.5:") and "default deny" in deny["reason"]


def test_workers_share_the_port_and_limits_refuse_workers(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    p = start(procs, tmp_path, "--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}", "--workers", "2")
    port = p.tcp_port()
    for i in range(40):
        with connect(port) as s:
            assert roundtrip(s, b"w%d" % i) == b"w%d" % i
    p.signal(signal.SIGHUP)  # forwarded to the workers
    with connect(port) as s:
        assert roundtrip(s, b"again") == b"again"
    assert p.stop() == 0
    wait_for(lambda: len(p.find(event="notice", message="stopped")) == 2)
    pol = policy(tmp_path, f"service w tcp/1 {{\n listen tcp://127.0.0.1:0\n forward tcp://127.0.0.1:{echo.port}\n allow all limit concurrent 2\n}}\n", "l.conf")
    out = subprocess.run([sys.executable, "-m", "sockgate", "proxy", str(pol), "--workers", "2"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "drop --workers" in out.stderr


def test_workers_reload_adding_a_unix_listener(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    """A Unix path can be bound once: a listener added by a reload is bound by the first
    worker, the others say so (no error), and the file goes when the proxy stops."""
    body = f"service t tcp/1 {{\n listen tcp://127.0.0.1:0\n forward tcp://127.0.0.1:{echo.port}\n allow all\n}}\n"
    pol = policy(tmp_path, body, "w.conf")
    p = start(procs, tmp_path, str(pol), "--workers", "2")
    path = tmp_path / "added.sock"
    pol.write_text(body + f"service u tcp/2 {{\n listen unix:{path}\n forward tcp://127.0.0.1:{echo.port}\n allow all\n}}\n")
    p.signal(signal.SIGHUP)  # at once: the workers may still be starting
    wait_for(lambda: len(p.find(event="notice", message="policy reloaded")) == 2)
    p.signal(signal.SIGHUP)  # the same policy again: nothing new to say
    wait_for(lambda: len(p.find(event="notice", message="policy reloaded")) == 4)
    assert [r["message"] for r in p.find(event="notice") if "first worker" in r["message"]] == [
        "service u: its new Unix listeners are served by the first worker only"
    ]
    assert p.find(event="error") == []
    for i in range(10):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(3)
            s.connect(str(path))
            assert roundtrip(s, b"u%d" % i) == b"u%d" % i
    assert p.stop() == 0
    assert not path.exists()


def _fd_targets(pid: int) -> set[str]:
    out = set()
    for f in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.add(os.readlink(f))
        except FileNotFoundError:
            pass  # closed meanwhile
    return out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_reload_moving_a_unix_path_to_another_service(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc], workers: str) -> None:
    """A reload that gives a Unix path to another service hands the listening socket over:
    the path never disappears, every worker keeps serving it (with workers, binding it again
    raced the other workers still holding it), and the new URL's mode applies."""
    path = tmp_path / "moved.sock"

    def body(name: str, mode: str) -> str:
        return f'service {name} tcp/1 {{\n listen "unix:{path}?mode={mode}"\n forward tcp://127.0.0.1:{echo.port}\n allow all\n}}\n'

    def serves() -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(3)
            s.connect(str(path))
            return roundtrip(s, b"moved") == b"moved"

    for attempt in range(3):
        pol = policy(tmp_path, body("old", "0666"), f"m{attempt}.conf")
        p = start(procs, tmp_path, str(pol), "--workers", workers)
        assert serves()
        pol.write_text(body("new", "0600"))
        p.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10  # connect all through the reload: never refused
        while len(p.find(event="notice", message="policy reloaded")) < int(workers):
            assert serves() and time.monotonic() < deadline
        assert serves() and stat.S_IMODE(path.stat().st_mode) == 0o600
        wait_for(lambda: {r.get("service") for r in p.find(event="decision")} == {"old", "new"})
        if workers != "1":  # every worker still holds the listener, not the first alone
            inode = next(ln.split()[6] for ln in Path("/proc/net/unix").read_text().splitlines()[1:]
                         if ln.endswith(f" {path}") and ln.split()[5] == "01")
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            assert len(kids) == 2 and all(f"socket:[{inode}]" in _fd_targets(int(k)) for k in kids)
        assert p.find(event="error") == []
        assert p.stop() == 0
        assert not path.exists()


@pytest.mark.parametrize("why", ["port in use", "unknown owner"])
def test_a_moved_unix_path_whose_new_service_fails_leaves_no_file(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc], why: str) -> None:
    path = tmp_path / "moved.sock"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        pol = policy(tmp_path, f"service old tcp/1 {{\n listen unix:{path}\n forward tcp://127.0.0.1:{echo.port}\n allow all\n}}\n")
        p = start(procs, tmp_path, str(pol))
        if why == "port in use":  # the new service's first listener fails before the taken one is used
            listen = f"listen tcp://127.0.0.1:{busy.getsockname()[1]}\n listen unix:{path}"
        else:  # the hand-over itself fails
            listen = f'listen "unix:{path}?owner=no-such-user-here"'
        pol.write_text(f"service new tcp/1 {{\n {listen}\n forward tcp://127.0.0.1:{echo.port}\n allow all\n}}\n")
        p.signal(signal.SIGHUP)
        wait_for(lambda: p.find(event="notice", message="policy reloaded"))
        assert [r for r in p.find(event="error") if "new" in r["message"]]
        assert p.stop() == 0
        assert not path.exists()
    finally:
        busy.close()


def test_unix_file_listener_to_unix_backend(tmp_path: Path, procs: list[ProxyProc]) -> None:
    back = tmp_path / "back.sock"
    backend = EchoServer(socket.AF_UNIX, str(back))
    front = tmp_path / "front.sock"
    front.write_bytes(b"")  # a regular file in the way is never replaced...
    try:
        bad = subprocess.run(
            [sys.executable, "-m", "sockgate", "proxy", "--listen", f"unix:{front}", "--forward", f"unix:{back}"],
            capture_output=True, text=True, timeout=30,
        )
        assert bad.returncode == 1 and "not a socket" in bad.stderr
        front.unlink()
        p = start(procs, tmp_path, "--listen", f"unix:{front}?mode=0600", "--forward", f"unix:{back}")
        assert (front.stat().st_mode & 0o777) == 0o600
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(3)
        s.connect(str(front))
        assert roundtrip(s, b"unix to unix") == b"unix to unix"
        s.close()
        assert p.stop() == 0
        assert not front.exists()  # removed on exit
    finally:
        backend.close()


def test_dual_stack_listener_filters_both_families(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    pol = policy(
        tmp_path,
        f"""
        service web tcp/80 {{
            listen tcp://:0
            forward tcp://127.0.0.1:{echo.port}
            deny 127.0.0.2
            allow all
        }}
        """,
    )
    p = start(procs, tmp_path, str(pol))
    port = p.tcp_port()
    with connect(port, "::1", host="::1") as s:
        assert roundtrip(s, b"six") == b"six"
    with connect(port, "127.0.0.1") as s:  # arrives as ::ffff:127.0.0.1, logged as IPv4
        assert roundtrip(s, b"four") == b"four"
    assert is_filtered(port, "127.0.0.2")  # the IPv4 header on an AF_INET6 socket is filtered too
    p.stop()
    peers = [r["peer"] for r in p.find(event="decision")]
    assert peers[0].startswith("[::1]:") and peers[1].startswith("127.0.0.1:") and len(peers) == 2


def test_another_host_over_ipv6_in_a_namespace(tmp_path: Path, lab: "netlab.Lab", procs: list[ProxyProc]) -> None:
    """Clients on another host (a namespace behind veth) over IPv6: the denied one sees a
    filtered port, the allowed one is relayed, and the log names the real source."""
    lab.add_client_addresses(["fd5b:5347::3"])
    echo = lab.server.call(lambda: EchoServer())
    try:
        pol = policy(
            tmp_path,
            f"""
            service web tcp/80 {{
                listen tcp://:0
                forward tcp://127.0.0.1:{echo.port}
                deny fd5b:5347::2
                allow fd5b:5347::/64
                default deny
            }}
            """,
        )
        p = start(procs, tmp_path, str(pol), prefix=lab.server.argv())
        port = p.tcp_port()

        assert lab_round_trip(lab, "fd5b:5347::2", port) == "filtered"
        assert lab_round_trip(lab, "fd5b:5347::3", port) == b"v6"
        p.stop()
        peers = [r["peer"] for r in p.find(event="decision")]
        assert len(peers) == 1 and peers[0].startswith("[fd5b:5347::3]:")
    finally:
        echo.close()


def _unix_has_oob() -> bool:
    a, b = socket.socketpair()
    try:
        a.send(b"x", socket.MSG_OOB)
        return True
    except OSError:
        return False
    finally:
        a.close()
        b.close()


def _urgent_client(listen: str, p: ProxyProc, path: Path) -> socket.socket:
    if listen == "unix":
        if not _unix_has_oob():
            pytest.skip("this kernel has no AF_UNIX out-of-band data (CONFIG_AF_UNIX_OOB)")
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(3)
        c.connect(str(path))
        return c
    return connect(p.tcp_port())


def _urgent_proxy(listen: str, procs: list[ProxyProc], tmp_path: Path, backend: int) -> ProxyProc:
    where = f"unix:{tmp_path / 'oob.sock'}" if listen == "unix" else "tcp://127.0.0.1:0"
    mode = ("--no-splice",) if listen == "tcp-copy" else ()
    return start(procs, tmp_path, "--listen", where, "--forward", f"tcp://127.0.0.1:{backend}", *mode)


def _read_to_eof(b: socket.socket) -> bytes:
    got = b""
    while chunk := b.recv(65536):
        got += chunk
    return got


@pytest.mark.parametrize("listen", ["tcp", "tcp-copy", "unix"])
def test_urgent_data_is_relayed_in_line_without_stalling(tmp_path: Path, procs: list[ProxyProc], listen: str) -> None:
    """TCP urgent data (telnet's interrupt, FTP's ABOR) stops splice(2) at the urgent mark and
    a short recv(2) before it, and a Unix stream read skips an out-of-band byte: the relay
    must carry the byte on, in line and in order, and keep going."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(5)
    try:
        p = _urgent_proxy(listen, procs, tmp_path, lsock.getsockname()[1])
        with _urgent_client(listen, p, tmp_path / "oob.sock") as s, lsock.accept()[0] as b:
            b.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            b.settimeout(3)
            got = b""
            for i in range(20):  # many times: the mark is passed each time, and races vary
                s.sendall(b"before%d" % i)
                s.send(b"!", socket.MSG_OOB)
                s.sendall(b"after%d" % i)
                want = b"".join(b"before%d!after%d" % (k, k) for k in range(i + 1))
                while len(got) < len(want):
                    chunk = b.recv(4096)
                    assert chunk, "the relay closed the connection"
                    got += chunk
                assert got == want
            b.sendall(b"reply")  # the other direction still works
            assert s.recv(16) == b"reply"
    finally:
        lsock.close()


# 64 KiB is the copy buffer: the mark right after a full read. A Unix client cannot queue
# that much on a connection not yet accepted, so Unix runs the first two.
@pytest.mark.parametrize(
    "listen,before",
    [(m, n) for m in ("tcp", "tcp-copy", "unix") for n in (0, 1000, 65536) if not (m == "unix" and n == 65536)],
)
def test_urgent_byte_and_fin_queued_before_the_relay_starts(tmp_path: Path, procs: list[ProxyProc], listen: str, before: int) -> None:
    """Everything the client sends — bytes, an urgent byte, more bytes, its FIN — is queued
    while the proxy is stopped, so the relay's very first reads meet the mark with no
    EPOLLPRI seen yet (splice returns 0 there when a FIN follows; a recv that starts there
    skips the byte unless in line): nothing may be lost, nor the mark taken for the end."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(5)
    try:
        p = _urgent_proxy(listen, procs, tmp_path, lsock.getsockname()[1])
        os.kill(p.pid, signal.SIGSTOP)
        try:
            s = _urgent_client(listen, p, tmp_path / "oob.sock")  # the kernel completes it
            s.sendall(b"a" * before)
            s.send(b"!", socket.MSG_OOB)
            s.sendall(b"after")
            s.shutdown(socket.SHUT_WR)
        finally:
            os.kill(p.pid, signal.SIGCONT)
        with s, lsock.accept()[0] as b:
            b.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            b.settimeout(3)
            assert _read_to_eof(b) == b"a" * before + b"!after"
    finally:
        lsock.close()
