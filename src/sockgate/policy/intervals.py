"""Sets of addresses as integer intervals: the arithmetic the BPF compiler (``resolve.ranges``),
the firewall exporters (``export.addrs``) and the policy checks (``policy.coverage``) share.

An address of family 4 or 6 is an integer in ``[0, SPACE[family])``; a set of addresses is a
tuple of sorted, disjoint, non-adjacent half-open ranges ``(lo, hi)`` meaning ``lo .. hi - 1``
(``union`` and ``difference`` keep that form). A match that needs no more than the source
address becomes such a set per family by plain set algebra: ``AnyOf`` is a union, ``Except``
a difference, ``all`` the whole space, a network its one range; a network of the other family
adds nothing, as ``decide.matches`` compares an address only with networks of its own family.
Anything that needs more than an address (names, credentials) is the empty set here: the
callers refuse or handle such matches before asking.

Hand-written because the standard library has no interval sets and ``ipaddress``'s
``address_exclude`` and ``collapse_addresses`` work on CIDR lists, which an ``except`` chain
can multiply far beyond the few ranges it really is. Pure: ``ipaddress`` only.
"""

from __future__ import annotations

import ipaddress
from operator import itemgetter
from typing import Iterable, Sequence, assert_never

from sockgate.policy.ir import (
    AddrMatch,
    AnyOf,
    Except,
    HostClass,
    HostPattern,
    IPAddress,
    IPNetwork,
    Match,
    MatchAll,
    MatchNone,
    Principal,
    UserAt,
)
from sockgate.policy.netlist import NetList

Range = tuple[int, int]  # half-open: addresses lo .. hi - 1
Ranges = tuple[Range, ...]

SPACE = {4: 1 << 32, 6: 1 << 128}  # the size of each family's address space


def net_range(net: IPNetwork) -> Range:
    """The addresses of ``net``. Integer arithmetic on ``prefixlen``: ``num_addresses`` goes
    through ``ipaddress``'s cached ``broadcast_address`` and ``hostmask`` objects, half the
    time of compiling a 100,000-line set."""
    lo = int(net.network_address)
    return (lo, lo + (1 << (net.max_prefixlen - net.prefixlen)))


def to_address(n: int, version: int) -> IPAddress:
    """The address of family ``version`` whose integer is ``n``."""
    return ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n)


def union(ranges: Iterable[Range]) -> Ranges:
    """The addresses in any of ``ranges`` (in any order, overlapping or not)."""
    out: list[Range] = []
    # by start only: ranges with one start merge to the longest whatever their order, and a
    # key of one int sorts several times faster than pairs of 129-bit ints (100,000-line sets)
    for lo, hi in sorted(ranges, key=itemgetter(0)):
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def difference(a: Sequence[Range], b: Sequence[Range]) -> Ranges:
    """The addresses of ``a`` not in ``b`` (both sorted and disjoint). Each range of ``a``
    is cut separately, so the result is in the form of ``union`` when ``a`` is."""
    out: list[Range] = []
    j = 0
    for lo, hi in a:
        while j < len(b) and b[j][1] <= lo:
            j += 1
        k = j
        while k < len(b) and b[k][0] < hi:
            if b[k][0] > lo:
                out.append((lo, b[k][0]))
            lo = max(lo, b[k][1])
            k += 1
        if lo < hi:
            out.append((lo, hi))
    return tuple(out)


def intersection(a: Sequence[Range], b: Sequence[Range]) -> Ranges:
    """The addresses in both ``a`` and ``b`` (both sorted and disjoint)."""
    return difference(a, difference(a, b))


def match_ranges(m: Match, version: int) -> Ranges:
    """The addresses of family ``version`` that ``m`` holds for (see the module docstring)."""
    match m:
        case MatchAll():
            return ((0, SPACE[version]),)
        case AddrMatch(nets=nets):
            if isinstance(nets, NetList):  # a set file: its union, computed once from integers
                return nets.ranges(version)
            return union(net_range(n) for n in nets if n.version == version)
        case AnyOf(items=items):
            return union(r for i in items for r in match_ranges(i, version))
        case Except(include=include, exclude=exclude):
            return difference(match_ranges(include, version), match_ranges(exclude, version))
        case MatchNone() | HostPattern() | HostClass() | Principal() | UserAt():
            return ()  # nobody, or a match that needs more than an address
        case _:
            assert_never(m)


def cidrs(r: Range, version: int) -> list[IPNetwork]:
    """The fewest CIDR networks that together are exactly the non-empty range ``r``."""
    first, last = to_address(r[0], version), to_address(r[1] - 1, version)
    return list(ipaddress.summarize_address_range(first, last))
