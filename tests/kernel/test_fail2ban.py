"""contrib/fail2ban/filter.d/sockgate.conf, checked by Debian's ``fail2ban-regex`` (the oracle)
on lines the refusal log itself writes: the stderr form (ISO stamp) and the syslog form, IPv4
and IPv6, every cause; lines about already-banned sources ignored; another daemon's line, a
TCP Wrappers line and a line with no count never matched."""

from __future__ import annotations

import io
import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

from sockgate.ebpf.layout import Reason
from sockgate.ebpf.refusals import Refusal, describe
from sockgate.refusallog import SEVERITY, refusal_log

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "contrib/fail2ban/filter.d/sockgate.conf"
COMMON = Path("/etc/fail2ban/filter.d/common.conf")  # Debian's fail2ban ships it; the filter includes it
S = 1_000_000_000

pytestmark = pytest.mark.skipif(shutil.which("fail2ban-regex") is None or not COMMON.exists(),
                                reason="fail2ban-regex (Debian package fail2ban) is not installed")


def _refusal(service: str, source: str, count: int, reason: Reason, rule: int | None) -> Refusal:
    return Refusal(service, ipaddress.ip_address(source), count, S, 2 * S, reason, rule, 60 * S)


CASES = [
    (_refusal("ssh", "203.0.113.5", 3, Reason.RULE, 1), True),
    (_refusal("ssh", "2001:db8::7", 1, Reason.RULE, None), True),
    (_refusal("web", "192.0.2.1", 12, Reason.RATE, None), True),
    (_refusal("dns", "::ffff:192.0.2.3", 1, Reason.FORGED, None), False),  # forged: never a ban
    (_refusal("ssh", "198.51.100.1", 9, Reason.BAN, None), False),  # already banned: ignored
]


def _lines() -> str:
    out = io.StringIO()
    log = refusal_log("text", stream=out)
    for r, _ in CASES:
        log.message("refused", describe(r), SEVERITY)
        log.flush()
    syslog_form = [f"Dec  3 09:20:0{i} host sockgate[4242]: {describe(r)}" for i, (r, _) in enumerate(CASES)]
    foreign = [
        "Dec  3 09:21:00 host sshd[1]: ssh: refused connect from 192.0.2.50 (5 times in 60 s, rule 1)",
        "Dec  3 09:21:00 host sshd[1]: refused connect from 192.0.2.51 (192.0.2.51)",  # tcpd's own line
        "Dec  3 09:21:00 host sockgate[1]: ssh: refused connect from 192.0.2.52",
    ]
    return out.getvalue() + "\n".join(syslog_form + foreign) + "\n"


def test_fail2ban_regex_finds_the_refused_sources(tmp_path: Path) -> None:
    conf = tmp_path / "filter.d"
    conf.mkdir()
    shutil.copy(COMMON, conf / "common.conf")
    shutil.copy(FILTER, conf / "sockgate.conf")
    log = tmp_path / "refusals.log"
    log.write_text(_lines())
    r = subprocess.run(["fail2ban-regex", "--out", "ip", str(log), str(conf / "sockgate.conf")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = [str(rf.source) for rf, matched in CASES if matched]
    assert r.stdout.split() == want + want
    stats = subprocess.run(["fail2ban-regex", str(log), str(conf / "sockgate.conf")], capture_output=True, text=True, timeout=120)
    assert "Lines: 13 lines, 4 ignored, 6 matched, 3 missed" in stats.stdout, stats.stdout


def test_lines_about_this_hosts_own_addresses_are_ignored(tmp_path: Path) -> None:
    """A local user connecting from the host's own address must not get it banned (REVIEW4 N8)."""
    conf = tmp_path / "filter.d"
    conf.mkdir()
    shutil.copy(COMMON, conf / "common.conf")
    shutil.copy(FILTER, conf / "sockgate.conf")
    cases = [(r, local) for r, matched in CASES if matched for local in (False, True)]
    lines = [f"Dec  3 09:20:0{i} host sockgate[4242]: {describe(r, None, local)}" for i, (r, local) in enumerate(cases)]
    lines.append("Dec  3 09:20:09 host sockgate[4242]: ssh: refused connect from 192.0.2.9 (2 times in 60 s, rule local source)")
    log = tmp_path / "refusals.log"
    log.write_text("\n".join(lines) + "\n")
    r = subprocess.run(["fail2ban-regex", "--out", "ip", str(log), str(conf / "sockgate.conf")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(rf.source) for rf, local in cases if not local] + ["192.0.2.9"]  # a rule's label
