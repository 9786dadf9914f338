"""The agent hosts the refusal log of its eBPF services, as ``sockgate run`` does: real
connections from a denied source to a service the agent guards with eBPF become one line per
source per interval in the agent's log, and Debian's ``fail2ban-regex`` finds the source in
that log with the shipped filter. A classic service has no log (nothing counts) and says so
nowhere as an error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kernel.test_agent import ALLOWED, BASE, DENIED, Lab, connects, guarded_by, lab, native, until  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "contrib/fail2ban/filter.d/sockgate.conf"
COMMON = Path("/etc/fail2ban/filter.d/common.conf")


def test_the_agent_logs_refusals_of_its_ebpf_services_and_fail2ban_reads_them(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOCKGATE_BPFFS", lab.bpffs)
    port = BASE + 4
    agent = lab.agent(native(lab, port), "--backend", "ebpf", "--refusal-interval", "0.5")
    s = lab.server("tcp", port)
    until("guarded by eBPF", lambda: guarded_by(s.info, "web"))
    assert "refusal log of web: text to stderr" in agent.stderr()
    assert not connects(DENIED, port, timeout=0.2) and connects(ALLOWED, port)
    line = f"web: refused connect from {DENIED} ("
    until("the refusal in the agent's log", lambda: line in agent.stderr(), timeout=5.0)
    assert f"refused connect from {ALLOWED}" not in agent.stderr()
    assert not any("no refusal log" in e for e in agent.status()["errors"])

    if shutil.which("fail2ban-regex") is None or not COMMON.exists():
        pytest.fail("fail2ban-regex (Debian fail2ban) is needed to check the agent's log against the filter")
    conf = tmp_path / "filter.d"
    conf.mkdir()
    shutil.copy(COMMON, conf / "common.conf")
    shutil.copy(FILTER, conf / "sockgate.conf")
    r = subprocess.run(["fail2ban-regex", "--out", "ip", agent.log, str(conf / "sockgate.conf")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert DENIED in r.stdout.split(), (r.stdout, agent.stderr())


def test_a_classic_service_has_no_refusal_log_and_no_error(lab: Lab) -> None:
    port = BASE + 4
    agent = lab.agent(native(lab, port), "--backend", "cbpf", "--refusal-interval", "0.5")
    s = lab.server("tcp", port)
    until("guarded", lambda: guarded_by(s.info, "web"))
    assert not connects(DENIED, port, timeout=0.2)
    assert "refusal log" not in agent.stderr() and not agent.status()["errors"]
