"""A resolved service's address rules → disjoint labelled intervals, one table per address family.

Each rule's match becomes a set of half-open integer intervals over the family's address
space (IPv4: 0..2**32, IPv6: 0..2**128) by the interval algebra of ``policy.intervals``
(``AnyOf`` is a union, ``Except`` a difference). First match wins: one sweep over every interval end point, keeping the rules
active at each point in a heap, labels each elementary segment with the earliest active
rule, or with the default where none is. Adjacent segments with the same action merge, so
the labels of a table alternate between allow and deny. The sweep costs O(N log N) in the
number of CIDRs, whatever the number of rules.

Semantics are those of ``decide``: an address matches a network of its own family only, and
a forged source is denied before any rule. A real IPv4 client of a dual-stack socket arrives
with an IPv4 header, and is decided by the IPv4 table (the engine normalises its
``::ffff:a.b.c.d`` to ``a.b.c.d``); an IPv6 header whose source lies in ``::ffff:0:0/96`` is
forged (decide.py says why), so the IPv6 table denies that whole /96 (``FORGED``), whatever the
rules say. The parser folds a written ``::ffff:a.b.c.d/len`` into IPv4 (policy/literals.py),
so no rule can allow it back.

``banned`` sources are denied before any rule (after ``FORGED``). A packet that is neither IPv4 nor IPv6 gets the
decision of a peer without an address (``other``): only rules that need no address can
match it, else the default applies.
"""

from __future__ import annotations

import heapq
import ipaddress
from dataclasses import dataclass
from typing import Sequence, Union, assert_never

from sockgate.policy.intervals import SPACE, Ranges, match_ranges, net_range, union
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    Applies,
    Except,
    HostClass,
    HostPattern,
    IPNetwork,
    Match,
    MatchAll,
    MatchNone,
    Principal,
    UserAt,
)
from sockgate.resolve.model import ResolvedService

Banned = Union[ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress.IPv4Address, ipaddress.IPv6Address]

Labelled = tuple[Ranges, Action, Union[int, None]]  # addresses, their action, the rule index

BANNED = -1  # rule index of the banned list
FORGED = -2  # rule index of the IPv4-mapped sources in the IPv6 table
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # RFC 4291 2.5.5.2


@dataclass(frozen=True)
class Interval:
    """Addresses ``lo`` .. ``hi - 1`` get ``action``; ``rule`` is the index of the rule that
    decided (``FORGED``, ``BANNED`` for the banned list, None for the default)."""

    lo: int
    hi: int
    action: Action
    rule: int | None


@dataclass(frozen=True)
class Table:
    """The intervals of one family: sorted, disjoint, covering the whole space, adjacent
    intervals of different actions."""

    family: int
    intervals: tuple[Interval, ...]

    def __len__(self) -> int:
        return len(self.intervals)


@dataclass(frozen=True)
class Tables:
    v4: Table
    v6: Table
    other: Action  # neither IPv4 nor IPv6
    other_rule: int | None


def first_match_tables(service: ResolvedService, banned: Sequence[Banned] = ()) -> Tables:
    """The interval tables for ``service`` (rules needing user space must be refused before:
    ``ResolvedService.refusal``). A rule's label is its index in ``Service.rules``."""
    rules = [(r.rule.match if r.selection is Applies.ALWAYS else MatchNone(), r) for r in service.rules]  # (BY_SERVER is refused before)
    default = service.default
    other_by = next((r for m, r in rules if _matches_no_address(m)), None)
    other, other_rule = (default, None) if other_by is None else (other_by.rule.action, other_by.index)
    tables = []
    for fam in (4, 6):
        ban = union(net_range(as_net(b)) for b in banned if b.version == fam)
        # in order of precedence: forged sources, banned ones, then the rules
        sets: list[Labelled] = [((net_range(MAPPED),), Action.DENY, FORGED)] if fam == 6 else []
        sets.append((ban, Action.DENY, BANNED))
        sets += [(match_ranges(m, fam), r.rule.action, r.index) for m, r in rules]
        tables.append(Table(fam, _first_match(sets, default, SPACE[fam])))
    return Tables(tables[0], tables[1], other, other_rule)


def as_net(b: Banned) -> IPNetwork:
    """A banned source as a network (an address is its /32 or /128)."""
    if isinstance(b, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return b
    return ipaddress.ip_network(b)


def _matches_no_address(m: Match) -> bool:
    match m:
        case MatchAll():
            return True
        case AnyOf(items=items):
            return any(_matches_no_address(i) for i in items)
        case Except(include=include, exclude=exclude):
            return _matches_no_address(include) and not _matches_no_address(exclude)
        case MatchNone() | AddrMatch() | HostPattern() | HostClass() | Principal() | UserAt():
            return False
        case _:
            assert_never(m)


def _first_match(
    sets: list[Labelled], default: Action, space: int
) -> tuple[Interval, ...]:
    """Label the space by the first of ``sets`` (ranges, action, rule index) holding at each
    point, or ``default``."""
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for idx, (spans, _, _) in enumerate(sets):
        for lo, hi in spans:
            starts.setdefault(lo, []).append(idx)
            ends.setdefault(hi, []).append(idx)
    points = sorted(set(starts) | set(ends) | {0})
    active = [False] * len(sets)
    heap: list[int] = []
    out: list[Interval] = []
    for i, p in enumerate(points):
        if p >= space:
            break
        for idx in ends.get(p, ()):
            active[idx] = False
        for idx in starts.get(p, ()):
            active[idx] = True
            heapq.heappush(heap, idx)
        while heap and not active[heap[0]]:
            heapq.heappop(heap)
        hi = points[i + 1] if i + 1 < len(points) else space
        action, rule = sets[heap[0]][1:] if heap else (default, None)
        if out and out[-1].action is action:
            prev = out[-1]
            out[-1] = Interval(prev.lo, hi, action, prev.rule if prev.rule == rule else _mixed(prev.rule, rule))
        else:
            out.append(Interval(p, hi, action, rule))
    return tuple(out)


def _mixed(a: int | None, b: int | None) -> int | None:
    """The rule recorded for a merged interval decided by several rules: the first one."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
