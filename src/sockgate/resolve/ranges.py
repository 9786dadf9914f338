"""A resolved service's address rules → disjoint labelled intervals, one table per address family.

Each rule's match becomes a set of half-open integer intervals over the family's address
space (IPv4: 0..2**32, IPv6: 0..2**128) by the interval algebra of ``policy.intervals``
(``AnyOf`` is a union, ``Except`` a difference). First match wins: one sweep over every interval end point, keeping the rules
active at each point in a heap, labels each elementary segment with the earliest active
rule, or with the default where none is. Adjacent segments with the same action merge, so
the labels of a table alternate between allow and deny. The sweep costs O(N log N) in the
number of CIDRs, whatever the number of rules; a set holding most of them (a set file of a
million lines) is laid over the sweep of the others in one linear pass instead (``_overlay``).

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
from typing import Iterator, Sequence, Union, assert_never

from sockgate.policy.intervals import SPACE, Range, Ranges, difference, match_ranges, net_range, union
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


@dataclass(frozen=True, slots=True)
class Interval:
    """Addresses ``lo`` .. ``hi - 1`` get ``action``; ``rule`` is the index of the rule that
    decided (``FORGED``, ``BANNED`` for the banned list, None for the default). Slotted: a
    million-prefix set makes a million of them, each without a ``__dict__`` for the garbage
    collector to walk."""

    lo: int
    hi: int
    action: Action
    rule: int | None


Row = tuple[int, int, Action, Union[int, None]]  # an interval's lo, hi, action, rule


class IntervalColumns(Sequence[Interval]):
    """Intervals kept as four parallel tuples, an ``Interval`` made only when one is read:
    the sweep of a million-prefix set yields a million intervals, and the eBPF compiler reads
    them as ``rows`` without ever needing the objects. Equal to any sequence of the same
    intervals (a tuple of ``Interval`` included)."""

    __slots__ = ("los", "his", "actions", "rules")

    def __init__(self, los: Sequence[int], his: Sequence[int], actions: Sequence[Action],
                 rules: Sequence[int | None]) -> None:
        if not len(los) == len(his) == len(actions) == len(rules):
            raise ValueError("columns of one length")
        self.los, self.his, self.actions, self.rules = tuple(los), tuple(his), tuple(actions), tuple(rules)

    def __len__(self) -> int:
        return len(self.los)

    def __getitem__(self, i: int) -> Interval:  # type: ignore[override]  # (no slices)
        return Interval(self.los[i], self.his[i], self.actions[i], self.rules[i])

    def __iter__(self) -> Iterator[Interval]:
        return map(Interval, self.los, self.his, self.actions, self.rules)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IntervalColumns):
            return (self.los, self.his, self.actions, self.rules) == (other.los, other.his, other.actions, other.rules)
        return isinstance(other, Sequence) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


@dataclass(frozen=True)
class Table:
    """The intervals of one family: sorted, disjoint, covering the whole space, adjacent
    intervals of different actions."""

    family: int
    intervals: Sequence[Interval]

    def __len__(self) -> int:
        return len(self.intervals)


def rows(table: Table) -> Iterator[Row]:
    """``(lo, hi, action, rule)`` of each interval of ``table``, without making ``Interval``s
    of columns."""
    ivs = table.intervals
    if isinstance(ivs, IntervalColumns):
        return zip(ivs.los, ivs.his, ivs.actions, ivs.rules)
    return ((iv.lo, iv.hi, iv.action, iv.rule) for iv in ivs)


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


OVERLAY_MIN = 4096  # ranges in the largest set from which it is laid over the others' sweep


def _first_match(sets: list[Labelled], default: Action, space: int, overlay_min: int = OVERLAY_MIN) -> IntervalColumns:
    """Label the space by the first of ``sets`` (ranges, action, rule index) holding at each
    point, or ``default``; adjacent intervals of one action merged (their rule: ``_mixed``).

    A set file makes one set hold nearly every range. Sweeping its million ranges through
    the heap cost more than anything else in a compile; instead the other sets are swept
    alone (``_sweep``, merging only equal labels, so no rule is lost), the big set's ranges
    not decided by an earlier set are laid over that partition in one merge pass
    (``_overlay``), and the result is the sweep's, interval for interval
    (tests/core/test_ranges_sweep.py)."""
    big = max(range(len(sets)), key=lambda i: len(sets[i][0]), default=-1)
    if big < 0 or len(sets[big][0]) < overlay_min:
        return _sweep(sets, default, space, exact=False)
    spans, action, rule = sets[big]
    earlier = union(r for s, _, _ in sets[:big] for r in s)
    mine = difference(spans, earlier) if earlier else spans
    rest = [((), a, r) if i == big else (s, a, r) for i, (s, a, r) in enumerate(sets)]
    return _overlay(_sweep(rest, default, space, exact=True), mine, action, rule, space)


def _overlay(base: IntervalColumns, mine: Sequence[Range], action: Action, rule: int | None,
             space: int) -> IntervalColumns:
    """``base`` (a partition of the space, equal labels merged) with ``mine`` (sorted, disjoint
    ranges) labelled ``action``/``rule`` over it; adjacent intervals of one action merged."""
    blos, bacts, brules = base.los, base.actions, base.rules
    nb = len(blos)
    los: list[int] = []
    actions: list[Action] = []
    rules: list[int | None] = []
    j, at = 0, 0  # base interval j holds the point ``at``
    end = blos[1] if nb > 1 else space  # where base interval j ends
    # (each label appended or merged inline: twice per range of a million, a call each cost more)
    for lo, hi in [*mine, (space, space)]:
        while at < lo:  # the base's labels up to ``lo``
            a, r = bacts[j], brules[j]
            if actions and actions[-1] is a:
                if rules[-1] != r:
                    rules[-1] = _mixed(rules[-1], r)
            else:
                los.append(at)
                actions.append(a)
                rules.append(r)
            if end <= lo:
                at, j = end, j + 1
                end = blos[j + 1] if j + 1 < nb else space
            else:
                at = lo
        if lo < hi:  # ours
            if actions and actions[-1] is action:
                if rules[-1] != rule:
                    rules[-1] = _mixed(rules[-1], rule)
            else:
                los.append(lo)
                actions.append(action)
                rules.append(rule)
            at = hi
            while end <= at and j + 1 < nb:
                j += 1
                end = blos[j + 1] if j + 1 < nb else space
    return IntervalColumns(los, los[1:] + [space], actions, rules)


def _sweep(sets: list[Labelled], default: Action, space: int, exact: bool) -> IntervalColumns:
    """Label the space by the first of ``sets`` holding at each point, or ``default``;
    adjacent intervals merged when their actions are equal, or with ``exact`` only when
    their rules are too.

    Every end point is one integer event, ``point << shift | kind | index`` (an end sorts
    before a start at the same point), so the events sort as plain ints, in C, and the sweep
    allocates nothing per point but the output columns: with 1,000,000 ranges, dicts of
    per-point lists and an ``Interval`` per elementary segment spent most of the time in
    allocation and the garbage collector."""
    shift = len(sets).bit_length() + 1
    start_bit = 1 << (shift - 1)
    mask = start_bit - 1
    events: list[int] = []
    for idx, (spans, _, _) in enumerate(sets):
        start = idx | start_bit
        for lo, hi in spans:
            events.append(lo << shift | start)
            events.append(hi << shift | idx)
    events.sort()
    labels = [(action, rule) for _, action, rule in sets]
    active = [False] * len(sets)
    heap: list[int] = []
    los: list[int] = []
    actions: list[Action] = []
    rules: list[int | None] = []
    k, count, p = 0, len(events), 0
    while True:
        while k < count and events[k] >> shift == p:
            e = events[k]
            if e & start_bit:
                active[e & mask] = True
                heapq.heappush(heap, e & mask)
            else:
                active[e & mask] = False
            k += 1
        while heap and not active[heap[0]]:
            heapq.heappop(heap)
        action, rule = labels[heap[0]] if heap else (default, None)
        if actions and actions[-1] is action and (not exact or rules[-1] == rule):
            if rules[-1] != rule:
                rules[-1] = _mixed(rules[-1], rule)
        else:
            los.append(p)
            actions.append(action)
            rules.append(rule)
        if k == count:
            break
        p = events[k] >> shift
        if p >= space:
            break
    return IntervalColumns(los, los[1:] + [space], actions, rules)


def _mixed(a: int | None, b: int | None) -> int | None:
    """The rule recorded for a merged interval decided by several rules: the first one."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
