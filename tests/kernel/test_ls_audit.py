"""`sockgate ls --hosts-allow A --hosts-deny D`, the audit, against real processes: who
enforces the files on each socket of each daemon they name.

Daemons are python processes started under the daemon's name (argv[0], as libwrap names a
daemon), each listening on a loopback port: one with Debian's libwrap.so.0 preloaded (so it
maps libwrap, as a daemon linked with it does) → ``libwrap``; one that guards its own socket
with sockgate → ``sockgate`` (service, digest, backend); one with neither → ``none`` and exit
status 3; a daemon the files name that runs nowhere → ``no-listener``; one running as nobody
under a daemon's name → an impostor, apart. A real xinetd (Debian's, linked with libwrap)
holds listeners for three services: one it wraps itself → ``libwrap``, one with ``flags =
NOLIBWRAP`` → ``none``, one its configuration (as given to the audit) does not name → listed
as held by a super-server for an unknown daemon. A holder that exits while it is looked at
gives ``unknown``, never another process's libraries.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import needs_root
from sockgate.agent.auditscan import holder_wrap
from sockgate.agent.model import HolderInfo
from sockgate.linux import bpfsys, pidfd
from support.children import reap

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc and sockets"), needs_root]

LIBWRAP = "/lib/x86_64-linux-gnu/libwrap.so.0"
SRC = str(Path(__file__).resolve().parents[2] / "src")
SG = [sys.executable, "-m", "sockgate"]
SYSTEM_PYTHON = "/usr/bin/python3"  # one nobody may run
NO_SUPERSERVERS = ["--xinetd-conf", "/nonexistent/xinetd.conf", "--inetd-conf", "/nonexistent/inetd.conf",
                   "--systemd-units", "/nonexistent/units"]

# a daemon: listen on a loopback port (guarded with sockgate when asked), print it, wait for stdin to close
DAEMON = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0))
if len(sys.argv) > 3:
    from sockgate.loading import load_policy
    load_policy([], sys.argv[1], sys.argv[2]).guard(s, sys.argv[3], backend="cbpf")  # nothing pinned to clean
s.listen(8)
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def start(name: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """A process called ``name`` (argv[0]) listening on a loopback port; the port."""
    p = subprocess.Popen([name, "-c", DAEMON, *args], executable=sys.executable, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC, **(env or {})})
    assert p.stdout is not None
    line = p.stdout.readline()  # readiness: it listens once it printed its port
    if not line.strip().isdigit():
        reap([p])
        raise AssertionError(f"{name} did not start")
    return p, int(line)


def audit(allow: Path, deny: Path, *extra: str, json_out: bool = True) -> tuple[int, list[dict[str, Any]], str]:
    argv = [*SG, "ls", "--hosts-allow", str(allow), "--hosts-deny", str(deny), *extra]
    out = subprocess.run(argv + (["--json"] if json_out else []), capture_output=True, text=True, timeout=120, cwd="/",
                         env={**os.environ, "PYTHONPATH": SRC})
    assert "Traceback" not in out.stderr, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()] if json_out else []
    return out.returncode, rows, out.stdout + out.stderr


def by_daemon(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["daemon"] == name and r["kind"] in ("socket", "no-listener")]


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    out: list[subprocess.Popen[str]] = []
    try:
        yield out
    finally:
        reap(out)


def test_libwrap_a_sockgate_guard_nothing_and_no_listener_each_named(tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    assert os.path.exists(LIBWRAP), "needs Debian's libwrap0"
    tag = secrets.token_hex(3)
    wrapped, guarded, bare, absent = (f"sga{k}-{tag}" for k in "wgba")
    allow = tmp_path / "hosts.allow"
    allow.write_text(f"{wrapped} {guarded}: 127.0.0.1\n{bare}: 127.0.0.1\n# nothing\n{absent}: ALL\n")
    deny = tmp_path / "hosts.deny"
    deny.write_text("ALL: ALL\n")
    p, wport = start(wrapped, env={"LD_PRELOAD": LIBWRAP})
    children.append(p)
    p, gport = start(guarded, str(allow), str(deny), guarded)
    children.append(p)
    p, bport = start(bare)
    children.append(p)
    code, rows, _ = audit(allow, deny, *NO_SUPERSERVERS)
    w, = by_daemon(rows, wrapped)
    assert (w["kind"], w["enforcement"], w["local"], w["via"]) == ("socket", "libwrap", f"127.0.0.1:{wport}", "name")
    assert w["holders"][0]["libwrap"] == "mapped" and "libwrap.so.0" in w["holders"][0]["libwrap_path"]
    assert w["named_at"] == [f"{allow}:1"]
    g, = by_daemon(rows, guarded)
    assert (g["enforcement"], g["local"], g["guard"]["status"], g["guard"]["service"], g["guard"]["backend"]) == (
        "sockgate", f"127.0.0.1:{gport}", "sockgate", guarded, "cbpf")
    assert g["guard"]["digest"] in g["enforced_by"]
    b, = by_daemon(rows, bare)
    assert (b["enforcement"], b["local"], b["holders"][0]["libwrap"]) == ("none", f"127.0.0.1:{bport}", "absent")
    a, = by_daemon(rows, absent)
    assert (a["kind"], a["enforcement"], a["named_at"]) == ("no-listener", None, [f"{allow}:4"])
    assert code == 3
    code, _, text = audit(allow, deny, *NO_SUPERSERVERS, json_out=False)
    assert code == 3
    line, = [x for x in text.splitlines() if x.startswith(bare)]
    assert "NOTHING" in line and f"127.0.0.1:{bport}" in line and "maps no libwrap" in line
    assert "enforced by nothing" in text
    children[2].kill()
    children[2].wait()
    code, rows, _ = audit(allow, deny, *NO_SUPERSERVERS)
    assert [r["kind"] for r in by_daemon(rows, bare)] == ["no-listener"]
    assert code == 0


def test_a_libwrap_anyone_could_have_made_is_never_taken_for_libwrap(tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    name = f"sgau-{secrets.token_hex(3)}"
    fake = tmp_path / "lib" / "libwrap.so.0"
    fake.parent.mkdir()
    shutil.copyfile(LIBWRAP, fake)  # the real library's code, in a file nobody owns
    os.chown(fake, 65534, 65534)
    allow = tmp_path / "hosts.allow"
    allow.write_text(f"{name}: 127.0.0.1\n")
    deny = tmp_path / "hosts.deny"
    deny.write_text("ALL: ALL\n")
    p, port = start(name, env={"LD_PRELOAD": str(fake)})
    children.append(p)
    code, rows, _ = audit(allow, deny, *NO_SUPERSERVERS)
    r, = by_daemon(rows, name)
    assert (r["enforcement"], r["local"], r["holders"][0]["libwrap"]) == ("unknown", f"127.0.0.1:{port}", "untrusted")
    assert "not root's" in r["enforced_by"]
    assert code == 4


def test_a_process_taking_a_daemons_name_without_being_it_is_an_impostor_apart(
        tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    name = f"sgai-{secrets.token_hex(3)}"
    allow = tmp_path / "hosts.allow"
    allow.write_text(f"{name}: 127.0.0.1\n")
    deny = tmp_path / "hosts.deny"
    deny.write_text("ALL: ALL\n")
    # argv[0] is the daemon's name, but it runs as nobody and executes python: not plausibly it
    p = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c",
                          f'exec -a {name} "$0" -c "$1"', SYSTEM_PYTHON, DAEMON],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    children.append(p)
    assert p.stdout is not None
    port = int(p.stdout.readline())
    code, rows, _ = audit(allow, deny, *NO_SUPERSERVERS)
    kinds = [(r["kind"], r["local"]) for r in rows if r["daemon"] == name]
    assert kinds == [("no-listener", None), ("impostor", f"127.0.0.1:{port}")]
    assert code == 0  # an impostor's socket is not the daemon's


def test_a_holder_that_exits_while_looked_at_is_unknown_never_another_processes(children: list[subprocess.Popen[str]]) -> None:
    p, port = start("sgax", env={"LD_PRELOAD": LIBWRAP})
    children.append(p)
    fd = next(int(n) for n in os.listdir(f"/proc/{p.pid}/fd")
              if os.readlink(f"/proc/{p.pid}/fd/{n}").startswith("socket:"))
    with pidfd.PidfdCache() as pidfds:
        dup = pidfds.dup(p.pid, fd)
        cookie = bpfsys.socket_cookie(dup)
        os.close(dup)
        h = HolderInfo(p.pid, fd, "python3", "sgax")
        assert holder_wrap(h, cookie, pidfds, "/proc").state == "mapped"
        p.kill()
        p.wait()  # reaped: its pid is free for another process
        got = holder_wrap(h, cookie, pidfds, "/proc")
        assert got.state == "unknown" and "exited" in (got.why or "")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening(port: int) -> bool:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return bool(out.strip())


def _xinetd_service(name: str, port: int, server: str, flags: str = "REUSE") -> str:
    return (f"service {name}\n{{\n    type = UNLISTED\n    port = {port}\n    socket_type = stream\n    protocol = tcp\n"
            f"    wait = no\n    user = root\n    server = {server}\n    bind = 127.0.0.1\n    flags = {flags}\n}}\n")


@pytest.mark.skipif(shutil.which("xinetd") is None, reason="needs xinetd (Debian xinetd)")
def test_xinetds_listeners_libwrap_when_it_wraps_nothing_with_nolibwrap_and_unknown_daemons_apart(
        tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    tag = secrets.token_hex(3)
    wrapped, unwrapped = f"in.sgaw{tag}", f"in.sgan{tag}"
    scripts = {}
    for name in (wrapped, unwrapped, "in.sgother"):
        scripts[name] = tmp_path / name
        scripts[name].write_text("#!/bin/sh\nexec cat\n")
        scripts[name].chmod(0o755)
    pw, pn, po = _free_ports(3)
    known = (_xinetd_service("sgaw", pw, str(scripts[wrapped]))
             + _xinetd_service("sgan", pn, str(scripts[unwrapped]), "REUSE NOLIBWRAP"))
    full = tmp_path / "xinetd.conf"
    full.write_text("defaults\n{\n}\n" + known + _xinetd_service("sgother", po, str(scripts["in.sgother"])))
    audits_view = tmp_path / "xinetd-audit.conf"
    audits_view.write_text(known)
    log = open(tmp_path / "xinetd.log", "wb")
    xinetd = subprocess.Popen(["xinetd", "-dontfork", "-f", str(full), "-pidfile", str(tmp_path / "xinetd.pid")],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    children.append(xinetd)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 20
        while not all(_listening(p) for p in (pw, pn, po)):
            assert time.monotonic() < deadline, "xinetd did not listen"
            assert xinetd.poll() is None, (tmp_path / "xinetd.log").read_text()
            time.sleep(0.05)
        allow = tmp_path / "hosts.allow"
        allow.write_text(f"{wrapped}: 127.0.0.1\n{unwrapped}: 127.0.0.1\n")
        deny = tmp_path / "hosts.deny"
        deny.write_text("ALL: ALL\n")
        code, rows, _ = audit(allow, deny, "--xinetd-conf", str(audits_view), "--inetd-conf", "/nonexistent",
                              "--systemd-units", "/nonexistent")
        w, = by_daemon(rows, wrapped)
        assert (w["enforcement"], w["via"], w["local"], w["holders"][0]["comm"]) == (
            "libwrap", "superserver", f"127.0.0.1:{pw}", "xinetd")
        assert "called by the super-server" in w["enforced_by"] and w["holders"][0]["libwrap"] == "mapped"
        n, = by_daemon(rows, unwrapped)
        assert (n["enforcement"], n["via"], n["local"]) == ("none", "superserver", f"127.0.0.1:{pn}")
        assert "NOLIBWRAP" in n["enforced_by"]
        assert [(r["kind"], r["local"]) for r in rows if r["kind"] == "superserved" and r["port"] == po] == [
            ("superserved", f"127.0.0.1:{po}")]
        assert code == 3
    finally:
        log.close()


def test_without_seeing_every_process_the_audit_refuses_rather_than_call_a_daemon_not_running(tmp_path: Path) -> None:
    allow = tmp_path / "hosts.allow"
    allow.write_text("sshd: 127.0.0.1\n")
    out = subprocess.run(["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", *SG, "ls", "--hosts-allow",
                          str(allow), "--hosts-deny", str(allow)], capture_output=True, text=True, timeout=120, cwd="/",
                         env={**os.environ, "PYTHONPATH": SRC})
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == ("sockgate: the audit must see every process's sockets (root, with CAP_SYS_PTRACE);"
                          " nothing was audited\n"), out.stderr
