"""A rule's address match flattened to disjoint address intervals, per family.

A packet filter tests a source address against a set; sockgate's matches are trees
(``AnyOf``, ``Except`` nested to any depth, as hosts_access ``a EXCEPT b EXCEPT c`` is). So
each match is evaluated once, as set algebra over integer intervals — union for ``AnyOf``,
difference for ``Except`` — giving for IPv4 and for IPv6 the sorted, disjoint, non-adjacent
half-open intervals of addresses it holds for. Those render as nftables interval-set
elements (``a-b`` ranges or CIDRs) or as pf table entries (CIDRs only, via ``summarize``).

An IPv4 address is never in an IPv6 set: the engine compares a peer only with networks of
its own family. The engine turns a peer address ``::ffff:a.b.c.d`` into IPv4, because that is
how a dual-stack socket names a real IPv4 client; but such a client's packets carry an IPv4
header, so on the wire an IPv6 header with a source in ``MAPPED_V6`` is forged (RFC 4291
2.5.5.2). Linux does not drop it before netfilter (TCP refuses it in ``tcp_v6_conn_request``;
UDP delivers it, seen on 6.18), so every exported service drops it before its rules.

The set algebra is the BPF compiler's (``policy.intervals``, which ``resolve.ranges`` uses too),
so the kernel filter and the firewall rules agree by construction.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sockgate.policy.intervals import SPACE, Range, Ranges, cidrs, match_ranges, to_address
from sockgate.policy.ir import IPAddress, IPNetwork
from sockgate.resolve import ResolvedRule

Intervals = Ranges  # half-open (lo, hi): addresses lo .. hi - 1
MAPPED_V6 = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped IPv6 addresses, RFC 4291 2.5.5.2

__all__ = ["MAPPED_V6", "AddrSpace", "Intervals", "as_cidr", "flatten", "summarize", "to_address"]


@dataclass(frozen=True)
class AddrSpace:
    """The source addresses a match holds for: disjoint sorted intervals per family."""

    v4: Intervals = ()
    v6: Intervals = ()

    def family(self, version: int) -> Intervals:
        return self.v4 if version == 4 else self.v6

    def is_full(self, version: int) -> bool:
        return self.family(version) == ((0, SPACE[version]),)

    def is_empty(self) -> bool:
        return not self.v4 and not self.v6

    def contains(self, address: IPAddress) -> bool:
        n = int(address)
        return any(lo <= n < hi for lo, hi in self.family(address.version))


def flatten(rule: ResolvedRule) -> AddrSpace:
    """The addresses ``rule``'s match holds for. Only for rules a packet filter can decide
    (``rule.address_only``); anything else raises ``ValueError`` (a bug)."""
    if not rule.address_only:
        raise ValueError(f"not decidable from an address: {rule.rule.text!r} ({rule.reason()})")
    match = rule.rule.match
    return AddrSpace(v4=match_ranges(match, 4), v6=match_ranges(match, 6))


def summarize(intervals: Intervals, version: int) -> list[IPNetwork]:
    """The fewest CIDRs covering exactly ``intervals`` (for targets without ranges: pf)."""
    return [net for r in intervals for net in cidrs(r, version)]


def as_cidr(interval: Range, version: int) -> IPNetwork | None:
    """The one CIDR that is exactly ``interval``, or None."""
    nets = cidrs(interval, version)
    return nets[0] if len(nets) == 1 else None
