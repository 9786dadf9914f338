"""A listener xinetd holds for a daemon hosts.allow names, for real: xinetd (Debian's) runs
with a test configuration, starting ``in.sgtestd`` (an echo script) for connections on one
port and another daemon on a second port; the agent is given a configuration that names only
the first. The first listener — held by xinetd, never by a process called in.sgtestd — is
guarded as in.sgtestd's (127.0.0.1 served, 127.0.0.2 dropped); the second is reported as
held by a super-server for an unknown daemon, never silently left. systemd socket activation
is not run here (systemd is not PID 1 in the lab): a root process named ``systemd`` holds a
listener that a ``.socket`` unit in a test unit directory describes, and its ``@.service``
names the daemon; a vendor drop-in masked in /etc is not applied (the rules are those of the
daemon systemd runs)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from typing import Any, Iterator

import pytest

from kernel.test_agent import ALLOWED, BASE, DENIED, Lab, connects, lab, until  # noqa: F401
from support.agentlab import joining
from support.children import reap

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


@contextlib.contextmanager
def pid1_listener(lab: Lab, port: int) -> Iterator[None]:
    """A root process named ``systemd`` holding a listener on 127.0.0.1:``port`` (systemd is not
    PID 1 in the lab), until the block ends."""
    fake = lab.path("systemd")
    os.symlink(os.path.realpath(sys.executable), fake)
    holder = subprocess.Popen([fake, "-I", "-c", LISTEN, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        yield
    finally:
        reap([holder])


def test_a_listener_systemd_holds_for_a_socket_unit_is_its_services_daemons(lab: Lab) -> None:
    port = BASE + 3
    units = lab.path("units")
    os.mkdir(units)
    with open(os.path.join(units, "sgtest.socket"), "w") as f:
        f.write(f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n")
    with open(os.path.join(units, "sgtest@.service"), "w") as f:
        f.write("[Service]\nExecStart=-/usr/local/sbin/in.sgtestd -i\nStandardInput=socket\n")
    with pid1_listener(lab, port):
        agent = lab.hosts_agent(f"in.sgtestd: {ALLOWED}\n", "ALL: ALL\n", "--systemd-units", units,
                                "--xinetd-conf", lab.path("no-xinetd.conf"), "--inetd-conf", lab.path("no-inetd.conf"))
        rows = until("systemd's listener guarded as in.sgtestd's", lambda: [
            k for svc in agent.status()["services"] if svc["name"] == "in.sgtestd" for k in svc["sockets"]
            if k["state"] in ("guarded", "adopted")])
        assert [(k["local"], k["holders"][0]["comm"]) for k in rows] == [(f"127.0.0.1:{port}", "systemd")]
        assert agent.status()["superserved"] == []
        assert not connects(DENIED, port)


def handshakes(src: str, port: int, timeout: float = 1.0) -> bool:
    """The listener's filter let ``src``'s SYN in (the holder never accepts: the handshake is
    the test; a dropped SYN times out)."""
    return connects(src, port, timeout, echo=False)


def test_a_masked_vendor_drop_in_does_not_choose_the_rules(lab: Lab) -> None:
    """A vendor service drop-in masked in /etc (a link to /dev/null, systemd.unit(5)) is not
    applied: the listener pid 1 holds is guarded with the rules of the daemon systemd runs
    (in.sgstrict: 127.0.0.2's SYN dropped), not the masked drop-in's (in.sgopen: ALL)."""
    port = BASE + 4
    etc, lib = lab.path("etc"), lab.path("lib")
    files = {
        f"{lib}/sgtest.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\n",
        f"{lib}/sgtest.service": "[Service]\nExecStart=/usr/local/sbin/in.sgstrict\n",
        f"{lib}/sgtest.service.d/10-vendor.conf": "[Service]\nExecStart=\nExecStart=/usr/local/sbin/in.sgopen\n",
    }
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    os.makedirs(f"{etc}/sgtest.service.d")
    os.symlink("/dev/null", f"{etc}/sgtest.service.d/10-vendor.conf")  # the admin's mask
    with pid1_listener(lab, port):
        allow = lab.path("hosts.allow", f"in.sgstrict: {ALLOWED}\nin.sgopen: ALL\n")
        deny = lab.path("hosts.deny", "ALL: ALL\n")
        agent = lab.agent("--hosts-allow", allow, "--hosts-deny", deny, "--systemd-units", etc, "--systemd-units", lib,
                          "--xinetd-conf", lab.path("no-xinetd.conf"), "--inetd-conf", lab.path("no-inetd.conf"))
        rows = until("systemd's listener enrolled", lambda: [
            (svc["name"], k["state"]) for svc in agent.status()["services"] for k in svc["sockets"]
            if k["state"] in ("guarded", "adopted")])
        # systemd runs in.sgstrict here (the vendor drop-in is masked): its rules, not in.sgopen's
        opened = handshakes(DENIED, port)
        assert handshakes(ALLOWED, port)
        assert not opened and [name for name, _ in rows] == ["in.sgstrict"], \
            f"guarded as {rows}; {DENIED} connects: {opened}"


def test_an_unreadable_drop_in_is_reported_at_the_listener_and_fixing_it_guards_it(lab: Lab) -> None:
    """A service drop-in that cannot be read (a FIFO) leaves the daemon unsettled: the listener
    pid 1 holds is not guarded under a guessed daemon, and status says which file and why;
    removing the file reloads (the drop-in directory is watched) and the listener is guarded."""
    port = BASE + 5
    units = lab.path("units")
    os.makedirs(f"{units}/sgtest.service.d")
    with open(f"{units}/sgtest.socket", "w") as f:
        f.write(f"[Socket]\nListenStream=127.0.0.1:{port}\n")
    with open(f"{units}/sgtest.service", "w") as f:
        f.write("[Service]\nExecStart=/usr/local/sbin/in.sgstrict\n")
    os.mkfifo(f"{units}/sgtest.service.d/override.conf")
    with pid1_listener(lab, port):
        allow = lab.path("hosts.allow", f"in.sgstrict: {ALLOWED}\n")
        deny = lab.path("hosts.deny", "ALL: ALL\n")
        agent = lab.agent("--hosts-allow", allow, "--hosts-deny", deny, "--systemd-units", units,
                          "--xinetd-conf", lab.path("no-xinetd.conf"), "--inetd-conf", lab.path("no-inetd.conf"))
        (row,) = until("the listener reported with its reason",  # (another test's super-server may be up too)
                       lambda: [r for r in agent.status()["superserved"] if r["port"] == port])
        assert "sgtest.service.d/override.conf unreadable" in row["why"], row
        assert [k for svc in agent.status()["services"] for k in svc["sockets"]] == []
        os.unlink(f"{units}/sgtest.service.d/override.conf")
        until("guarded once the file is gone", lambda: [
            k for svc in agent.status()["services"] if svc["name"] == "in.sgstrict" for k in svc["sockets"]
            if k["state"] in ("guarded", "adopted")])
        assert port not in [r["port"] for r in agent.status()["superserved"]] and not handshakes(DENIED, port)
