"""A listener xinetd holds for a daemon hosts.allow names, for real: xinetd (Debian's) runs
with a test configuration, starting ``in.sgtestd`` (an echo script) for connections on one
port and another daemon on a second port; the agent is given a configuration that names only
the first. The first listener — held by xinetd, never by a process called in.sgtestd — is
guarded as in.sgtestd's (127.0.0.1 served, 127.0.0.2 dropped); the second is reported as
held by a super-server for an unknown daemon, never silently left. systemd socket activation
is not run here (systemd is not PID 1 in the lab): a root process named ``systemd`` holds a
listener that a ``.socket`` unit in a test unit directory describes, and its ``@.service``
names the daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from kernel.test_agent import ALLOWED, BASE, DENIED, Lab, connects, lab, until  # noqa: F401
from support.agentlab import joining

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="cgroup BPF is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent and xinetd need root"),
    pytest.mark.skipif(shutil.which("xinetd") is None, reason="needs xinetd (Debian xinetd)"),
    pytest.mark.root,
]


def service(name: str, port: int, server: str) -> str:
    return (f"service {name}\n{{\n    type = UNLISTED\n    port = {port}\n    socket_type = stream\n"
            f"    protocol = tcp\n    wait = no\n    user = root\n    server = {server}\n    bind = 127.0.0.1\n"
            f"    flags = REUSE\n}}\n")


def listening(port: int) -> bool:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return bool(out.strip())


def test_a_listener_xinetd_holds_for_a_named_daemon_is_guarded_and_an_unknown_one_reported(lab: Lab) -> None:
    port, other = BASE + 1, BASE + 2
    script = lab.path("in.sgtestd", "#!/bin/sh\nexec cat\n")
    os.chmod(script, 0o755)
    known = service("sgtest", port, script)
    full = lab.path("xinetd.conf", "defaults\n{\n}\n" + known + service("sgother", other, script))
    agents_view = lab.path("xinetd-agent.conf", known)
    log = open(lab.path("xinetd.log", ""), "wb")
    xinetd = subprocess.Popen(["xinetd", "-dontfork", "-f", full, "-pidfile", lab.path("xinetd.pid")],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=joining(lab.cgroup))
    try:
        until("xinetd listens", lambda: listening(port) and listening(other))
        agent = lab.hosts_agent(f"in.sgtestd: {ALLOWED}\n", "ALL: ALL\n", "--xinetd-conf", agents_view,
                                "--inetd-conf", lab.path("no-inetd.conf"))

        def guarded() -> Any:
            doc = agent.status()
            rows = [k for s in doc["services"] if s["name"] == "in.sgtestd" for k in s["sockets"]]
            return rows if rows and all(k["state"] in ("guarded", "adopted") for k in rows) else None

        rows = until("xinetd's listener guarded as in.sgtestd's", guarded)
        assert [(k["local"], k["holders"][0]["comm"]) for k in rows] == [(f"127.0.0.1:{port}", "xinetd")]
        assert until("served from the allowed source", lambda: connects(ALLOWED, port, timeout=1.0))
        assert not connects(DENIED, port)
        doc = agent.status()
        assert [(r["local"], r["holders"][0]["comm"]) for r in doc["superserved"]] == [(f"127.0.0.1:{other}", "xinetd")]
        assert connects(DENIED, other, timeout=1.0)  # unknown, so not guarded — but said so:
        text = subprocess.run([sys.executable, "-m", "sockgate", "status", "--control", agent.control],
                              capture_output=True, text=True, check=False)
        assert f"held by a super-server for an unknown daemon: tcp 127.0.0.1:{other}" in text.stdout, text.stdout
        assert f"--map DAEMON=tcp/{other}" in text.stdout
    finally:
        xinetd.kill()
        xinetd.wait()
        log.close()


LISTEN = ("import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('up', flush=True); sys.stdin.read()")


def test_a_listener_systemd_holds_for_a_socket_unit_is_its_services_daemons(lab: Lab) -> None:
    port = BASE + 3
    units = lab.path("units")
    os.mkdir(units)
    with open(os.path.join(units, "sgtest.socket"), "w") as f:
        f.write(f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n")
    with open(os.path.join(units, "sgtest@.service"), "w") as f:
        f.write("[Service]\nExecStart=-/usr/local/sbin/in.sgtestd -i\nStandardInput=socket\n")
    fake = lab.path("systemd")
    os.symlink(os.path.realpath(sys.executable), fake)
    holder = subprocess.Popen([fake, "-I", "-c", LISTEN, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        agent = lab.hosts_agent(f"in.sgtestd: {ALLOWED}\n", "ALL: ALL\n", "--systemd-units", units,
                                "--xinetd-conf", lab.path("no-xinetd.conf"), "--inetd-conf", lab.path("no-inetd.conf"))
        rows = until("systemd's listener guarded as in.sgtestd's", lambda: [
            k for svc in agent.status()["services"] if svc["name"] == "in.sgtestd" for k in svc["sockets"]
            if k["state"] in ("guarded", "adopted")])
        assert [(k["local"], k["holders"][0]["comm"]) for k in rows] == [(f"127.0.0.1:{port}", "systemd")]
        assert agent.status()["superserved"] == []
        assert not connects(DENIED, port)
    finally:
        holder.kill()
        holder.wait()
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()
