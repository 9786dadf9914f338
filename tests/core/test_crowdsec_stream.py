"""The decision stream as state: parsing hostile answers entry by entry, ids not values, expiry,
the startup resync, and a property against a naive model."""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.agent.banbook import BanBook
from sockgate.agent.crowdfeed import CrowdsecFeed
from sockgate.bans import BannedPrefix, Origin
from sockgate.crowdsec.session import Backoff, Session
from sockgate.crowdsec.stream import (
    Batch,
    StreamError,
    StreamState,
    duration_ns,
    parse,
    prefix,
)

S = 10**9
NOW = 1_000 * S


def entry(ident: int, value: str, duration: str = "1h", scope: str = "Ip", type: str = "ban") -> dict[str, Any]:
    return {"id": ident, "value": value, "duration": duration, "scope": scope, "type": type,
            "origin": "cscli", "scenario": "test"}


def body(new: list[Any] | None = None, deleted: list[Any] | None = None) -> bytes:
    return json.dumps({"new": new, "deleted": deleted}).encode()


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


@pytest.mark.parametrize("text, ns", [
    ("3h59m58.1s", (3 * 3600 + 59 * 60 + 58) * S + S // 10),
    ("59m59.015195881s", (59 * 60 + 59) * S + 15_195_881),
    ("-4.66872791s", -4_668_727_910),
    ("15.662844ms", 15_662_844),
    ("1µs", 1_000), ("1us", 1_000), ("7ns", 7), ("0s", 0), ("0", 0), (".5s", S // 2), ("1h", 3600 * S),
    ("2562047h47m16.854775807s", 2**63 - 1), ("1h0m0s", 3600 * S), ("1m0s", 60 * S), ("+1.5h", 5400 * S),
])
def test_go_durations(text: str, ns: int) -> None:
    assert duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "1", "1d", "h", "1h 2m", "1.2.3s", "--1s", "1e3s", "９s",
                                  "2562047h47m16.854775808s", "9999999h", "9999999h1s", "9" * 80 + "s", "1s\n"])
def test_not_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        duration_ns(text)


def test_startup_answer_with_the_lapi_shapes() -> None:
    raw = (b'{"deleted":null,"new":[{"duration":"9.015198284s","id":2,"origin":"cscli","scenario":"m",'
           b'"scope":"Range","type":"ban","value":"2001:db8::/32"},{"duration":"59m59.01s","id":1,'
           b'"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"192.0.2.7"},'
           b'{"duration":"59m59s","id":3,"origin":"cscli","scenario":"m","scope":"Ip","type":"captcha",'
           b'"value":"198.51.100.1"}]}')
    state = StreamState()
    report = state.apply(parse(raw, NOW, startup=True))
    assert report.added == 2 and report.rejected == 0
    assert report.ignored == (("type 'captcha'", 1),)
    assert state.bans(NOW) == {
        net("2001:db8::/32"): BannedPrefix(net("2001:db8::/32"), NOW + 9_015_198_284, Origin.CROWDSEC),
        net("192.0.2.7/32"): BannedPrefix(net("192.0.2.7/32"), NOW + (59 * 60 + 59) * S + 10**7, Origin.CROWDSEC),
    }
    assert report.changed == {net("2001:db8::/32"), net("192.0.2.7/32")}


def test_scopes_are_case_insensitive_and_others_ignored() -> None:
    batch = parse(body([entry(1, "192.0.2.1", scope="ip"), entry(2, "192.0.2.0/24", scope="RANGE"),
                        entry(3, "FR", scope="Country"), entry(4, "192.0.2.9", type="Ban")]), NOW, startup=True)
    assert [d.network for d in batch.new] == [net("192.0.2.1/32"), net("192.0.2.0/24"), net("192.0.2.9/32")]
    assert dict(batch.tally.ignored) == {"scope 'Country'": 1}


@pytest.mark.parametrize("scope, value, expected", [
    ("ip", "::ffff:192.0.2.1", "192.0.2.1/32"),
    ("range", "::ffff:192.0.2.0/120", "192.0.2.0/24"),
    ("range", "192.0.2.77/24", "192.0.2.0/24"),
    ("ip", "2001:db8::1", "2001:db8::1/128"),
    ("range", "0.0.0.0/0", "0.0.0.0/0"),
])
def test_prefixes(scope: str, value: str, expected: str) -> None:
    assert prefix(scope, value) == net(expected)


@pytest.mark.parametrize("scope, value", [
    ("ip", "192.0.2.0/24"), ("ip", "fe80::1%eth0"), ("ip", " 192.0.2.1"), ("ip", "192.0.2.01"),
    ("ip", "example.com"), ("range", "192.0.2.0"), ("range", "192.0.2.0/33"), ("range", "192.0.2.0/+8"),
    ("range", "192.0.2.0/255.255.255.0"), ("ip", "1" * 100),
])
def test_not_prefixes(scope: str, value: str) -> None:
    with pytest.raises(ValueError):
        prefix(scope, value)


def test_malformed_entries_are_rejected_one_by_one() -> None:
    bad: list[Any] = [
        "192.0.2.1", None, [], {"id": 1}, entry(0, "192.0.2.1"), entry(True, "192.0.2.1"),  # type: ignore[arg-type]
        entry(2, "192.0.2.300"), entry(3, "192.0.2.3", duration="forever"), entry(4, "192.0.2.4", duration=5),  # type: ignore[arg-type]
        {**entry(5, "192.0.2.5"), "value": 7}, entry(2**63, "192.0.2.6"), entry(6, "\x1b[31m"),
    ]
    good = entry(100, "198.51.100.1")
    batch = parse(body(bad + [good]), NOW, startup=True)
    assert [d.id for d in batch.new] == [100]
    assert batch.tally.rejected == len(bad)
    assert len(batch.tally.problems) == len(bad)
    assert all(p.isprintable() for p in batch.tally.problems)
    assert "192.0.2.300" in batch.tally.problems[6]


@pytest.mark.parametrize("raw", [b"", b"nope", b"[]", b'"x"', b'{"new": {}}', b'{"deleted": 3}',
                                 b"[" * 100_000 + b"]" * 100_000,
                                 b'{"new": [' + b'{"aaaaaaaaaaaaaaaa": ' * 100_000 + b"1" + b"}" * 100_000 + b"]}", b'{"new": [' + b"9" * 5000 + b"]}",
                                 b"\xff\xfe"])
def test_an_answer_that_is_no_stream_changes_nothing(raw: bytes) -> None:
    session = Session()
    session.received(body([entry(1, "192.0.2.1")]), NOW, startup=True)
    with pytest.raises(StreamError):
        session.received(raw, NOW + S, startup=False)
    assert set(session.state.bans(NOW + S)) == {net("192.0.2.1/32")}
    assert session.request() is True and not session.status().up


def test_an_answer_of_too_many_json_values_is_refused_before_decoding() -> None:
    for bomb in (b"{}," * 5000, b"[]," * 5000, b'"",' * 5000, b"1," * 5000):
        with pytest.raises(StreamError, match="decisions are not that small"):
            parse(b'{"new": [' + bomb + b"{}]}", NOW, startup=True)
    # real answers of any size pass, even of short entries
    short = [{"id": i, "type": "ban", "scope": "Ip", "value": "2001:db8::1", "duration": "1s"} for i in range(1, 2000)]
    assert len(parse(body(short), NOW, startup=True).new) == 1999


def test_the_entries_read_from_one_answer_are_bounded() -> None:
    batch = parse(body([entry(i, f"10.0.{i // 256}.{i % 256}") for i in range(1, 51)],
                       [entry(i, "10.9.9.9") for i in range(100, 120)]), NOW, startup=True, max_entries=30)
    assert len(batch.new) == 30 and batch.deleted == ()
    assert batch.tally.rejected == 40 and "only 30 read" in batch.tally.problems[0]


def test_capacity_is_bounded_and_counted() -> None:
    state = StreamState(capacity=3)
    report = state.apply(parse(body([entry(i, f"192.0.2.{i}") for i in range(1, 6)]), NOW, startup=True))
    assert len(state) == 3 and report.over_capacity == 2 and report.added == 3
    # a decision already held is updated, not refused
    report = state.apply(parse(body([entry(1, "192.0.2.1", "2h")]), NOW, startup=False))
    assert report.over_capacity == 0 and state.bans(NOW)[net("192.0.2.1/32")].expires_ns == NOW + 7200 * S


def test_decisions_are_held_by_id_not_by_value() -> None:
    state = StreamState()
    state.apply(parse(body([entry(1, "192.0.2.1", "1h"), entry(2, "192.0.2.1", "4h")]), NOW, startup=True))
    assert state.bans(NOW)[net("192.0.2.1/32")].expires_ns == NOW + 4 * 3600 * S
    report = state.apply(parse(body(deleted=[entry(2, "192.0.2.1", "-1s")]), NOW, startup=False))
    assert report.deleted == 1 and report.changed == {net("192.0.2.1/32")}
    assert state.bans(NOW)[net("192.0.2.1/32")].expires_ns == NOW + 3600 * S  # the 1 h ban still holds
    report = state.apply(parse(body(deleted=[entry(1, "192.0.2.1", "-1s")] * 2 + [entry(9, "192.0.2.9")]), NOW, startup=False))
    assert report.deleted == 1 and report.unknown_deletions == 2 and state.bans(NOW) == {}


def test_a_deletion_naming_another_network_is_rejected() -> None:
    state = StreamState()
    state.apply(parse(body([entry(1, "192.0.2.1")]), NOW, startup=True))
    report = state.apply(parse(body(deleted=[entry(1, "203.0.113.1")]), NOW, startup=False))
    assert report.deleted == 0 and report.rejected == 1 and "held for 192.0.2.1/32" in report.problems[0]
    assert net("192.0.2.1/32") in state.bans(NOW)


def test_expiry() -> None:
    state = StreamState()
    state.apply(parse(body([entry(1, "192.0.2.1", "10s"), entry(2, "2001:db8::/64", "1m", "Range"),
                            entry(3, "192.0.2.3", "-1s")]), NOW, startup=True))
    assert len(state) == 2
    assert state.expire(NOW + 9 * S) == frozenset()
    assert state.expire(NOW + 10 * S) == {net("192.0.2.1/32")}
    assert set(state.bans(NOW + 10 * S)) == {net("2001:db8::/64")}
    assert state.ban(net("2001:db8::/64"), NOW + 60 * S) is None  # ends at its expiry even unexpired


def test_startup_replaces_everything_held() -> None:
    state = StreamState()
    state.apply(parse(body([entry(1, "192.0.2.1"), entry(2, "192.0.2.2")]), NOW, startup=True))
    report = state.apply(parse(body([entry(2, "192.0.2.2"), entry(3, "192.0.2.3")]), NOW, startup=True))
    assert set(state.bans(NOW)) == {net("192.0.2.2/32"), net("192.0.2.3/32")}
    assert report.changed == {net("192.0.2.1/32"), net("192.0.2.3/32")}


def test_session_resyncs_after_a_failure_and_backs_off() -> None:
    session = Session(interval_s=2, backoff=Backoff(1, 8))
    assert session.request() is True
    session.received(body([entry(1, "192.0.2.1")]), NOW, startup=True)
    assert session.request() is False and session.delay(0.5) == 2
    for n, step in enumerate([1, 2, 4, 8, 8], start=1):
        session.failed(NOW + n * S, "connection refused\x1b[2J")
        assert session.request() is True
        assert session.delay(0.0) == step / 2 and session.delay(1.0) == step
    status = session.status()
    assert not status.up and status.failures == 5 and status.since_ns == NOW + S
    assert status.last_error is not None and status.last_error.isprintable()
    assert set(session.state.bans(NOW + 10 * S)) == {net("192.0.2.1/32")}  # kept while down
    session.received(body([entry(2, "192.0.2.2")]), NOW + 20 * S, startup=True)
    assert set(session.state.bans(NOW + 20 * S)) == {net("192.0.2.2/32")}
    assert session.status().up and session.delay(0.9) == 2


# -- property: any sequence of answers gives what a naive model gives ----------------------

_VALUES = [("Ip", "192.0.2.1"), ("Ip", "192.0.2.2"), ("Range", "192.0.2.0/24"), ("Ip", "2001:db8::1"),
           ("Range", "2001:db8::/48"), ("Ip", "::ffff:192.0.2.1"), ("Ip", "not-an-ip"), ("Country", "FR")]
_entries = st.builds(
    lambda i, sv, d, t: entry(i, sv[1], d, sv[0], t),
    st.integers(1, 12), st.sampled_from(_VALUES),
    st.sampled_from(["1s", "5s", "30s", "1h", "-1s", "0s", "bogus"]), st.sampled_from(["ban", "ban", "captcha"]))
_answers = st.lists(st.tuples(st.booleans(), st.lists(_entries, max_size=6), st.lists(_entries, max_size=4),
                              st.integers(0, 20)), max_size=12)


def _naive(ops: list[tuple[bool, list[Any], list[Any], int]]) -> tuple[dict[Any, int], int]:
    held: dict[int, tuple[Any, int]] = {}
    now = NOW
    for startup, new, deleted, step in ops:
        now += step * S
        held = {i: v for i, v in held.items() if v[1] > now}
        if startup:
            held = {}
        for e in new:
            try:
                n = prefix(e["scope"].lower(), e["value"]) if e["scope"].lower() in ("ip", "range") else None
                left = duration_ns(e["duration"])
            except ValueError:
                continue
            if n is not None and e["type"] == "ban" and left > 0:
                held[e["id"]] = (n, now + left)
        for e in deleted:
            try:
                n = prefix(e["scope"].lower(), e["value"]) if e["scope"].lower() in ("ip", "range") else None
            except ValueError:
                continue
            if n is not None and e["type"] == "ban" and e["id"] in held and held[e["id"]][0] == n:
                del held[e["id"]]
    out: dict[Any, int] = {}
    for n, end in held.values():
        if end > now:
            out[n] = max(out.get(n, 0), end)
    return out, now


@settings(max_examples=200, deadline=None)
@given(_answers)
def test_any_sequence_of_answers_matches_a_naive_model(ops: list[tuple[bool, list[Any], list[Any], int]]) -> None:
    state = StreamState()
    now = NOW
    for startup, new, deleted, step in ops:
        now += step * S
        state.expire(now)
        state.apply(parse(body(new, deleted), now, startup=startup))
    expected, end = _naive(ops)
    assert end == now
    assert {n: b.expires_ns for n, b in state.bans(now).items()} == expected
    assert all(b.origin is Origin.CROWDSEC for b in state.bans(now).values())


@settings(max_examples=100, deadline=None)
@given(_answers)
def test_reported_changes_are_exactly_the_networks_whose_ban_changed(ops: list[tuple[bool, list[Any], list[Any], int]]) -> None:
    state = StreamState()
    now = NOW
    for startup, new, deleted, step in ops:
        now += step * S
        before = {n: b.expires_ns for n, b in state.bans(now).items()}
        changed = set(state.expire(now))
        changed |= state.apply(parse(body(new, deleted), now, startup=startup)).changed
        after = {n: b.expires_ns for n, b in state.bans(now).items()}
        assert {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)} <= changed


def test_batch_is_a_value() -> None:
    assert isinstance(parse(body(), NOW, startup=False), Batch)


@pytest.mark.parametrize("scope, value, why", [("Range", "0.0.0.0/1", "too wide"), ("Range", "::ffff:0:0/96", "too wide"),
                                               ("Range", "2000::/3", "too wide"), ("Ip", "127.0.0.1", "loopback"),
                                               ("Range", "127.0.0.0/8", "loopback"), ("Ip", "::1", "loopback")])
def test_a_decision_too_wide_or_on_loopback_is_rejected(scope: str, value: str, why: str) -> None:
    got = parse(body([{"id": 1, "type": "ban", "scope": scope, "value": value, "duration": "1h"},
                      {"id": 2, "type": "ban", "scope": "Ip", "value": "192.0.2.9", "duration": "1h"}]), NOW, startup=True)
    assert [str(d.network) for d in got.new] == ["192.0.2.9/32"]
    assert got.tally.rejected == 1 and why in got.tally.problems[0]


def test_session_resyncs_in_full_every_resync_interval() -> None:
    session = Session(interval_s=2, resync_s=60)
    assert session.request(NOW) is True
    session.received(body([entry(1, "192.0.2.1")]), NOW, startup=True)
    assert session.request(NOW + 59 * S) is False and session.request() is False
    session.received(body([entry(2, "192.0.2.2")], deleted=[]), NOW + 30 * S, startup=False)  # a delta
    assert session.request(NOW + 59 * S) is False  # deltas do not move the resync
    assert session.request(NOW + 60 * S) is True
    session.received(body([entry(2, "192.0.2.2")]), NOW + 61 * S, startup=True)
    assert set(session.state.bans(NOW + 61 * S)) == {net("192.0.2.2/32")}  # the missed deletion of 1
    assert session.request(NOW + 120 * S) is False and session.request(NOW + 121 * S) is True
    with pytest.raises(ValueError):
        Session(resync_s=0)


def test_a_periodic_resync_lifting_most_bans_is_asked_again_before_it_applies() -> None:
    """A LAPI answering its full list from an empty or stale database for a moment must not lift
    every ban once an hour: the periodic answer lifting over half (and at least MASS_LIFT) is
    held back, the whole list asked again at once, and that second answer applied."""
    many = [entry(i, f"192.0.2.{i}") for i in range(1, 201)]
    session = Session(interval_s=2, resync_s=60)
    session.received(body(many), NOW, startup=True)
    assert len(session.state) == 200
    assert session.request(NOW + 60 * S) is True
    report = session.received(body([]), NOW + 60 * S, startup=True)  # periodic, empty
    assert not report.startup and report.changed == frozenset() and len(session.state) == 200
    assert session.doubted is not None and "lift 200 of 200" in session.doubted
    assert session.request(NOW + 62 * S) is True  # asked again at the next pull
    report = session.received(body([]), NOW + 62 * S, startup=True)
    assert report.startup and len(session.state) == 0 and session.doubted is None  # confirmed: applied
    # a periodic resync lifting fewer than MASS_LIFT, or half or less, applies at once
    session.received(body(many), NOW + 70 * S, startup=True)
    assert session.request(NOW + 130 * S) is True
    report = session.received(body(many[:100]), NOW + 130 * S, startup=True)
    assert report.startup and len(session.state) == 100
    # after a failure the full answer is the truth at once, whatever it lifts
    session.failed(NOW + 131 * S, "timeout")
    assert session.received(body([]), NOW + 133 * S, startup=True).startup and len(session.state) == 0


# -- a resync that changed nothing changes nothing -------------------------------------------


def _one_decision(duration: str) -> bytes:
    return json.dumps({"new": [{"id": 1, "value": "192.0.2.1", "duration": duration, "scope": "Ip", "type": "ban",
                                "origin": "cscli", "scenario": "t"}], "deleted": None}).encode()


def test_a_resync_that_changes_nothing_reports_nothing_changed() -> None:
    session = Session(interval_s=10, resync_s=3600)
    session.received(_one_decision("4h"), NOW, startup=True)
    assert session.request(NOW + 3600 * S) is True
    # an hour later the LAPI says 3h are left; its answer took 37 ms to arrive
    report = session.received(_one_decision("3h0m0s"), NOW + 3600 * S + 37_000_000, startup=True)
    assert report.changed == frozenset(), sorted(map(str, report.changed))


def test_a_resync_that_changes_nothing_leaves_the_book_as_it_was() -> None:
    """``banning._on_crowdsec`` runs for every startup report (``report.startup``) and applies
    the book unless ``book == self.bans``. ``CrowdsecFeed.book`` stamps every entry with the
    time of the call (``added_ns=now_ns``), so the books never compare equal: even with
    identical decisions, every resync re-applies (classic services recompiled and swapped,
    the state file saved)."""
    session = Session(interval_s=10, resync_s=3600)
    feed = CrowdsecFeed(None, session)  # type: ignore[arg-type]  # no pull is made here
    try:
        report = session.received(_one_decision("4h"), NOW, startup=True)
        first, _ = feed.book(BanBook(), report, NOW)
        report = session.received(_one_decision("4h"), NOW, startup=True)  # the very same answer, same instant
        again, new = feed.book(first, report, NOW + 3600 * S)
        assert again == first and new == []
    finally:
        os.close(feed._r)
        os.close(feed._w)
