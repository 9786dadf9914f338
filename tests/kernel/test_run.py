"""`sockgate run` for real: socket activation contract, kernel filter on the passed sockets,
privileged ports and privilege dropping, Unix sockets, inetd mode, and clear refusals."""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from support.pinned import private_bpffs
from support.launch import (
    SRC,
    Launch,
    Launched,
    echo_command,
    echo_service,
    port_of,
    open_from,
    still_echoes,
    tcp_echo,
    tcp_filtered,
    udp_echo,
    wait_for_file,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (privileged port, other user)")
# Newer kernels keep TCP filters for CAP_NET_ADMIN (see docs/run.md); CI runs as root.
needs_tcp_filter = pytest.mark.skipif(os.geteuid() != 0, reason="needs CAP_NET_ADMIN to filter TCP sockets")

POLICY = """\
service echo {
    allow 127.0.0.1
    allow 127.0.0.4
    allow ::1
    default deny
}
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.conf"
    p.write_text(POLICY)
    return p



@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path lives under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="sgt-run-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_tcp_filter
def test_socket_activation_contract_and_filter(tmp_path: Path, policy: Path, launch: Launch) -> None:
    command, report = echo_command(tmp_path)
    sock_path = tmp_path / "ctl.sock"
    lr = launch(
        "--policy", str(policy), "--service", "echo",
        "--listen", "tcp://127.0.0.1:0?name=web",
        "--listen", f"unix:{sock_path}?name=ctl&mode=0600",
        "--listen", "udp://127.0.0.1:0?name=dns", *command,
    )
    addrs, pid = lr.started(3)
    wait_for_file(report)
    got = json.loads(report.read_text())
    # the LISTEN_* contract: fds from 3 in order, names, and LISTEN_PID = the exec'd process
    assert got["pid"] == pid
    assert got["env"] == {"LISTEN_FDS": "3", "LISTEN_PID": str(pid), "LISTEN_FDNAMES": "web:ctl:dns", "SOCKGATE_SERVICE": "echo"}
    fds = got["fds"]
    assert [f["fd"] for f in fds] == [3, 4, 5]
    assert [(f["family"], f["type"]) for f in fds] == [
        (socket.AF_INET, socket.SOCK_STREAM),
        (socket.AF_UNIX, socket.SOCK_STREAM),
        (socket.AF_INET, socket.SOCK_DGRAM),
    ]
    tcp_port, udp_port = port_of(addrs[0]), port_of(addrs[2])
    assert fds[0]["name"] == ["127.0.0.1", tcp_port] and fds[2]["name"] == ["127.0.0.1", udp_port]
    assert fds[1]["name"] == str(sock_path) and stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    # the kernel filter is on the passed sockets
    assert tcp_echo("127.0.0.1", tcp_port) == b"ping\n"
    assert tcp_echo("127.0.0.4", tcp_port) == b"ping\n"
    assert tcp_filtered("127.0.0.2", tcp_port)
    assert udp_echo("127.0.0.1", udp_port) == b"dgram"
    assert udp_echo("127.0.0.3", udp_port, timeout=0.5) is None
    # the Unix socket is served (no address filter: its file mode protects it)
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(5)
        c.connect(str(sock_path))
        c.sendall(b"unix")
        assert c.recv(16) == b"unix"
    # SIGTERM goes to the command; its death by SIGTERM is our exit status; files are removed
    lr.signal(signal.SIGTERM)
    assert lr.finish() == 128 + signal.SIGTERM
    assert not sock_path.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_exit_status_of_the_command_is_ours(policy: Path, launch: Launch) -> None:
    lr = launch(
        "--policy", str(policy), "--service", "echo", "--listen", "udp://127.0.0.1:0",
        "--", sys.executable, "-c",
        "import os,sys; sys.exit(7 if os.environ['LISTEN_PID'] == str(os.getpid()) else 1)",
    )
    assert lr.finish() == 7


def _free_privileged_port() -> int:
    for port in range(700, 1000):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 700-999")


def _python_for_nobody() -> str:
    """An interpreter nobody may run (the test venv's may live under /root)."""
    for cand in (sys.executable, "/usr/bin/python3"):
        try:
            ok = subprocess.run([cand, "-c", "pass"], user=65534, group=65534, extra_groups=[], timeout=30).returncode == 0
        except OSError:
            ok = False
        if ok:
            return cand
    pytest.skip("no Python interpreter that nobody may run")


@needs_root
def test_privileged_port_then_drop_to_nobody(public_dir: Path, policy: Path, launch: Launch) -> None:
    script, report = echo_service(public_dir)
    os.chmod(script, 0o644)
    out_dir = public_dir / "out"
    out_dir.mkdir()
    os.chown(out_dir, 65534, 65534)
    report = out_dir / "report.json"
    port = _free_privileged_port()
    nobody = pwd.getpwnam("nobody")
    lr = launch(
        "--policy", str(policy), "--service", "echo", "--user", "nobody",
        "--listen", f"tcp://127.0.0.1:{port}",
        "--", _python_for_nobody(), str(script), str(report),
    )
    addrs, pid = lr.started(1)
    assert addrs == [f"tcp://127.0.0.1:{port}"]
    wait_for_file(report, lines=lr.lines)
    got = json.loads(report.read_text())
    assert (got["uid"], got["gid"]) == (nobody.pw_uid, nobody.pw_gid)
    assert got["groups"] == sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))
    assert got["pid"] == pid and got["env"]["LISTEN_FDS"] == "1"
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert tcp_echo("127.0.0.1", port) == b"ping\n"
    assert tcp_filtered("127.0.0.2", port)


INETD_CMD = (
    "import json,os,sys;"
    "keys=('PROTO','TCPREMOTEIP','TCPREMOTEPORT','TCPLOCALIP','TCPLOCALPORT','UNIXREMOTEPID',"
    "'UNIXREMOTEEUID','UNIXREMOTEEGID','SOCKGATE_SERVICE','LISTEN_FDS');"
    "line=sys.stdin.readline();"
    "sys.stdout.write(json.dumps({'env':{k:os.environ.get(k) for k in keys},'line':line,'uid':os.getuid()})+'\\n');"
    "sys.stdout.flush()"
)


def _ask(sock: socket.socket) -> dict[str, object]:
    sock.settimeout(10)
    sock.sendall(b"hello\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    result: dict[str, object] = json.loads(buf)
    return result


@needs_tcp_filter
def test_inetd_tcp(tmp_path: Path, policy: Path, launch: Launch) -> None:
    lr = launch(
        "--policy", str(policy), "--service", "echo", "--inetd",
        "--listen", "tcp://:0",
        "--", sys.executable, "-c", INETD_CMD,
    )
    addrs, _ = lr.started(1, supervised=False)
    lr.wait_line(r"per connection \(inetd mode, at most 40 at once\)")
    port = port_of(addrs[0])
    with socket.socket() as c:
        c.settimeout(5)
        c.bind(("127.0.0.1", 0))
        c.connect(("127.0.0.1", port))
        got = _ask(c)
        env = got["env"]
        assert env == {
            "PROTO": "TCP",
            "TCPREMOTEIP": "127.0.0.1",  # shown as IPv4 though the socket is dual-stack
            "TCPREMOTEPORT": str(c.getsockname()[1]),
            "TCPLOCALIP": "127.0.0.1",
            "TCPLOCALPORT": str(port),
            "UNIXREMOTEPID": None,
            "UNIXREMOTEEUID": None,
            "UNIXREMOTEEGID": None,
            "SOCKGATE_SERVICE": "echo",
            "LISTEN_FDS": None,
        }
        assert got["line"] == "hello\n"
    with socket.socket(socket.AF_INET6) as c6:
        c6.settimeout(5)
        c6.connect(("::1", port))
        assert _ask(c6)["env"]["TCPREMOTEIP"] == "::1"  # type: ignore[index]
    assert tcp_filtered("127.0.0.2", port)
    lr.signal(signal.SIGTERM)
    assert lr.finish() == 0


@needs_root
def test_inetd_unix_peers_decided_by_credentials(public_dir: Path, launch: Launch) -> None:
    policy = public_dir / "unix.conf"
    policy.write_text("service ctl {\n    allow uid 0\n    default deny\n}\n")
    sock_path = public_dir / "ctl.sock"
    lr = launch(
        "--policy", str(policy), "--service", "ctl", "--inetd",
        "--listen", f"unix:{sock_path}?mode=0666",
        "--", sys.executable, "-c", INETD_CMD,
    )
    lr.started(1, supervised=False)
    with socket.socket(socket.AF_UNIX) as u:
        u.settimeout(5)
        u.connect(str(sock_path))
        env = _ask(u)["env"]
        assert env["PROTO"] == "UNIX"  # type: ignore[index]
        assert env["UNIXREMOTEPID"] == str(os.getpid())  # type: ignore[index]
        assert env["UNIXREMOTEEUID"] == "0"  # type: ignore[index]
        assert env["UNIXREMOTEEGID"] == str(os.getegid())  # type: ignore[index]
        assert env["SOCKGATE_SERVICE"] == "ctl"  # type: ignore[index]
    # a client running as nobody is refused: closed without running the command
    code = (
        "import os,socket,sys\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
        "try:\n"
        "    s.sendall(b'hello\\n'); print(repr(s.recv(100)))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print('closed')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(sock_path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("b''", "closed")  # closed unread, maybe before we wrote: EPIPE/ECONNRESET
    lr.wait_line(r"denied Unix peer uid=65534 .*: no rule matched; default deny")
    lr.signal(signal.SIGTERM)
    assert lr.finish() == 0
    assert not sock_path.exists()


def test_inetd_writes_a_denied_peers_executable_escaped(public_dir: Path, launch: Launch) -> None:
    """A peer's executable path is any local user's choice: ESC, BEL and a line break in it
    reach the log escaped, on the one line of the refusal."""
    policy = public_dir / "unix.conf"
    policy.write_text('service ctl {\n    allow exe "/nowhere/at/all"\n    default deny\n}\n')
    sock_path = public_dir / "ctl.sock"
    odd = public_dir / "a\x1b]0;x\x07\nfake"
    odd.mkdir()
    client = odd / "py"
    real = os.path.realpath(sys.executable)
    try:
        os.link(real, client)  # /proc/PID/exe names the link it was run through
    except OSError:
        shutil.copy2(real, client)
    lr = launch(
        "--policy", str(policy), "--service", "ctl", "--inetd",
        "--listen", f"unix:{sock_path}",
        "--", sys.executable, "-c", INETD_CMD,
    )
    lr.started(1, supervised=False)
    code = "import socket,sys\ns = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1]); s.recv(1)\n"
    subprocess.run([str(client), "-c", code, str(sock_path)], capture_output=True, timeout=30)
    line = lr.wait_line(r"denied Unix peer").string
    assert "\x1b" not in line and "\x07" not in line
    assert "exe=" + str(public_dir) + "/a\\x1b]0;x\\x07\\x0afake/py: no rule matched" in line, line
    lr.signal(signal.SIGTERM)
    assert lr.finish() == 0


@needs_root
def test_inetd_max_conns_bounds_concurrency(tmp_path: Path, launch: Launch) -> None:
    policy = tmp_path / "me.conf"
    policy.write_text(f"service echo {{\n    allow uid {os.getuid()}\n    default deny\n}}\n")
    sock_path = tmp_path / "one.sock"
    hold = "import sys;sys.stdout.write('busy\\n');sys.stdout.flush();sys.stdin.read()"
    lr = launch(
        "--policy", str(policy), "--service", "echo", "--inetd", "--max-conns", "1",
        "--listen", f"unix:{sock_path}", "--", sys.executable, "-c", hold,
    )
    lr.started(1, supervised=False)
    lr.wait_line("at most 1 at once")
    first = socket.socket(socket.AF_UNIX)
    second = socket.socket(socket.AF_UNIX)
    try:
        first.settimeout(10)
        first.connect(str(sock_path))
        assert first.recv(5) == b"busy\n"
        second.settimeout(1.0)
        second.connect(str(sock_path))  # queued by the kernel, not yet served
        with pytest.raises(TimeoutError):
            second.recv(5)
        first.close()  # the first command ends; the second is served
        second.settimeout(10)
        assert second.recv(5) == b"busy\n"
    finally:
        first.close()
        second.close()


def test_inetd_command_gets_signals_back_and_sigterm_on_stop(tmp_path: Path, launch: Launch) -> None:
    """The acceptor blocks its signals (they come through its signalfd); a command must not
    inherit that mask, and a stop passes SIGTERM to it."""
    policy = tmp_path / "me.conf"
    policy.write_text(f"service echo {{\n    allow uid {os.getuid()}\n    default deny\n}}\n")
    sock_path = tmp_path / "mask.sock"
    hold = (
        "import sys;blk=[l for l in open('/proc/self/status') if l.startswith('SigBlk:')][0].split()[1];"
        "sys.stdout.write(blk+'\\n');sys.stdout.flush();sys.stdin.read()"
    )
    lr = launch(
        "--policy", str(policy), "--service", "echo", "--inetd",
        "--listen", f"unix:{sock_path}", "--", sys.executable, "-c", hold,
    )
    lr.started(1, supervised=False)
    lr.wait_line("inetd mode")
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(10)
        c.connect(str(sock_path))
        assert int(c.makefile().readline(), 16) == 0
        lr.signal(signal.SIGTERM)
        assert lr.finish() == 0  # the command died of SIGTERM at once, not after the grace
        assert c.recv(10) == b""


def test_bad_policy_binds_nothing(tmp_path: Path, launch: Launch) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("service echo {\n    allow 300.1.1.1\n}\n")
    sock_path = tmp_path / "never.sock"
    lr = launch("--policy", str(bad), "--service", "echo", "--listen", f"unix:{sock_path}", "--", "true")
    assert lr.finish() == 2
    assert any(f"{bad}:2:" in line for line in lr.lines), lr.lines
    assert not sock_path.exists()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--service", "nope", "--listen", "udp://127.0.0.1:0", "--", "true"], 2, "the policy has no service 'nope' (services: echo)"),
        (["--service", "echo", "--listen", "tcp://127.0.0.1", "--", "true"], 2, "missing port"),
        (["--service", "echo", "--listen", "udp://127.0.0.1:0", "--inetd", "--", "true"], 2, "--inetd accepts connections: stream sockets only"),
        (["--service", "echo", "--listen", "udp://127.0.0.1:0"], 2, "give the command to run after '--'"),
        (["--service", "echo", "--listen", "udp://127.0.0.1:0", "--user", "no-such-user-sgt", "--", "true"], 2, "no such user: 'no-such-user-sgt'"),
        (["--service", "echo", "--listen", "udp://127.0.0.1:0", "--", "/no/such/command-sgt"], 1, "cannot run '/no/such/command-sgt': No such file or directory"),
    ],
)
def test_refusals(policy: Path, launch: Launch, argv: list[str], code: int, message: str) -> None:
    lr = launch("--policy", str(policy), *argv)
    assert lr.finish() == code
    assert any(message in line for line in lr.lines), lr.lines


LIMITED = "service echo {\n    allow uid 0\n    allow 127.0.0.1\n    limit concurrent 5\n    default deny\n}\n"


@pytest.mark.parametrize(
    ("listen", "extra", "message"),
    [
        ("udp://127.0.0.1:0", [], "concurrent connection limits (the service) count open connections"),  # eBPF's words (auto)
        ("unix:{dir}/lim.sock", ["--inetd"], "service echo: service-wide limits"),
        ("unix:{dir}/lim.sock", [], "service echo: service-wide limits"),
    ],
    ids=["udp", "unix-inetd", "unix-activation"],
)
def test_limits_are_refused_not_silently_ignored(tmp_path: Path, launch: Launch, listen: str, extra: list[str], message: str) -> None:
    """Only the proxy counts connections: `run` refuses a service with limits before binding."""
    policy = tmp_path / "limited.conf"
    policy.write_text(LIMITED.replace("allow uid 0\n", "") if listen.startswith("udp") else LIMITED)
    url = listen.format(dir=tmp_path)
    lr = launch("--policy", str(policy), "--service", "echo", "--listen", url, *extra, "--", "true")
    assert lr.finish() == 2  # a policy this mode cannot enforce: a policy error
    assert any(message in line for line in lr.lines), lr.lines
    assert any("enforce this service with `sockgate proxy` instead" in line for line in lr.lines), lr.lines
    assert not (tmp_path / "lim.sock").exists()


def test_unix_socket_without_inetd_says_the_policy_is_not_applied(tmp_path: Path, policy: Path, launch: Launch) -> None:
    lr = launch("--policy", str(policy), "--service", "echo", "--listen", f"unix:{tmp_path}/a.sock", "--", "true")
    assert lr.finish() == 0
    line = next(line for line in lr.lines if "a.sock" in line)
    assert "Unix socket, no address filter and the policy is not applied to it" in line, lr.lines
    assert "--inetd or `sockgate proxy` decide Unix peers by their credentials" in line


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to drop CAP_NET_ADMIN")
def test_tcp_without_cap_net_admin_is_refused_once_with_the_url_and_what_to_do(policy: Path) -> None:
    """Linux commit 5d39580f68e6: a TCP filter needs CAP_NET_ADMIN. The refusal names the
    listener by its URL (not an fd of ours), says it once, and gives advice for `run`."""
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run(
        ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", sys.executable, "-m", "sockgate", "run",
         "--policy", str(policy), "--service", "echo", "--backend", "cbpf", "--listen", "tcp://127.0.0.1:0", "--",
         "true"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    if r.returncode == 0:
        pytest.skip("this kernel lets anybody attach a filter to a TCP socket")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sockgate: attach filter for echo to tcp://127.0.0.1:"), lines
    assert lines[0].count("CAP_NET_ADMIN") == 1, lines
    assert "start `sockgate run` as root or with that capability, and give --user/--group" in lines[0]


def test_hosts_options_not_carried_out_are_noted(tmp_path: Path, launch: Launch) -> None:
    allow = tmp_path / "hosts.allow"
    allow.write_text("in.echod: 127.0.0.1 : spawn (/usr/bin/logger echo %a)\n")
    lr = launch("--hosts-allow", str(allow), "--service", "in.echod", "--listen", "udp://127.0.0.1:0", "--", "true")
    assert lr.finish() == 0
    want = f"sockgate run: note: {allow}:1: option spawn not carried out by a kernel filter; only the rule's verdict (allow) is enforced"
    assert want in lr.lines, lr.lines


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to run as another user")
@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--listen", "udp://127.0.0.1:0", "--user", "daemon"], 2,
         "--user/--group: cannot become daemon (uid 1, gid 1, groups 1) as uid 65534: changing user or group needs root"
         " (or CAP_SETUID and CAP_SETGID)"),
        (["--listen", "udp://127.0.0.1:1"], 1,
         "bind udp://127.0.0.1:1: permission denied (port 1 is privileged: bind it as root or with CAP_NET_BIND_SERVICE"),
    ],
    ids=["user", "privileged-port"],
)
def test_unprivileged_refusals_say_what_is_missing(public_dir: Path, extra: list[str], code: int, message: str) -> None:
    policy = public_dir / "p.conf"
    policy.write_text(POLICY)
    policy.chmod(0o644)
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "sockgate", "run",
         "--policy", str(policy), "--service", "echo", *extra, "--", "true"],
        capture_output=True, text=True, timeout=60, env=env, cwd="/",
    )
    assert r.returncode == code, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sockgate: {message}"), lines


def test_help_shows_usage() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-m", "sockgate", "run", "--help"], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0 and "--listen URL" in out.stdout and "--inetd" in out.stdout


def test_forward_signals(tmp_path: Path, policy: Path, launch: Launch) -> None:
    marker = tmp_path / "usr1"
    code = (
        "import signal,sys,time,pathlib;"
        f"signal.signal(signal.SIGUSR1, lambda *a: (pathlib.Path({str(marker)!r}).write_text('got'), sys.exit(3)));"
        "print('command ready', file=sys.stderr, flush=True);"
        "[time.sleep(0.05) for _ in range(1000)]"
    )
    lr = launch("--policy", str(policy), "--service", "echo", "--listen", "udp://127.0.0.1:0", "--", sys.executable, "-c", code)
    lr.started(1)
    lr.seen_line("^command ready$")  # its handler is installed
    lr.signal(signal.SIGUSR1)
    assert lr.finish() == 3
    assert marker.read_text() == "got"


DETACH_AS_SERVICE = (
    "import ctypes,socket,sys,pathlib;"
    "libc=ctypes.CDLL(None,use_errno=True);"
    "s=socket.socket(fileno=3);"
    "one=ctypes.c_int(0);"
    "rc=libc.setsockopt(3,socket.SOL_SOCKET,27,ctypes.byref(one),4);"  # SO_DETACH_FILTER
    "pathlib.Path(sys.argv[1]).write_text(str(0 if rc==0 else ctypes.get_errno()));"
    "print('command ready',file=sys.stderr,flush=True);"
    "s.detach();"
    "import time;[time.sleep(0.05) for _ in range(600)]"
)


@needs_tcp_filter
@pytest.mark.parametrize("lock", [False, True])
def test_lock_keeps_the_command_from_detaching_its_guard(public_dir: Path, policy: Path, launch: Launch,
                                                         lock: bool) -> None:
    """The command (as nobody, no capability) tries SO_DETACH_FILTER on its listener: without
    --lock it succeeds and the denied source gets in; with --lock it fails (EPERM), the guard
    holds, and a reload is refused with the reason."""
    out = public_dir / "detached"
    os.chmod(public_dir, 0o777)
    lr = launch("--policy", str(policy), "--service", "echo", "--user", "nobody", *(["--lock"] if lock else []),
                "--listen", "tcp://127.0.0.1:0", "--", _python_for_nobody(), "-c", DETACH_AS_SERVICE, str(out))
    addrs, _ = lr.started(1)
    assert any("guarded:" in line and line.endswith(", locked") == lock for line in lr.lines), lr.lines
    lr.seen_line("^command ready$")
    port = port_of(addrs[0])
    if not lock:
        assert out.read_text() == "0" and not tcp_filtered("127.0.0.2", port)
        return
    assert out.read_text() == str(errno.EPERM) and tcp_filtered("127.0.0.2", port)
    lr.signal(signal.SIGHUP)
    lr.wait_line(r"reload refused: the sockets' filters are locked \(--lock\)")
    assert tcp_filtered("127.0.0.2", port)


@needs_tcp_filter
def test_a_guard_the_command_removed_is_reported_and_put_back(public_dir: Path, policy: Path, launch: Launch) -> None:
    out = public_dir / "detached"
    os.chmod(public_dir, 0o777)
    lr = launch("--policy", str(policy), "--service", "echo", "--user", "nobody", "--guard-check", "0.2",
                "--listen", "tcp://127.0.0.1:0", "--", _python_for_nobody(), "-c", DETACH_AS_SERVICE, str(out))
    addrs, _ = lr.started(1)
    lr.seen_line("^command ready$")
    assert out.read_text() == "0"  # the command detached its guard
    lr.wait_line(rf"the guard of {re.escape(addrs[0])} was removed or replaced \(found .*\); put back")
    assert tcp_filtered("127.0.0.2", port_of(addrs[0]))
    assert tcp_echo_ok("127.0.0.1", port_of(addrs[0]))


def tcp_echo_ok(source: str, port: int) -> bool:
    with socket.socket() as c:
        c.bind((source, 0))
        c.settimeout(2)
        try:
            c.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


@needs_tcp_filter
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("backend", ["cbpf", "ebpf"])
def test_a_reload_that_denies_a_source_ends_its_established_connections(tmp_path: Path, policy: Path, backend: str,
                                                                        keep: bool) -> None:
    """Accepted connections keep the filter they were accepted under, so a reload denying
    127.0.0.4 ends .4's open connection (only that one) — unless --keep-established."""
    command, report = echo_command(tmp_path)
    with private_bpffs() as bpffs:
        lr = Launched(["--policy", str(policy), "--service", "echo", "--backend", backend,
                       *(["--keep-established"] if keep else []), "--listen", "tcp://127.0.0.1:0", *command],
                      env=dict(os.environ, SOCKGATE_BPFFS=bpffs))
        try:
            addrs, _ = lr.started(1)
            wait_for_file(report, lines=lr.lines)
            port = port_of(addrs[0])
            one, four = open_from("127.0.0.1", port), open_from("127.0.0.4", port)
            with one, four:
                assert still_echoes(one) and still_echoes(four)
                policy.write_text(POLICY.replace("    allow 127.0.0.4\n", ""))
                lr.signal(signal.SIGHUP)
                lr.wait_line(r"reloaded: service echo")
                if not keep:
                    lr.wait_line(r"ended 1 established connection\(s\) the new policy denies")
                assert still_echoes(four) == keep
                assert still_echoes(one)
                assert tcp_filtered("127.0.0.4", port)
        finally:
            lr.stop()


def test_resolve_credentials() -> None:
    from sockgate.errors import UsageError
    from sockgate.linux import privileges

    nobody = pwd.getpwnam("nobody")
    c = privileges.credentials("nobody", None)
    assert c is not None
    assert (c.uid, c.gid, c.user) == (nobody.pw_uid, nobody.pw_gid, "nobody")
    assert set(c.groups) == set(os.getgrouplist("nobody", nobody.pw_gid))
    n = privileges.credentials(str(nobody.pw_uid), "0")
    assert n is not None and (n.uid, n.gid) == (nobody.pw_uid, 0)
    g = privileges.credentials(None, "nogroup")
    assert g is not None and (g.uid, g.groups) == (os.getuid(), (g.gid,))
    assert privileges.credentials(None, None) is None
    with pytest.raises(UsageError, match="no such group: 'no-such-group-sgt'"):
        privileges.credentials(None, "no-such-group-sgt")


@needs_root
def test_drop_is_irrevocable() -> None:
    code = (
        "import os,sys;sys.path.insert(0,sys.argv[1]);from sockgate.linux import privileges as p;"
        "c=p.credentials('nobody',None);p.drop(c);p.verify(c);"
        "print(os.getresuid(),os.getresgid(),sorted(os.getgroups()))"
    )
    out = subprocess.run([sys.executable, "-c", code, SRC], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    nobody = pwd.getpwnam("nobody")
    u, g = nobody.pw_uid, nobody.pw_gid
    assert out.stdout.strip() == f"({u}, {u}, {u}) ({g}, {g}, {g}) {sorted(set(os.getgrouplist('nobody', g)))}"


def test_hosts_access_files_with_the_daemon_name(tmp_path: Path, launch: Launch) -> None:
    allow = tmp_path / "hosts.allow"
    deny = tmp_path / "hosts.deny"
    allow.write_text("in.echod: 127.0.0.1\n")
    deny.write_text("ALL: ALL\n")
    command, report = echo_command(tmp_path)
    lr = launch(
        "--hosts-allow", str(allow), "--hosts-deny", str(deny), "--service", "in.echod",
        "--listen", "udp://127.0.0.1:0", *command,
    )
    addrs, _ = lr.started(1)
    wait_for_file(report, lines=lr.lines)
    port = port_of(addrs[0])
    assert udp_echo("127.0.0.1", port) == b"dgram"
    assert udp_echo("127.0.0.3", port, timeout=0.5) is None


FD_REPORT = (
    "import json,os\n"
    "fds=[]\n"
    "for fd in range(3,1024):\n"
    "    try: os.fstat(fd)\n"
    "    except OSError: continue\n"
    "    fds.append(fd)\n"
    "read=[]\n"
    "for fd in fds:\n"
    "    try: read.append(os.pread(fd,64,0).decode(errors='replace'))\n"
    "    except OSError: pass\n"
    "print(json.dumps({'fds':fds,'read':read,'listen_fds':os.environ.get('LISTEN_FDS')}))\n"
)


@needs_root
def test_command_gets_no_inherited_descriptor(public_dir: Path, tmp_path: Path, policy: Path) -> None:
    """A descriptor root holds on a root-only file when it starts `sockgate run` must not reach
    the --user command: it gets stdio and its LISTEN_FDS, nothing else."""
    secret = tmp_path / "secret"
    secret.write_text("root only")
    os.chmod(secret, 0o600)
    fd = os.open(secret, os.O_RDONLY)  # inheritable, as a shell's `3<secret` would be
    os.set_inheritable(fd, True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sockgate", "run", "--policy", str(policy), "--service", "echo",
             "--user", "nobody", "--listen", f"unix:{public_dir}/fd.sock",
             "--", _python_for_nobody(), "-c", FD_REPORT],
            pass_fds=(fd,), capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": SRC},
        )
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got == {"fds": [3], "read": [], "listen_fds": "1"}


@needs_root
def test_inetd_command_gets_no_inherited_descriptor(public_dir: Path, tmp_path: Path) -> None:
    """The same in --inetd mode: the command has the connection on 0 and 1, stderr, nothing else."""
    policy = public_dir / "unix.conf"
    policy.write_text("service ctl {\n    allow uid 0\n    default deny\n}\n")
    secret = tmp_path / "secret"
    secret.write_text("root only")
    os.chmod(secret, 0o600)
    sock_path = public_dir / "fd.sock"
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sockgate", "run", "--policy", str(policy), "--service", "ctl", "--inetd",
             "--user", "nobody", "--listen", f"unix:{sock_path}?mode=0666",
             "--", _python_for_nobody(), "-c", FD_REPORT],
            pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": SRC},
        )
    finally:
        os.close(fd)
    try:
        assert proc.stderr is not None
        while "running" not in proc.stderr.readline():  # "... per connection (inetd mode ...)"
            assert proc.poll() is None, "sockgate run exited early"
        with socket.socket(socket.AF_UNIX) as u:
            u.settimeout(10)
            u.connect(str(sock_path))
            got = json.loads(u.makefile().readline())
        assert got == {"fds": [], "read": [], "listen_fds": None}
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stderr is not None:
            proc.stderr.close()
