"""contrib/crowdsec: sockgate's refusal log as a CrowdSec source. The real agent replays a log
through the shipped parser and scenarios into a real LAPI, and the bouncer then holds the bans —
refusals on one host become bans on every host."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from sockgate.crowdsec.lapi import Bouncer, LapiClient
from support import crowdsec

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "crowdsec"


def line(second: int, service: str, addr: str, count: int = 3, rule: str = "default", pid: int = 4242) -> str:
    return (f"Dec  3 10:00:{second:02d} gate sockgate[{pid}]: {service}: refused connect from {addr} "
            f"({count} times in 1 s, rule {rule})")


def test_refusals_become_bans_the_bouncer_holds(lapi: crowdsec.Lapi, tmp_path: Path) -> None:
    crowdsec.install_items(lapi, CONTRIB)
    lines = [line(s, "ssh", "192.0.2.66", rule="2") for s in range(6)]  # knocks on and on
    lines += [line(10 + s, svc, "2001:db8::66", count=1) for s, svc in enumerate(["ssh", "smtp", "imap"])]  # a scan
    lines += [line(20 + s, "ssh", "198.51.100.1", count=1) for s in range(2)]  # two refusals: no ban
    # not sockgate's refusal lines, however many: another format, another program
    lines += [f"Dec  3 10:00:{30 + s} gate sockgate[4242]: ssh: refused connect from 203.0.113.9 (many times, rule 1)"
              for s in range(6)]
    lines += [f"Dec  3 10:00:{40 + s} gate other[1]: ssh: refused connect from 203.0.113.8 (9 times in 1 s, rule 1)"
              for s in range(6)]
    log = tmp_path / "sockgate.log"
    log.write_text("\n".join(lines) + "\n")
    crowdsec.replay(lapi, log)

    banned = {str(d["value"]): str(d["type"]) for d in lapi.decisions()}
    assert banned == {"192.0.2.66": "ban", "2001:db8::66": "ban"}
    scenarios = {str(a["scenario"]) for a in lapi.alerts()}
    assert scenarios == {"sockgate/refused-bf", "sockgate/refused-scan"}

    b = Bouncer(LapiClient(lapi.url, lapi.bouncer_key("fleet-host"), timeout_s=5))
    report, _ = b.poll()
    assert report is not None
    assert set(b.session.state.bans(time.monotonic_ns())) == {
        ipaddress.ip_network("192.0.2.66/32"), ipaddress.ip_network("2001:db8::66/128")}


def test_the_parser_reads_every_field(lapi: crowdsec.Lapi, tmp_path: Path) -> None:
    crowdsec.install_items(lapi, CONTRIB)
    log = tmp_path / "one.log"
    log.write_text("\n".join(line(s, "web-8080", "2001:db8:0:1::2", count=12, rule="7") for s in range(5)) + "\n")
    crowdsec.replay(lapi, log)
    [alert] = lapi.alerts()
    assert alert["scenario"] == "sockgate/refused-bf"
    events = alert.get("events") or []
    metas = {m["key"]: m["value"] for e in events for m in e.get("meta") or []}
    assert metas.get("service") == "web-8080" and metas.get("source_ip") == "2001:db8:0:1::2"
    assert metas.get("sockgate_rule") == "7" and metas.get("log_type") == "sockgate_refused"
