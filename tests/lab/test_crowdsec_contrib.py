"""contrib/crowdsec: sockgate's refusal log as a CrowdSec source. The lines are written by the
refusal log's own formatter (ebpf/refusals.describe), the real agent replays them through the
shipped parser and scenarios into a real LAPI, and the bouncer then holds the bans —
refusals on one host become bans on every host."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from sockgate.crowdsec.lapi import Bouncer, LapiClient
from sockgate.ebpf.layout import Reason
from sockgate.ebpf.refusals import Refusal, describe
from support import crowdsec

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "crowdsec"
MINUTE = 60 * 10**9
# The lines' syslog times: minutes 0-3 of an interval that began ten minutes ago (the decisions
# a replay makes run from the lines' times, so a fixed date would have them expire already).
START = (int(time.time()) // 60 - 10) * 60


def line(minute: int, service: str, addr: str, count: int, reason: Reason = Reason.RULE, rule: int | None = 1,
         label: str | None = None, program: str = "sockgate", local: bool = False) -> str:
    r = Refusal(service, ipaddress.ip_address(addr), count, 0, 0, reason, rule, MINUTE)
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(START + minute * 60))
    return f"{stamp} gate {program}[4242]: {describe(r, label, local)}"


def test_refusals_become_bans_the_bouncer_holds(lapi: crowdsec.Lapi, tmp_path: Path) -> None:
    crowdsec.install_items(lapi, CONTRIB)
    lines = [
        line(0, "ssh", "192.0.2.66", 25),  # a flood in one interval
        line(0, "smtp", "203.0.113.20", 30, Reason.RATE, None),  # over a rate limit: a flood too
        *(line(m, "ssh", "198.51.100.7", 2, rule=None) for m in (0, 1, 2)),  # back every minute
        *(line(3, svc, "2001:db8::66", 1) for svc in ("ssh", "smtp", "imap")),  # a scan
        *(line(m, "ssh", "198.51.100.1", 3) for m in (0, 1)),  # twice, a few times: no ban
        # never counted: already banned, forged, another program
        *(line(m, "ssh", "203.0.113.9", 50, Reason.BAN, None) for m in range(4)),
        *(line(m, "ssh", "::ffff:203.0.113.10", 50, Reason.FORGED, None) for m in range(4)),
        *(line(m, "ssh", "203.0.113.8", 50, program="other") for m in range(4)),
    ]
    log = tmp_path / "sockgate.log"
    log.write_text("\n".join(lines) + "\n")
    crowdsec.replay(lapi, log)

    alerts = sorted((str(a["source"]["value"]), str(a["scenario"])) for a in lapi.alerts())  # type: ignore[index]
    assert alerts == sorted([("192.0.2.66", "sockgate/refused-flood"), ("203.0.113.20", "sockgate/refused-flood"),
                             ("198.51.100.7", "sockgate/refused-repeat"), ("2001:db8::66", "sockgate/refused-scan")])
    by_source = dict(alerts)
    assert {str(d["value"]): str(d["type"]) for d in lapi.decisions()} == dict.fromkeys(by_source, "ban")

    b = Bouncer(LapiClient(lapi.url, lapi.bouncer_key("fleet-host"), timeout_s=5))
    report, _ = b.poll()
    assert report is not None
    assert set(b.session.state.bans(time.monotonic_ns())) == {ipaddress.ip_network(a) for a in by_source}


def test_the_parser_reads_every_field(lapi: crowdsec.Lapi, tmp_path: Path) -> None:
    crowdsec.install_items(lapi, CONTRIB)
    log = tmp_path / "one.log"
    log.write_text(line(0, "web-8080", "2001:db8:0:1::2", 40, rule=6, label="policy.conf:12") + "\n")
    assert "(40 times in 60 s, rule policy.conf:12)" in log.read_text()
    crowdsec.replay(lapi, log)
    [alert] = lapi.alerts()
    assert alert["scenario"] == "sockgate/refused-flood"
    metas = {m["key"]: m["value"] for e in alert.get("events") or [] for m in e.get("meta") or []}  # type: ignore[attr-defined]
    assert metas.get("service") == "web-8080" and metas.get("source_ip") == "2001:db8:0:1::2"
    assert metas.get("sockgate_count") == "40" and metas.get("sockgate_cause") == "rule policy.conf:12"
    assert metas.get("log_type") == "sockgate_refused"


def test_refusals_of_this_hosts_own_address_never_become_a_decision(lapi: crowdsec.Lapi, tmp_path: Path) -> None:
    """A local user knocking from the host's own public address (REVIEW4 N8): no alert, no
    fleet-wide decision against the host; the same flood from elsewhere is one."""
    crowdsec.install_items(lapi, CONTRIB)
    lines = [
        line(0, "ssh", "192.0.2.80", 40, local=True),  # a flood, rule 1
        *(line(m, "ssh", "192.0.2.81", 2, rule=None, local=True) for m in (0, 1, 2)),  # back every minute
        *(line(3, svc, "2001:db8::80", 1, Reason.RATE, None, local=True) for svc in ("ssh", "smtp", "imap")),  # a scan
        line(0, "ssh", "192.0.2.82", 40),  # the same flood, from elsewhere
    ]
    log = tmp_path / "sockgate.log"
    log.write_text("\n".join(lines) + "\n")
    crowdsec.replay(lapi, log)
    alerts = sorted((str(a["source"]["value"]), str(a["scenario"])) for a in lapi.alerts())  # type: ignore[index]
    assert alerts == [("192.0.2.82", "sockgate/refused-flood")]
