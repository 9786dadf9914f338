"""``exe`` rules against a peer that connects and then execs an allowed program.

The kernel records a Unix peer's credentials at ``connect``, not its executable, which the
proxy reads afterwards (``linux/peercred.py``). A process may connect as one program and exec
another before the proxy looks. These tests run that race for real, as an unprivileged user
against a set-user-ID copy of the allowed program, and a program in a private mount namespace
that only looks like the allowed path; every such peer must be refused, while the allowed
program connecting by itself is served."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import needs_tool
from support.proxyproc import EchoServer, ProxyProc, wait_for

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="Unix peer credentials through the proxy are Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: set-user-ID files and another user"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs /usr/bin/python3 to run as another user"),
    needs_tool("socat"),
]

# connect to the proxy, keep the connection across exec, and exec argv[2:] at once
_CONNECT_THEN_EXEC = (
    "import os,socket,sys\n"
    "s=socket.socket(socket.AF_UNIX); s.connect(b'\\0'+sys.argv[1].encode()); s.set_inheritable(True)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
TRIES = 20


@pytest.fixture
def user() -> Iterator[tuple[int, int]]:
    name = f"sgtex{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        yield pw.pw_uid, pw.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.fixture
def allowed() -> Iterator[Path]:
    """A directory others may enter, holding set-user-ID root copies of sleep and socat."""
    d = Path(tempfile.mkdtemp(prefix="sgt-exe-", dir="/tmp"))
    try:
        d.chmod(0o755)
        for prog in ("sleep", "socat"):
            path = d / prog
            shutil.copy(shutil.which(prog) or prog, path)
            path.chmod(0o4755)
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture
def proxy(tmp_path: Path, allowed: Path) -> Iterator[tuple[ProxyProc, str]]:
    echo = EchoServer()
    name = f"sgt-exe-{os.getpid()}"
    pol = tmp_path / "p.conf"
    pol.write_text(
        f"service app unix:@{name} {{\n listen unix:@{name}\n forward tcp://127.0.0.1:{echo.port}\n"
        f" allow exe {allowed}/*\n default deny\n}}\n"
    )
    p = ProxyProc([str(pol)], tmp_path / "proxy.log")
    try:
        p.ready()
        yield p, name
    finally:
        p.close()
        echo.close()


def _verdict(p: ProxyProc, pid: int) -> str:
    def found() -> str | None:
        for r in p.find(event="decision"):
            if re.search(rf"\bpid={pid}\b", r.get("peer", "")):
                return str(r["decision"])
        return None

    return wait_for(found, timeout=10)  # type: ignore[no-any-return]


def _as(ids: tuple[int, int], argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, user=ids[0], group=ids[1], extra_groups=[], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def _ended(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.communicate(timeout=5)  # reaps it and closes its pipes


def test_the_allowed_program_connecting_itself_is_served(proxy: tuple[ProxyProc, str], allowed: Path, user: tuple[int, int]) -> None:
    p, name = proxy
    c = _as(user, [str(allowed / "socat"), "STDIN", f"ABSTRACT-CONNECT:{name}"], stdin=subprocess.PIPE)
    try:
        assert _verdict(p, c.pid) == "allow"
    finally:
        _ended(c)


def test_exec_completed_before_the_proxy_looks_is_refused(proxy: tuple[ProxyProc, str], allowed: Path, user: tuple[int, int]) -> None:
    """The proxy is stopped while the client connects and execs the allowed program, so it
    can only see the process after the exec (the losing side of the race, every time)."""
    p, name = proxy
    os.kill(p.pid, signal.SIGSTOP)
    c = None
    try:
        c = _as(user, ["/usr/bin/python3", "-c", _CONNECT_THEN_EXEC, name, str(allowed / "sleep"), "30"])
        pid = c.pid
        wait_for(lambda: os.readlink(f"/proc/{pid}/exe") == str(allowed / "sleep"))
    finally:
        os.kill(p.pid, signal.SIGCONT)
    try:
        assert _verdict(p, c.pid) == "deny"
    finally:
        _ended(c)


def test_connect_then_exec_is_refused_in_every_try(proxy: tuple[ProxyProc, str], allowed: Path, user: tuple[int, int]) -> None:
    p, name = proxy
    verdicts = []
    for _ in range(TRIES):
        c = _as(user, ["/usr/bin/python3", "-c", _CONNECT_THEN_EXEC, name, str(allowed / "sleep"), "30"])
        try:
            verdicts.append(_verdict(p, c.pid))
        finally:
            _ended(c)
    assert verdicts == ["deny"] * TRIES


@needs_tool("unshare")
def test_a_lookalike_path_in_another_mount_namespace_is_refused(proxy: tuple[ProxyProc, str], allowed: Path) -> None:
    """/proc/PID/exe of a program on a private mount over the allowed directory reads as the
    allowed path; it is not the file at that path, so it has no known executable."""
    p, name = proxy
    script = f'mount -t tmpfs tmpfs "$1" && cp /usr/bin/socat "$1/socat" && exec "$1/socat" STDIN "ABSTRACT-CONNECT:$2"'
    c = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(allowed), name], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _verdict(p, c.pid) == "deny"
        rec = next(r for r in p.find(event="decision") if f"pid={c.pid}" in r["peer"])
        assert "exe=" not in rec["peer"]
    finally:
        _ended(c)
