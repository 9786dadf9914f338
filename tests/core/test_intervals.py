"""The shared interval arithmetic (policy/intervals.py), checked against Python sets on a
small universe, and a match's addresses checked against the decision engine."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.decide import matches
from sockgate.peers import Peer
from sockgate.policy.intervals import (
    SPACE,
    Ranges,
    cidrs,
    difference,
    intersection,
    match_ranges,
    net_range,
    to_address,
    union,
)
from sockgate.policy.ir import Action, AddrMatch, Except, IPAddress, Match, MatchAll, MatchNone, Policy, Rule, Service
from sockgate.policy.source import Span
from support.export_policies import addresses, matches as match_strategy

raw = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 12)).map(lambda t: (t[0], t[0] + t[1])), max_size=6)


def points(rs: Ranges) -> set[int]:
    return {n for lo, hi in rs for n in range(lo, hi)}


def canonical(rs: Ranges) -> bool:
    return all(lo < hi for lo, hi in rs) and all(a[1] < b[0] for a, b in zip(rs, rs[1:]))


@settings(max_examples=300, deadline=None)
@given(raw, raw)
def test_union_difference_intersection_are_the_set_operations(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    ua, ub = union(a), union(b)
    assert canonical(ua) and points(ua) == points(tuple(a))
    for got, want in ((difference(ua, ub), points(ua) - points(ub)), (intersection(ua, ub), points(ua) & points(ub))):
        assert canonical(got) and points(got) == want


networks = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(lambda t: ipaddress.IPv4Network(t, strict=False)),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(lambda t: ipaddress.IPv6Network(t, strict=False)),
)


@given(networks)
def test_net_range_is_the_network_address_and_num_addresses(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    # the reference: ipaddress's own (cached, slower) properties
    assert net_range(net) == (int(net.network_address), int(net.broadcast_address) + 1)
    assert net_range(net)[1] - net_range(net)[0] == net.num_addresses


def test_net_range_cidrs_and_addresses() -> None:
    net = ipaddress.ip_network("192.0.2.0/24")
    assert net_range(net) == (0xC0000200, 0xC0000300)
    assert cidrs(net_range(net), 4) == [net]
    assert [str(n) for n in cidrs((1, 7), 4)] == ["0.0.0.1/32", "0.0.0.2/31", "0.0.0.4/31", "0.0.0.6/32"]
    assert cidrs((0, SPACE[6]), 6) == [ipaddress.ip_network("::/0")]
    assert to_address(1, 6) == ipaddress.ip_address("::1") and to_address(1, 4) == ipaddress.ip_address("0.0.0.1")


def test_match_ranges_of_the_simple_matches() -> None:
    ten = AddrMatch((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")))
    assert match_ranges(MatchAll(), 6) == ((0, SPACE[6]),)
    assert match_ranges(MatchNone(), 4) == ()
    assert match_ranges(Except(MatchAll(), ten), 4) == ((0, 10 << 24), (11 << 24, SPACE[4]))
    assert match_ranges(ten, 6) == ((0x20010DB8 << 96, 0x20010DB9 << 96),)


@settings(max_examples=150, deadline=None)
@given(match_strategy())
def test_match_ranges_hold_exactly_for_the_addresses_the_engine_matches(m: Match) -> None:
    ranges = {v: match_ranges(m, v) for v in (4, 6)}
    assert all(canonical(r) for r in ranges.values())
    for addr in addresses_of(m):
        inside = any(lo <= int(addr) < hi for lo, hi in ranges[addr.version])
        assert inside == matches(m, Peer(address=addr)), str(addr)


def addresses_of(m: Match) -> list[IPAddress]:
    """The probe addresses and the edges of every network ``m`` names."""
    return addresses(Policy(services=(Service("s", (Rule(Action.ALLOW, m, Span("t", 1, 1), "t"),), Action.DENY),)))
