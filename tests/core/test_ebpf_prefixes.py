"""Intervals → CIDR prefixes: exactly the interval, aligned, fewest blocks; and a service's
trie entries decide like the engine (a model of the program: forged check, longest-prefix
lookup over the entries, default on a miss)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.bpfcases import _edges, addresses, packets, services

from sockgate.bpf import Packet
from sockgate.resolve import resolve_service
from sockgate.resolve.ranges import MAPPED, Table, first_match_tables
from sockgate.decide import decide_service
from sockgate.ebpf import EbpfProgram, LpmKey, Verdict, compile_service
from sockgate.ebpf.prefixes import entries, split
from sockgate.policy.ir import Action, Service


@st.composite
def intervals(draw: st.DrawFn) -> tuple[int, int, int]:
    bits = draw(st.sampled_from([8, 32, 128]))
    a, b = sorted(draw(st.lists(st.integers(0, 1 << bits), min_size=2, max_size=2)))
    return a, b, bits


@settings(max_examples=400, deadline=None)
@given(intervals())
def test_split_covers_exactly_the_interval_with_aligned_blocks(iv: tuple[int, int, int]) -> None:
    lo, hi, bits = iv
    blocks = split(lo, hi, bits)
    at = lo
    for net, plen in blocks:
        size = 1 << (bits - plen)
        assert net == at and net % size == 0  # contiguous, in order, aligned
        at += size
    assert at == hi
    assert len(blocks) <= max(1, 2 * (bits - 1))
    # fewest: no two neighbours of equal size could merge into one aligned block
    for (n1, p1), (n2, p2) in zip(blocks, blocks[1:]):
        assert not (p1 == p2 and n1 % (1 << (bits - p1 + 1)) == 0)


@pytest.mark.parametrize("lo, hi, want", [
    (0, 1 << 32, [(0, 0)]),
    (10, 11, [(10, 32)]),
    (0x0A000000, 0x0A000100, [(0x0A000000, 24)]),
    (1, 8, [(1, 32), (2, 31), (4, 30)]),
])
def test_split_examples(lo: int, hi: int, want: list[tuple[int, int]]) -> None:
    assert split(lo, hi, 32) == want


def test_split_refuses_a_reversed_interval() -> None:
    with pytest.raises(ValueError):
        split(5, 4, 32)


def model(prog: EbpfProgram, packet: Packet) -> Action:
    """What the generated program does, over its map entries."""
    peer = packet.peer()
    if peer is None or peer.address is None:
        return prog.other
    a = ipaddress.ip_address(peer.address)
    if peer.header == 6:
        a6 = ipaddress.IPv6Address(int(a) | (0xFFFF << 32)) if a.version == 4 else a
        if a6 in MAPPED:
            return Action.DENY
        a = a6
    family = peer.header or 4
    entries = next(m.entries for m in prog.maps if m.spec.name == f"sg_lpm{family}")
    hits = [v for k, v in entries if k.addr <= int(a) < k.addr + (1 << (k.network.max_prefixlen - k.prefixlen))]
    assert len(hits) <= 1, "prefixes overlap"
    return hits[0].action if hits else prog.default


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services(), st.lists(addresses, max_size=6))
def test_entries_decide_like_the_engine(svc: Service, extra: list[object]) -> None:
    prog = compile_service(svc)
    for a in _edges(svc, []) + extra:
        for packet in packets(a):  # type: ignore[arg-type]
            peer = packet.peer()
            assert peer is not None
            assert model(prog, packet) is decide_service(svc, peer).action, f"{a} {peer}"


def test_lpm_key_packs_prefixlen_then_network_order_bytes() -> None:
    k = LpmKey(4, 24, int(ipaddress.IPv4Address("10.1.2.0")))
    assert k.pack()[4:] == bytes([10, 1, 2, 0]) and LpmKey.unpack(4, k.pack()) == k
    assert str(LpmKey(6, 0, 0).network) == "::/0"
    with pytest.raises(ValueError, match="host bits"):
        LpmKey(4, 8, int(ipaddress.IPv4Address("10.1.0.0")))


def reference_split(lo: int, hi: int, bits: int) -> list[tuple[int, int]]:
    """The walk ``split`` replaced: halve the aligned block until it fits."""
    out = []
    while lo < hi:
        size = lo & -lo if lo else 1 << bits
        while size > hi - lo:
            size >>= 1
        out.append((lo, bits - size.bit_length() + 1))
        lo += size
    return out


def reference_entries(table: Table, default: Action, keep: frozenset[int]) -> tuple[list[bytes], list[bytes]]:
    """The typed path the packed one replaced: an ``LpmKey`` and a ``Verdict`` per prefix."""
    bits = 32 if table.family == 4 else 128
    out = [(LpmKey(table.family, plen, net), Verdict(iv.action, iv.rule))
           for iv in table.intervals if iv.action is not default or iv.rule in keep
           for net, plen in reference_split(iv.lo, iv.hi, bits)]
    return [k.pack() for k, _ in out], [v.pack() for _, v in out]


@settings(max_examples=400, deadline=None)
@given(intervals())
def test_split_equals_the_reference_walk(iv: tuple[int, int, int]) -> None:
    assert split(*iv) == reference_split(*iv)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services(), st.sets(st.integers(0, 5)))
def test_packed_entries_equal_the_typed_reference(svc: Service, keep: set[int]) -> None:
    resolved = resolve_service(svc)
    tables = first_match_tables(resolved)
    for table in (tables.v4, tables.v6):
        keys, values = entries(table, resolved.default, frozenset(keep))
        assert (list(keys), list(values)) == reference_entries(table, resolved.default, frozenset(keep))
