"""The bouncer against a real CrowdSec LAPI: startup, deltas, deletions, expiry, both scopes and
both families, an outage with backoff and the resync after it, TLS, a wrong key."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from sockgate.bans import Origin
from sockgate.crowdsec.lapi import Bouncer, LapiClient, LapiError
from sockgate.crowdsec.session import Backoff, Session
from support import crowdsec

POLL_DEADLINE = 30.0  # seconds; each wait below is a bounded loop of pulls


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def bouncer(lapi: crowdsec.Lapi, name: str = "sockgate", **session: object) -> Bouncer:
    client = LapiClient(lapi.url, lapi.bouncer_key(name), timeout_s=5,
                        ca_file=str(lapi.tls.ca) if lapi.tls else None)
    return Bouncer(client, Session(interval_s=1, backoff=Backoff(1, 4), **session), draw=lambda: 0.5)  # type: ignore[arg-type]


def banned(b: Bouncer) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return set(b.session.state.bans(time.monotonic_ns()))


def poll_until(b: Bouncer, predicate: object) -> None:
    deadline = time.monotonic() + POLL_DEADLINE
    while time.monotonic() < deadline:
        report, _ = b.poll()
        assert report is not None, b.session.status().last_error
        if predicate(b):  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not reached in {POLL_DEADLINE} s; holding {sorted(map(str, banned(b)))}")


def test_startup_delta_deletion_both_scopes_and_families(lapi: crowdsec.Lapi) -> None:
    for target in ("192.0.2.7", "2001:db8::7", "198.51.100.0/24", "2001:db8:1::/48"):
        lapi.add(target, "1h")
    lapi.add("203.0.113.5", "1h", type="captcha")
    b = bouncer(lapi)
    report, wait = b.poll()
    assert report is not None and report.startup and wait == 1
    assert banned(b) == {net("192.0.2.7/32"), net("2001:db8::7/128"), net("198.51.100.0/24"), net("2001:db8:1::/48")}
    assert report.ignored == (("type 'captcha'", 1),) and report.rejected == 0
    end = b.session.state.bans(time.monotonic_ns())[net("192.0.2.7/32")]
    assert end.origin is Origin.CROWDSEC
    assert 3590 * 10**9 < end.expires_ns - time.monotonic_ns() <= 3600 * 10**9

    lapi.add("192.0.2.8", "1h")
    report, _ = b.poll()
    assert report is not None and not report.startup and report.changed == {net("192.0.2.8/32")}
    assert net("192.0.2.8/32") in banned(b)

    lapi.delete("2001:db8:1::/48")
    lapi.delete("192.0.2.7")
    poll_until(b, lambda b: not banned(b) & {net("2001:db8:1::/48"), net("192.0.2.7/32")})
    assert banned(b) == {net("2001:db8::7/128"), net("198.51.100.0/24"), net("192.0.2.8/32")}


def test_expiry(lapi: crowdsec.Lapi) -> None:
    b = bouncer(lapi)
    b.poll()
    lapi.add("192.0.2.9", "3s")
    lapi.add("2001:db8::/32", "1h")
    b.poll()
    assert net("192.0.2.9/32") in banned(b)
    end = b.session.state.bans(time.monotonic_ns())[net("192.0.2.9/32")].expires_ns
    assert end - time.monotonic_ns() <= 3 * 10**9
    poll_until(b, lambda b: net("192.0.2.9/32") not in banned(b))
    assert time.monotonic_ns() >= end and banned(b) == {net("2001:db8::/32")}


def test_an_outage_keeps_the_decisions_backs_off_and_resyncs(lapi: crowdsec.Lapi) -> None:
    lapi.add("192.0.2.1", "1h")
    b = bouncer(lapi)
    b.poll()
    assert banned(b) == {net("192.0.2.1/32")}
    lapi.kill()
    waits = []
    for _ in range(4):
        report, wait = b.poll()
        assert report is None
        waits.append(wait)
    assert waits == [0.75, 1.5, 3.0, 3.0]  # steps 1, 2, 4, 4 (the cap), each with half jitter at 0.5
    status = b.session.status()
    assert not status.up and status.failures == 4 and "cannot pull decisions" in (status.last_error or "")
    assert banned(b) == {net("192.0.2.1/32")} and b.session.request() is True
    lapi.start()
    lapi.delete("192.0.2.1")
    lapi.add("192.0.2.2", "1h")
    report, wait = b.poll()
    assert report is not None and report.startup and wait == 1 and b.session.status().up
    assert banned(b) == {net("192.0.2.2/32")}


def test_a_different_lapi_behind_the_same_url_is_taken_whole(tmp_path: Path) -> None:
    """A restarted LAPI on a fresh database (or another LAPI of the fleet) knows nothing of
    this bouncer's last pull: only the startup resync after the outage gets it right."""
    if (reason := crowdsec.available()) is not None:
        pytest.skip(reason)
    with crowdsec.lapi(tmp_path / "a") as a:
        key = a.bouncer_key("sockgate")
        a.add("192.0.2.1", "1h")
        b = Bouncer(LapiClient(a.url, key, timeout_s=5), Session(interval_s=1), draw=lambda: 0.0)
        b.poll()
        assert banned(b) == {net("192.0.2.1/32")}
        port = a.port
    with crowdsec.lapi(tmp_path / "b", start=False, port=port) as other:
        other.bouncer_key("sockgate", key)
        b.poll()  # down meanwhile
        other.start()
        other.add("192.0.2.2", "1h")
        report, _ = b.poll()
        assert report is not None and report.startup
        assert banned(b) == {net("192.0.2.2/32")}


def test_tls_with_a_ca_file(tmp_path: Path) -> None:
    if (reason := crowdsec.available()) is not None:
        pytest.skip(reason)
    tls = crowdsec.make_tls(tmp_path / "tls")
    with crowdsec.lapi(tmp_path / "lapi", tls=tls) as the_lapi:
        the_lapi.add("2001:db8::99", "1h")
        b = bouncer(the_lapi)
        report, _ = b.poll()
        assert report is not None, b.session.status().last_error
        assert banned(b) == {net("2001:db8::99/128")}
        other = crowdsec.make_tls(tmp_path / "other")
        stranger = LapiClient(the_lapi.url, the_lapi.bouncer_key("x"), ca_file=str(other.ca), timeout_s=5)
        with pytest.raises(LapiError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            stranger.pull(True)


def test_a_wrong_key_is_named(lapi: crowdsec.Lapi) -> None:
    client = LapiClient(lapi.url, "0" * 32, timeout_s=5)
    with pytest.raises(LapiError, match=r"refused the API key \(HTTP 403\)"):
        client.pull(True)


def test_a_delta_lost_on_the_way_is_repaired_by_the_periodic_resync(lapi: crowdsec.Lapi) -> None:
    """The LAPI moves a bouncer's "last pull" when it has written an answer: an answer that
    never reached the bouncer (here a second client with the same key takes it, as a proxy
    that ate a response would) is a delta nobody sends again. The full pull every
    ``resync_s`` brings the missed ban, and a missed deletion lifts."""
    key = lapi.bouncer_key("sockgate")
    b = Bouncer(LapiClient(lapi.url, key, timeout_s=5), Session(interval_s=1, resync_s=6), draw=lambda: 0.5)
    thief = LapiClient(lapi.url, key, timeout_s=5)
    lapi.add("192.0.2.1", "1h")
    report, _ = b.poll()
    assert report is not None and report.startup and banned(b) == {net("192.0.2.1/32")}
    started = time.monotonic()
    lapi.add("192.0.2.2", "1h")
    lapi.delete("192.0.2.1")
    # The LAPI answers a delta with what changed since the last pull less a 2-second overlap:
    # the thief pulls once both changes are older than that, so no later delta repeats them.
    time.sleep(2.5)
    thief.pull(False)
    report, _ = b.poll()
    assert report is not None and not report.startup
    assert banned(b) == {net("192.0.2.1/32")}, "the lost delta reached the bouncer: the test proves nothing"
    assert time.monotonic() - started < 5, "the machine is too slow for this test's 6 s resync"
    poll_until(b, lambda b: banned(b) == {net("192.0.2.2/32")})
    assert b.session.status().last_report is not None and b.session.status().last_report.startup
    assert time.monotonic() - started >= 5


def test_a_resync_of_unchanged_decisions_reports_nothing_changed(lapi: crowdsec.Lapi) -> None:
    b = Bouncer(LapiClient(lapi.url, lapi.bouncer_key("sockgate"), timeout_s=5), Session(interval_s=1, resync_s=1),
                draw=lambda: 0.5)
    lapi.add("192.0.2.1", "1h")
    first, _ = b.poll()
    assert first is not None and first.startup
    time.sleep(1.2)
    again, _ = b.poll()
    assert again is not None and again.startup, "no resync was made: the test proves nothing"
    assert again.changed == frozenset(), f"a resync that changed nothing changed {sorted(map(str, again.changed))}"
