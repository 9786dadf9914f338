"""Keep the rules the program must tell apart in the tries: those with rate limits.

ranges.py merges adjacent intervals of the same action into one, labelled with the first of
their rules: right for a verdict, wrong for a rule's own limits. With ``allow 10.1.0.0/16``
then ``allow 10.2.0.0/16 limit rate 3/1m per source``, the two /16s merge under rule 0, and
the limits of rule 1 would never be applied: the program would grant more than the policy.
So, for each limited rule, its *region* — where it is the first match — is computed by
building the tables of a service in which every earlier rule denies and nothing follows it
(its allowed intervals are then exactly the region, never merged with another rule's), and
the region is cut out of the merged intervals under its own label. The regions of two rules
are disjoint (one point has one first match), so the result is still a partition. Outside
its region a merged interval may still carry a limited rule's index (ranges.py keeps the
first rule of a merge); there it is not that rule's, so the label becomes None (the
default's), which has no limits of its own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from sockgate.resolve import ranges as _ranges
from sockgate.resolve.ranges import Interval, Table, Tables
from sockgate.policy.ir import Action
from sockgate.resolve import ResolvedService, resolve_service


def separate(service: ResolvedService, tables: Tables, rules: Sequence[int], banned: Sequence[_ranges.Banned] = ()) -> Tables:
    """``tables`` with the region of each rule in ``rules`` (indices of allow rules) an
    interval (or several) labelled with that rule alone."""
    if not rules:
        return tables
    regions: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}
    svc = service.service
    for i in rules:
        earlier = tuple(replace(r, action=Action.DENY) for r in svc.rules[:i])
        alone = _ranges.first_match_tables(resolve_service(replace(svc, rules=earlier + (svc.rules[i],), default=Action.DENY)), banned)
        for table in (alone.v4, alone.v6):
            regions[table.family] += [(iv.lo, iv.hi, i) for iv in table.intervals if iv.action is Action.ALLOW]
    limited = frozenset(rules)
    return replace(tables, v4=_cut(tables.v4, regions[4], limited), v6=_cut(tables.v6, regions[6], limited))


def _cut(table: Table, regions: list[tuple[int, int, int]], limited: frozenset[int]) -> Table:
    """The intervals of ``table`` with each region ``(lo, hi, rule)`` labelled ``rule``, and
    no other interval labelled with a rule in ``limited``."""
    regions.sort()
    out: list[Interval] = []
    k = 0
    for iv in table.intervals:
        at = iv.lo
        while k < len(regions) and regions[k][1] <= at:
            k += 1
        j = k
        while at < iv.hi:
            if j < len(regions) and regions[j][0] <= at:  # inside a region
                end = min(regions[j][1], iv.hi)
                out.append(Interval(at, end, Action.ALLOW, regions[j][2]))
                if end == regions[j][1]:
                    j += 1
            else:
                end = min(regions[j][0], iv.hi) if j < len(regions) else iv.hi
                out.append(Interval(at, end, iv.action, None if iv.rule in limited else iv.rule))
            at = end
        k = j
    return Table(table.family, tuple(out))
