"""A rule's address match flattened to disjoint address intervals, per family.

A packet filter tests a source address against a set; sockgate's matches are trees
(``AnyOf``, ``Except`` nested to any depth, as hosts_access ``a EXCEPT b EXCEPT c`` is). So
each match is evaluated once, as set algebra over integer intervals — union for ``AnyOf``,
difference for ``Except`` — giving for IPv4 and for IPv6 the sorted, disjoint, non-adjacent
intervals of addresses it holds for. Those render as nftables interval-set elements
(``a-b`` ranges or CIDRs) or as pf table entries (CIDRs only, via ``summarize``).

An IPv4 address is never in an IPv6 set: the engine compares a peer only with networks of
its own family (and turns ``::ffff:a.b.c.d`` into IPv4), and Linux drops IPv6 packets whose
source is IPv4-mapped before any hook sees them. The set algebra is the BPF compiler's
(``bpf.ranges``), so the kernel filter and the firewall rules agree by construction.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from sockgate.bpf import ranges
from sockgate.policy.ir import Action, IPNetwork, Match, Rule, Service, userspace_reason
from sockgate.policy.source import Span

Interval = tuple[int, int]  # inclusive
Intervals = tuple[Interval, ...]

MAX = {4: (1 << 32) - 1, 6: (1 << 128) - 1}


@dataclass(frozen=True)
class AddrSpace:
    """The source addresses a match holds for: disjoint sorted intervals per family."""

    v4: Intervals = ()
    v6: Intervals = ()

    def family(self, version: int) -> Intervals:
        return self.v4 if version == 4 else self.v6

    def is_full(self, version: int) -> bool:
        return self.family(version) == ((0, MAX[version]),)

    def is_empty(self) -> bool:
        return not self.v4 and not self.v6

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        n = int(address)
        return any(lo <= n <= hi for lo, hi in self.family(address.version))


_NOWHERE = Span("", 0, 0)


def flatten(match: Match) -> AddrSpace:
    """The addresses ``match`` holds for. Only for matches a packet filter can decide
    (``userspace_reason(match) is None``); anything else raises ``ValueError`` (a bug).

    The interval algebra is the BPF compiler's (``bpf.ranges``): the match is planned as a
    one-rule service (allow it, deny the rest), whose allow intervals are the answer."""
    reason = userspace_reason(match)
    if reason is not None:
        raise ValueError(f"not decidable from an address: {match!r} ({reason})")
    one = Service("", (Rule(Action.ALLOW, match, _NOWHERE, ""),), Action.DENY)
    tables = ranges.build(one)
    return AddrSpace(v4=_allowed(tables.v4), v6=_allowed(tables.v6))


def _allowed(table: ranges.Table) -> Intervals:
    return tuple((i.lo, i.hi - 1) for i in table.intervals if i.action is Action.ALLOW)


def to_address(n: int, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n)


def summarize(intervals: Intervals, version: int) -> list[IPNetwork]:
    """The fewest CIDRs covering exactly ``intervals`` (for targets without ranges: pf)."""
    out: list[IPNetwork] = []
    for lo, hi in intervals:
        out.extend(ipaddress.summarize_address_range(to_address(lo, version), to_address(hi, version)))
    return out


def as_cidr(interval: Interval, version: int) -> IPNetwork | None:
    """The one CIDR that is exactly ``interval``, or None."""
    nets = summarize((interval,), version)
    return nets[0] if len(nets) == 1 else None
