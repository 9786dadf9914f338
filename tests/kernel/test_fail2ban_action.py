"""contrib/fail2ban/action.d/sockgate.conf through fail2ban's own code: ``fail2ban-client -t``
accepts a configuration whose jail uses it (and refuses a broken copy), and fail2ban's reader
and command runner turn a ban and an unban into the ``sockgate ban``/``unban`` command lines of
the agent's CLI contract — ``--for Ns`` from the ticket's bantime (none for a permanent ban),
``--origin fail2ban``, ``--service`` only when the jail names one, ``--control`` — run against a
stand-in ``sockgate`` that records its arguments. Debian's fail2ban is a package of the system
Python, so its part runs in ``/usr/bin/python3``. The command lines are then given to the real
``sockgate ban``/``unban``, which take them (no agent answers: exit 1, not a usage error)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "contrib/fail2ban/action.d/sockgate.conf"
FILTER = ROOT / "contrib/fail2ban/filter.d/sockgate.conf"
COMMON = Path("/etc/fail2ban/filter.d/common.conf")
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="fail2ban runs on Linux here"),
    pytest.mark.skipif(shutil.which("fail2ban-client") is None or not COMMON.exists(),
                       reason="fail2ban (Debian package) is not installed"),
]

RUN = textwrap.dedent("""
    import json, sys
    from fail2ban.client.actionreader import ActionReader
    from fail2ban.server.action import CommandAction
    from fail2ban.server.ipdns import IPAddr
    base, jail, init, tickets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    r = ActionReader("sockgate", jail, init, basedir=base)
    assert r.read(), "action file not read"
    r.getOptions({})
    opts = dict(r.convert()[1][4])
    a = CommandAction(None, "sockgate")
    for k, v in opts.items():
        if k not in ("name", "actname"):
            setattr(a, k, v)
    for ip, bantime in tickets:
        info = {"ip": IPAddr(ip), "bantime": bantime, "family": "inet6" if ":" in ip else "inet4"}
        assert a.ban(info) is not False and a.unban(info) is not False
""")

RECORDER = "#!/bin/sh\n{ for a in \"$@\"; do printf '%s\\037' \"$a\"; done; printf '\\n'; } >> {out}\n"


def config_dir(tmp: Path, action: str | None = None) -> Path:
    d = tmp / "fail2ban"
    (d / "action.d").mkdir(parents=True)
    (d / "filter.d").mkdir()
    (d / "action.d/sockgate.conf").write_text(ACTION.read_text() if action is None else action)
    shutil.copy(FILTER, d / "filter.d/sockgate.conf")
    shutil.copy(COMMON, d / "filter.d/common.conf")
    (d / "refusals.log").touch()
    (d / "fail2ban.conf").write_text(f"[Definition]\nloglevel = INFO\nlogtarget = STDERR\nsocket = {d}/sock\n"
                                     f"pidfile = {d}/pid\ndbfile = :memory:\n")
    (d / "jail.conf").write_text(f"[DEFAULT]\nbackend = polling\n\n[sockgate]\nenabled = true\nfilter = sockgate\n"
                                 f"logpath = {d}/refusals.log\nbantime = 600\n"
                                 f"action = sockgate[service=ssh, control={d}/agent.sock]\n")
    return d


def calls(tmp: Path, jail: str, init: dict[str, str], tickets: list[tuple[str, int]]) -> list[list[str]]:
    d = config_dir(tmp)
    out = tmp / "calls"
    fake = tmp / "sockgate"
    fake.write_text(RECORDER.replace("{out}", str(out)))
    fake.chmod(0o755)
    r = subprocess.run([SYSTEM_PYTHON, "-c", RUN, str(d), jail, json.dumps({"sockgate": str(fake), **init}),
                        json.dumps(tickets)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line.split("\x1f")[:-1] for line in out.read_text().splitlines()] if out.exists() else []


def test_fail2ban_accepts_a_jail_using_the_action(tmp_path: Path) -> None:
    d = config_dir(tmp_path)
    r = subprocess.run(["fail2ban-client", "-c", str(d), "-t"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "configuration test is successful" in r.stdout + r.stderr, r.stdout + r.stderr


def test_fail2ban_refuses_a_broken_copy(tmp_path: Path) -> None:
    """The check above can fail: a copy without its section header is refused."""
    d = config_dir(tmp_path, ACTION.read_text().replace("[Definition]", ""))
    r = subprocess.run(["fail2ban-client", "-c", str(d), "-t"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stdout + r.stderr


def test_ban_and_unban_become_the_agents_command_lines(tmp_path: Path) -> None:
    got = calls(tmp_path, "sshd", {}, [("192.0.2.7", 600), ("2001:db8::7", -1)])
    assert got == [
        ["ban", "192.0.2.7", "--for", "600s", "--origin", "fail2ban", "--control", "/run/sockgate/agent.sock",
         "--reason", "fail2ban jail sshd"],
        ["unban", "192.0.2.7", "--origin", "fail2ban", "--control", "/run/sockgate/agent.sock"],
        ["ban", "2001:db8::7", "--origin", "fail2ban", "--control", "/run/sockgate/agent.sock",
         "--reason", "fail2ban jail sshd"],  # permanent: no --for
        ["unban", "2001:db8::7", "--origin", "fail2ban", "--control", "/run/sockgate/agent.sock"],
    ]


def test_a_jail_may_name_the_service_and_the_control_socket(tmp_path: Path) -> None:
    got = calls(tmp_path, "web", {"service": "my web", "control": "/tmp/a b.sock"}, [("198.51.100.9", 3)])
    assert got == [
        ["ban", "198.51.100.9", "--for", "3s", "--origin", "fail2ban", "--service", "my web", "--control", "/tmp/a b.sock",
         "--reason", "fail2ban jail web"],
        ["unban", "198.51.100.9", "--origin", "fail2ban", "--service", "my web", "--control", "/tmp/a b.sock"],
    ]


def test_the_real_cli_takes_every_command_line(tmp_path: Path) -> None:
    """Each line the action produced, given to ``sockgate`` itself with no agent listening:
    "no agent" (exit 1), never a usage error (exit 2)."""
    got = calls(tmp_path, "web", {"service": "my web", "control": str(tmp_path / "none.sock")},
                [("198.51.100.9", 3), ("2001:db8::7", -1)])
    assert len(got) == 4
    for argv in got:
        r = subprocess.run([sys.executable, "-m", "sockgate", *argv], capture_output=True, text=True, timeout=60,
                           env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
        assert (r.returncode, r.stderr.strip()) == (1, f"sockgate: no agent at {tmp_path / 'none.sock'}"), (argv, r.stderr)
