"""A set file's networks as integers: equal to (and hashed like) the tuple of the same
networks, and every integer shortcut — unions, membership, the digest text, the cover —
agrees with what the tuple gives."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.decide import matches
from sockgate.peers import Peer
from sockgate.policy.coverage import cover
from sockgate.policy.intervals import match_ranges, net_range, union
from sockgate.policy.ir import AddrMatch, IPNetwork, _content
from sockgate.policy.netlist import NetList, key_of, net_of


@st.composite
def networks(draw: st.DrawFn) -> IPNetwork:
    if draw(st.booleans()):
        plen = draw(st.integers(0, 32))
        value = draw(st.integers(0, (1 << 32) - 1)) >> (32 - plen) << (32 - plen)
        return ipaddress.IPv4Network((value, plen))
    plen = draw(st.integers(0, 128))
    value = draw(st.sampled_from([0, (1 << 128) - 1, 0x20010DB8 << 96, draw(st.integers(0, (1 << 128) - 1))]))
    return ipaddress.IPv6Network((value >> (128 - plen) << (128 - plen), plen))


net_lists = st.lists(networks(), max_size=40)


@settings(max_examples=300, deadline=None)
@given(net_lists)
def test_a_netlist_is_the_tuple_of_its_distinct_networks(nets: list[IPNetwork]) -> None:
    distinct = tuple(dict.fromkeys(nets))
    got = NetList.of(nets)
    assert got == distinct and distinct == got and list(got) == list(distinct) and len(got) == len(distinct)
    assert hash(got) == hash(distinct) and got == NetList(got.keys)
    assert [got[i] for i in range(len(got))] == list(distinct) and got[1:3] == distinct[1:3]
    assert all(net_of(key_of(n)) == n for n in nets)


@settings(max_examples=300, deadline=None)
@given(net_lists, st.lists(st.integers(0, (1 << 128) - 1), max_size=10))
def test_unions_membership_digest_and_cover_agree_with_the_tuple(nets: list[IPNetwork], probes: list[int]) -> None:
    fast, slow = AddrMatch(NetList.of(nets), "@s"), AddrMatch(tuple(dict.fromkeys(nets)), "@s")
    for version in (4, 6):
        assert match_ranges(fast, version) == match_ranges(slow, version) == union(
            net_range(n) for n in nets if n.version == version)
    for p in probes + [int(n.network_address) for n in nets] + [int(n.broadcast_address) + 1 for n in nets]:
        for addr in (ipaddress.IPv4Address(p & 0xFFFFFFFF), ipaddress.IPv6Address(p % (1 << 128))):
            assert matches(fast, Peer(address=addr)) == matches(slow, Peer(address=addr))
    texts: tuple[list[str], list[str]] = ([], [])
    _content(texts[0], fast)
    _content(texts[1], slow)
    assert texts[0] == texts[1]
    assert cover(fast) == cover(slow)
