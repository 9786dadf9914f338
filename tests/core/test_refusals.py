"""ebpf/refusals: events aggregated into one line per source per interval, counted from the
kernel's counter where it tells; the log wording; the JSON fields; the rows of `refused`;
hostile records, keys and directory names decoded to None, never an exception."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from sockgate.resolve.ranges import BANNED, FORGED
from sockgate.ebpf import layout
from sockgate.ebpf.layout import Ban, Count, Event, Origin, Reason, SourceKey
from sockgate.ebpf.maps import DEFAULT_RULE, LpmKey
from sockgate.ebpf.refusals import (
    Aggregator, Clock, Overflow, Refusal, active, ban_json, ban_row, count_json, count_row, decode_event, describe,
    fields, service_of, sort_counts,
)

S = 1_000_000_000
A = ipaddress.ip_address("203.0.113.5")
B = ipaddress.ip_address("2001:db8::7")


def _ev(ts: int, addr: ipaddress.IPv4Address | ipaddress.IPv6Address = A, reason: Reason = Reason.RULE, rule: int = 1) -> Event:
    return Event(ts, addr.version, reason, rule, int(addr))


def _no_totals(service: str, key: SourceKey) -> Count | None:
    return None


def test_clock_converts_monotonic_stamps_to_utc() -> None:
    clock = Clock(wall_ns=1_700_000_000 * S, mono_ns=500 * S)
    assert clock.iso(440 * S) == "2023-11-14T22:12:20Z"
    assert clock.iso(0) is None
    assert (Clock(0, 0).iso((1 << 64) - 1) or "").startswith("2554-")  # the largest stamp a record holds


def test_one_refusal_per_source_per_interval_counted_from_events() -> None:
    agg = Aggregator(60 * S, window_start=100 * S)
    for t in (101, 102, 130):
        agg.add("ssh", _ev(t * S))
    agg.add("ssh", _ev(140 * S, B, Reason.RATE, 0))
    agg.add("web", _ev(150 * S))
    out = agg.flush(160 * S, _no_totals)
    assert out == [
        Refusal("ssh", A, 3, 101 * S, 130 * S, Reason.RULE, 1, 60 * S),
        Refusal("ssh", B, 1, 140 * S, 140 * S, Reason.RATE, None, 60 * S),
        Refusal("web", A, 1, 150 * S, 150 * S, Reason.RULE, 1, 60 * S),
    ]
    assert agg.window_start == 160 * S and agg.deadline == 220 * S
    assert agg.flush(220 * S, _no_totals) == []


def test_a_mapped_source_is_always_forged_never_of_unknown_cause() -> None:
    """``::ffff:V`` is forged by whoever sends it: recovered from the counters (no event) or
    reported with another reason by a record, its line says so, and the fail2ban filter
    ignores it (contrib/fail2ban/filter.d/sockgate.conf)."""
    m = ipaddress.ip_address("::ffff:192.0.2.44")
    agg = Aggregator(60 * S, window_start=100 * S)
    count = Count(3, 110 * S, 130 * S)
    agg.recover("dns", [(SourceKey.of(m), count)])
    agg.add("ssh", _ev(120 * S, m, Reason.RATE, 0))
    out = agg.flush(160 * S, lambda service, key: count if service == "dns" else None)
    assert [(r.service, r.reason, r.rule, r.recovered) for r in out if isinstance(r, Refusal)] == [
        ("dns", Reason.FORGED, None, False), ("ssh", Reason.FORGED, None, False)]
    assert all(describe(r).endswith("forged source)") for r in out if isinstance(r, Refusal))
    assert all(fields(r, Clock(0, 0))["reason"] == "forged" for r in out if isinstance(r, Refusal))


def test_a_mapped_counter_row_says_forged() -> None:
    m = ipaddress.ip_address("::ffff:192.0.2.44")
    row = count_row("dns", SourceKey.of(m).pack(), Count(2, S, 2 * S).pack())
    assert row is not None and count_json(row, Clock(0, 0))["forged"] is True
    plain = count_row("dns", SourceKey.of(A).pack(), Count(2, S, 2 * S).pack())
    assert plain is not None and "forged" not in count_json(plain, Clock(0, 0))


def test_a_recovered_source_banned_now_is_called_banned() -> None:
    """A source recovered from the counters that the ban tries hold now: ``banned`` (ignored
    by the fail2ban filter), never ``cause unknown`` (matched: sockgate's ban would feed
    fail2ban again); one not banned stays unknown."""
    count = Count(2, 110 * S, 130 * S)
    agg = Aggregator(60 * S, window_start=100 * S)
    agg.recover("ssh", [(SourceKey.of(A), count), (SourceKey.of(B), count)], banned=lambda key: key.address == A)
    out = [r for r in agg.flush(160 * S, lambda service, key: count) if isinstance(r, Refusal)]
    assert [(r.source, r.reason, r.recovered) for r in out] == [(A, Reason.BAN, False), (B, Reason.RULE, True)]
    assert describe(out[0]).endswith("(2 times in 60 s, banned)") and fields(out[0], Clock(0, 0))["reason"] == "ban"


def test_the_kernel_counter_gives_the_count_when_it_can_tell() -> None:
    counters = {A: Count(50, 101 * S, 159 * S)}  # first refused inside the window: all 50 in it

    def totals(service: str, key: SourceKey) -> Count | None:
        return counters.get(key.address)  # type: ignore[arg-type]

    agg = Aggregator(60 * S, window_start=100 * S)
    agg.add("ssh", _ev(101 * S))
    agg.add("ssh", _ev(130 * S))
    [first] = agg.flush(160 * S, totals)
    assert isinstance(first, Refusal) and (first.count, first.last_ns) == (50, 159 * S)
    counters[A] = Count(80, 101 * S, 200 * S)  # 30 more since the last report
    agg.add("ssh", _ev(170 * S))
    [second] = agg.flush(220 * S, totals)
    assert isinstance(second, Refusal) and second.count == 30
    counters[B] = Count(1000, 10 * S, 230 * S)  # counted before this reader began: unknown share
    agg.add("ssh", _ev(230 * S, B))
    agg.add("ssh", _ev(231 * S, B))
    [third] = agg.flush(280 * S, totals)
    assert isinstance(third, Refusal) and third.count == 2


def test_a_flood_of_sources_is_bounded() -> None:
    agg = Aggregator(60 * S, 0, memory=2)
    for i in range(5):
        agg.add("dns", _ev(S, ipaddress.ip_address(f"192.0.2.{i}")))
    out = agg.flush(60 * S, _no_totals)
    assert len(out) == 3 and out[2] == Overflow("dns", 3, 3, 60 * S)


def test_the_line_reads_like_tcp_wrappers() -> None:
    r = Refusal("ssh", A, 3, S, 2 * S, Reason.RULE, 1, 60 * S)
    assert describe(r) == "ssh: refused connect from 203.0.113.5 (3 times in 60 s, rule 2)"
    assert describe(r, "sshd.conf:4") == "ssh: refused connect from 203.0.113.5 (3 times in 60 s, rule sshd.conf:4)"
    one = Refusal("ssh", B, 1, S, S, Reason.RULE, None, 59_600_000_000)
    assert describe(one) == "ssh: refused connect from 2001:db8::7 (1 time in 60 s, default)"


def test_ban_and_forged_lists_are_named_by_reason() -> None:
    agg = Aggregator(60 * S, 0)
    agg.add("a", _ev(S, A, Reason.RULE, BANNED))
    agg.add("b", _ev(S, A, Reason.RULE, FORGED))
    agg.add("c", _ev(S, A, Reason.RULE, DEFAULT_RULE))
    texts = [describe(r) for r in agg.flush(60 * S, _no_totals) if isinstance(r, Refusal)]
    assert [t.rsplit(", ", 1)[1] for t in texts] == ["banned)", "forged source)", "default)"]


def test_json_fields() -> None:
    clock = Clock(1_700_000_000 * S, 100 * S)
    r = Refusal("ssh", A, 3, 40 * S, 99 * S, Reason.RULE, 0, 60 * S)
    assert fields(r, clock) == {"service": "ssh", "source": "203.0.113.5", "count": 3, "first_seen": "2023-11-14T22:12:20Z",
                                "last_seen": "2023-11-14T22:13:19Z", "reason": "rule", "rule": 1, "interval": 60}


def test_service_dir_names_decode_back() -> None:
    for name in ("ssh", "web-1.x", "..", "a/b", "we b\n", "x-41", ""):
        assert service_of(layout.service_dir(name, "/r").rsplit("/", 1)[1]) == name
    for hostile in ("evil\nname", ".hidden", "a b", "-x", "x" * 200, ""):
        assert service_of(hostile) is None


def test_rows_and_their_order() -> None:
    rows = [count_row("ssh", SourceKey.of(a).pack(), Count(n, S, 2 * S).pack()) for a, n in ((A, 3), (B, 40))]
    assert None not in rows
    ordered = sort_counts([r for r in rows if r is not None])
    assert [r.count.refused for r in ordered] == [40, 3]
    clock = Clock(1_700_000_000 * S, 100 * S)
    assert count_json(ordered[0], clock)["source"] == "2001:db8::7"
    assert count_row("ssh", SourceKey(0, 0).pack(), Count(1, 1, 1).pack()) is None  # the service-wide bucket key
    assert count_row("ssh", SourceKey.of(A, scope=2).pack(), Count(1, 1, 1).pack()) is None
    ban = ban_row("ssh", 4, LpmKey(4, 24, 0xC6336400).pack(), Ban(0, Origin.FAIL2BAN).pack())
    assert ban is not None and ban_json(ban, clock) == {"type": "ban", "service": "ssh", "source": "198.51.100.0/24",
                                                         "origin": "fail2ban", "expires": None}
    assert active(ban, 10**18)
    assert ban_row("ssh", 4, struct.pack("=I", 33) + bytes(4), Ban(0, Origin.MANUAL).pack()) is None


@given(st.binary(max_size=64))
def test_random_ring_records_decode_or_are_refused(raw: bytes) -> None:
    event = decode_event(raw)
    assert event is None or (event.family in (4, 6) and len(raw) >= layout.EVENT.size and str(event.address))


@given(st.binary(max_size=40), st.binary(max_size=40), st.sampled_from([4, 6]))
def test_random_map_entries_decode_or_are_refused(key: bytes, value: bytes, family: int) -> None:
    row = count_row("s", key, value)
    assert row is None or row.source.version in (4, 6)
    ban = ban_row("s", family, key, value)
    assert ban is None or ban.network.version == family


@given(st.lists(st.tuples(st.sampled_from(["ssh", "web"]), st.integers(0, 7), st.integers(0, 10**12),
                          st.sampled_from(list(Reason)), st.integers(-(2**31), 2**31 - 1)), max_size=60),
       st.integers(1, 10))
def test_every_event_is_counted_once_in_one_line_per_source(events: list[tuple[str, int, int, Reason, int]], memory: int) -> None:
    agg = Aggregator(60 * S, 0, memory=memory)
    for service, host, ts, reason, rule in events:
        agg.add(service, Event(ts, 4, reason, rule, 0xC0000200 + host))
    out = agg.flush(61 * S, _no_totals)
    named = [r for r in out if isinstance(r, Refusal)]
    assert len({(r.service, r.source) for r in named}) == len(named) <= memory
    assert sum(r.count for r in named) + sum(o.events for o in out if isinstance(o, Overflow)) == len(events)
    assert all(r.first_ns <= r.last_ns and describe(r).count("refused connect from") == 1 for r in named)


def test_no_two_services_share_a_directory_and_each_reads_back() -> None:
    from sockgate.ebpf import layout
    from sockgate.ebpf.refusals import service_of

    names = ["..", "x-2e2e", "h-" + "0" * 64, "ssh", "in.telnetd", "x-", "a" * 200, "b" * 200]
    dirs = [layout.service_dir(n, "") for n in names]
    assert len(set(dirs)) == len(names)
    for n, d in zip(names, dirs):
        base = d.rsplit("/", 1)[1]
        back = service_of(base)
        assert back == (n if len(n.encode()) <= 120 else base)
