"""The proxy's admission of a client: the decision, limits and bans (``Admission``), and how
the log records name the client and the rule that decided (TCP and UDP alike)."""

from __future__ import annotations

import ipaddress

from sockgate.peers import Peer
from sockgate.policy.ir import Action, MatchAll, Rule, Service
from sockgate.policy.parser import parse_policy
from sockgate.policy.source import Span
from sockgate.proxy.admission import Admission, Admitted, Refused, peer_label, rule_label


def test_peer_label_ipv4_and_ipv6_in_brackets() -> None:
    assert peer_label(Peer.parse("192.0.2.7", port=5353)) == "192.0.2.7:5353"
    assert peer_label(Peer.parse("2001:db8::1", port=22)) == "[2001:db8::1]:22"
    assert peer_label(Peer.parse("::ffff:192.0.2.7", port=22)) == "192.0.2.7:22"  # a dual-stack socket's IPv4 client
    assert peer_label(Peer.parse("2001:db8::1")) == "[2001:db8::1]"


def test_peer_label_with_a_name_as_libwrap_prints_it() -> None:
    assert peer_label(Peer.parse("192.0.2.7", port=80, name="a.example")) == "a.example[192.0.2.7:80]"
    assert peer_label(Peer.parse("2001:db8::1", port=80, name="b.example", name_verified=False)) == (
        "b.example(unverified)[[2001:db8::1]:80]"
    )


def test_a_forged_peer_is_shown_as_its_header_wrote_it() -> None:
    assert peer_label(Peer.parse("::ffff:127.0.0.1", port=53, header=6)) == "[::ffff:127.0.0.1]:53"


def test_a_unix_peer_is_its_credentials() -> None:
    assert peer_label(Peer(uid=1000, gid=1000, pid=42, exe="/usr/bin/ssh")) == "uid=1000 gid=1000 pid=42 exe=/usr/bin/ssh"
    assert peer_label(Peer()) == "unknown"


def test_rule_label() -> None:
    rule = Rule(Action.ALLOW, MatchAll(), Span("/etc/sockgate/p.conf", 12, 3), "allow all")
    assert rule_label(rule) == "/etc/sockgate/p.conf:12"
    assert rule_label(None) == "default"
    assert rule_label("limit") == "limit"


# -- Admission: the decision, then the limits and bans (sans-IO: the clock is passed in) ---------

A, B = ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("192.0.2.8")


def _service(body: str) -> Service:
    return parse_policy(f"service web {{\n{body}\n}}\n", "p.conf").services[0]


def test_a_denied_client_takes_no_limit() -> None:
    adm = Admission(_service(" deny 192.0.2.7\n allow all limit concurrent 1\n"))
    refused = adm.admit(Peer(address=A), 0.0)
    assert isinstance(refused, Refused) and refused.rule == "p.conf:2" and not refused.ban_started
    assert isinstance(adm.admit(Peer(address=B), 0.0), Admitted)  # the one slot was still free


def test_the_service_and_the_rule_limits_are_taken_together() -> None:
    adm = Admission(_service(" allow 192.0.2.7 limit concurrent 1\n allow all\n limit concurrent 2\n"))
    first = adm.admit(Peer(address=A), 0.0)
    assert isinstance(first, Admitted) and len(first.limiters) == 2
    refused = adm.admit(Peer(address=A), 0.0)  # the service has room, the rule has none ...
    assert isinstance(refused, Refused) and refused.rule == "limit" and "1 connections" in refused.reason
    assert isinstance(adm.admit(Peer(address=B), 0.0), Admitted)  # ... and gave back what it took
    assert isinstance(adm.admit(Peer(address=B), 0.0), Refused)  # the service's 2 are taken now
    Admission.release(first)
    assert isinstance(adm.admit(Peer(address=A), 0.0), Admitted)


def test_a_ban_starts_on_the_per_source_rate_only() -> None:
    adm = Admission(_service(" allow all\n limit rate 1/minute per source ban 10m\n limit rate 5/minute\n"))
    assert isinstance(adm.admit(Peer(address=A), 0.0), Admitted)
    banned = adm.admit(Peer(address=A), 1.0)
    assert isinstance(banned, Refused) and banned.ban_started and banned.key == A
    assert adm.bans(2.0) == [A] and adm.next_expiry() == 601.0
    again = adm.admit(Peer(address=A), 2.0)
    assert isinstance(again, Refused) and not again.ban_started and "banned" in again.reason
    for i in range(4):  # the service's 5 a minute: A's first, then these
        assert isinstance(adm.admit(Peer(address=ipaddress.ip_address(f"198.51.100.{i}")), 3.0), Admitted)
    total = adm.admit(Peer(address=B), 3.0)  # over the service's rate: refused, nobody banned
    assert isinstance(total, Refused) and not total.ban_started and adm.bans(3.0) == [A]
    assert adm.expire(700.0) == [A] and adm.bans(700.0) == [] and adm.next_expiry() is None


def test_a_unix_peer_is_limited_by_its_uid() -> None:
    adm = Admission(_service(" allow all limit concurrent 1 per source\n"))
    first = adm.admit(Peer(uid=1000, gid=1000), 0.0)
    assert isinstance(first, Admitted) and first.key == ("uid", 1000)
    assert isinstance(adm.admit(Peer(uid=1000, gid=5), 0.0), Refused)
    assert isinstance(adm.admit(Peer(uid=1001, gid=1000), 0.0), Admitted)


def test_an_ipv6_source_is_its_64() -> None:
    adm = Admission(_service(" allow all limit concurrent 1 per source\n"))
    assert isinstance(adm.admit(Peer.parse("2001:db8::1"), 0.0), Admitted)
    assert isinstance(adm.admit(Peer.parse("2001:db8::ffff:2"), 0.0), Refused)


def test_limiter_state_is_kept_across_a_reload_where_limits_are_equal() -> None:
    old = Admission(_service(" allow 192.0.2.0/24 limit concurrent 1 per source\n allow all limit concurrent 1\n"))
    held = old.admit(Peer(address=A), 0.0)
    assert isinstance(held, Admitted)
    new = Admission(_service(" deny 203.0.113.1\n allow 192.0.2.0/24 limit concurrent 1 per source\n allow all limit concurrent 5\n"), old)
    assert new.limiters[new.decide(Peer(address=A)).rule] is held.limiters[0]  # same match, same limits: kept
    assert isinstance(new.admit(Peer(address=A), 1.0), Refused)  # A's connection still counts
    Admission.release(held)  # the old connection ends, after the reload
    assert isinstance(new.admit(Peer(address=A), 2.0), Admitted)
    other = [lim for r, lim in new.limiters.items() if r is not None and r.limits is not None and r.limits.concurrent_total == 5]
    assert other and other[0] not in old.limiters.values()  # changed limits: a fresh limiter


def test_the_decision_names_the_rule_as_written_and_a_cut_short_lookup_fails_closed() -> None:
    adm = Admission(_service(" deny host .evil.example\n allow 192.0.2.0/24\n"))
    d = adm.decide(Peer(address=A))
    assert d.allowed and d.rule is not None and d.rule.span.line == 3
    assert not adm.decide(Peer(address=A, name="x.evil.example")).allowed
    assert not adm.unnamed(Peer(address=A), "late").allowed  # some name would be denied


def test_a_remembered_decision_still_takes_the_limits_and_meets_the_bans() -> None:
    adm = Admission(_service(" deny 192.0.2.8\n allow all limit concurrent 1 per source\n limit rate 1/minute per source ban 10m\n"))
    first = adm.admit(Peer(address=A), 0.0, memo="192.0.2.7")
    assert isinstance(first, Admitted) and first.decision == adm.decide(Peer(address=A))
    again = adm.admit(Peer(address=A), 1.0, memo="192.0.2.7")  # decided from the memo, limited all the same
    assert isinstance(again, Refused) and again.rule == "limit"
    Admission.release(first)
    banned = adm.admit(Peer(address=A), 2.0, memo="192.0.2.7")
    assert isinstance(banned, Refused) and "banned" in banned.reason
    denied = adm.admit(Peer(address=B), 0.0, memo="192.0.2.8")
    assert isinstance(denied, Refused) and denied.rule == "p.conf:2"
    assert isinstance(adm.admit(Peer(address=B), 1.0, memo="192.0.2.8"), Refused)


def test_a_reload_forgets_the_remembered_decisions() -> None:
    old = Admission(_service(" allow all\n"))
    assert isinstance(old.admit(Peer(address=A), 0.0, memo="192.0.2.7"), Admitted)
    new = Admission(_service(" deny 192.0.2.7\n allow all\n"), old)
    refused = new.admit(Peer(address=A), 1.0, memo="192.0.2.7")
    assert isinstance(refused, Refused) and refused.rule == "p.conf:2"


def test_without_limits_the_remembered_outcome_equals_a_fresh_one() -> None:
    adm = Admission(_service(" deny 192.0.2.8\n allow all\n"))
    for peer, memo in ((Peer(address=A), "192.0.2.7"), (Peer(address=B), "192.0.2.8")):
        fresh = adm.admit(peer, 0.0)
        assert adm.admit(peer, 0.0, memo) == fresh and adm.admit(peer, 1.0, memo) == fresh


def test_only_an_admission_with_nothing_to_count_is_remembered_whole() -> None:
    """``remembered`` (the lane's accept shortcut, no peer built) answers only where ``admit``
    would return the remembered outcome itself: allowed with no limiter to take."""
    plain = Admission(_service(" deny 192.0.2.8\n allow all\n"))
    assert plain.remembered("192.0.2.7") is None  # not decided yet
    first = plain.admit(Peer(address=A), 0.0, memo="192.0.2.7")
    assert plain.remembered("192.0.2.7") is first
    assert isinstance(plain.admit(Peer(address=B), 0.0, memo="192.0.2.8"), Refused)
    assert plain.remembered("192.0.2.8") is None  # denied: the refusal path logs it
    limited = Admission(_service(" allow all limit concurrent 1 per source\n"))
    assert isinstance(limited.admit(Peer(address=A), 0.0, memo="192.0.2.7"), Admitted)
    assert limited.remembered("192.0.2.7") is None  # limits to take: admit every time
    assert Admission(_service(" deny 192.0.2.7\n allow all\n"), plain).remembered("192.0.2.7") is None  # a reload forgets
