"""What a rule's match covers, as a value that can be compared, unioned and intersected.

Used by the parser (a rule that matches exactly what an earlier rule matches can never
decide anything: an error) and by lint (a rule covered by the union of earlier rules is
shadowed; a set that overlaps a rule of the opposite action). A ``Cover`` has three parts:

* ``spans`` — peer addresses as sorted, disjoint, half-open integer intervals
  (``policy.intervals``) in one number line: IPv6 at ``[0, 2**128)``, IPv4 at
  ``[2**128, 2**128 + 2**32)``, and the point ``-1`` for "a peer without an address" (a Unix
  socket peer), which only ``all`` reaches;
* ``atoms`` — matches that are not about addresses (host names, principals, anything under an
  ``except`` that mixes kinds), compared structurally;
* ``everything`` — ``all``: covers every peer whatever else it carries.

The analysis is conservative: it never claims a rule is covered when it is not, but a rule
covered only through name or credential reasoning is not found.

``Deciders`` answers, for rules in order, which earlier rule decides each client a rule names,
for all rules at once in O(n log n): the interval end points of every rule are sorted into
elementary segments, each rule in turn claims the segments nobody claimed before it (a
union-find "next unclaimed segment" pointer skips claimed ones, so each segment is claimed
once), and atoms are claimed in a dict. A rule that claims nothing is covered by the rules
before it; the claimants of its segments are exactly the rules that decide its clients. Asking
every rule against every earlier one, as a union of covers rebuilt per rule, was cubic.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Hashable, Iterator, Sequence, assert_never

from sockgate.policy.intervals import Ranges, cidrs, difference, net_range, union
from sockgate.policy.ir import (
    AddrMatch,
    AnyOf,
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
from sockgate.policy.netlist import NetList

V4_BASE = 1 << 128
NO_ADDRESS = -1
Spans = Ranges  # half-open ranges of the one number line above
FULL: Spans = ((NO_ADDRESS, NO_ADDRESS + 1), (0, V4_BASE + (1 << 32)))


def _line_range(net: IPNetwork) -> tuple[int, int]:
    base = V4_BASE if net.version == 4 else 0
    lo, hi = net_range(net)
    return base + lo, base + hi


def _line_spans(nets: NetList) -> Spans:
    """The spans of ``nets`` on the one number line: IPv6 first, then IPv4 moved up by
    ``V4_BASE`` (a range ending at the top of IPv6 and one starting at 0.0.0.0 join)."""
    six = list(nets.ranges(6))
    four = [(V4_BASE + lo, V4_BASE + hi) for lo, hi in nets.ranges(4)]
    if six and four and six[-1][1] == four[0][0]:
        four[0] = (six.pop()[0], four[0][1])
    return tuple(six + four)


def describe_point(spans: Spans) -> str:
    """The first address (as a CIDR when the first interval starts with one) of non-empty
    ``spans``."""
    lo, hi = next((max(lo, 0), hi) for lo, hi in spans if hi > 0)  # the Unix peer point is no address
    if lo >= V4_BASE:
        head = cidrs((lo - V4_BASE, hi - V4_BASE), 4)[0]
    else:
        head = cidrs((lo, min(hi, V4_BASE)), 6)[0]
    return str(head) if head.num_addresses > 1 else str(head.network_address)


@dataclass(frozen=True)
class Cover:
    spans: Spans = ()
    atoms: frozenset[Match] = frozenset()
    everything: bool = False

    def __or__(self, other: "Cover") -> "Cover":
        return Cover(union(self.spans + other.spans), self.atoms | other.atoms, self.everything or other.everything)

    def covers(self, other: "Cover") -> bool:
        if self.everything:
            return True
        return not other.everything and not difference(other.spans, self.spans) and other.atoms <= self.atoms

    def is_empty(self) -> bool:
        return not self.spans and not self.atoms and not self.everything


_MEMO_NETS = 1024  # an address match this large is worth remembering
_MEMO_SIZE = 16
_memo: dict[int, tuple[Match, "Cover"]] = {}  # id(match) -> (match, its cover); the match is kept


def cover(m: Match) -> "Cover":
    """What ``m`` covers. The cover of a large address list (a set file of 100,000 lines) is
    remembered for the same match object, which the parser and then lint both ask about."""
    if not (isinstance(m, AddrMatch) and len(m.nets) >= _MEMO_NETS):
        return _cover(m)
    hit = _memo.get(id(m))
    if hit is not None and hit[0] is m:
        return hit[1]
    c = _cover(m)
    if len(_memo) >= _MEMO_SIZE:
        del _memo[next(iter(_memo))]
    _memo[id(m)] = (m, c)
    return c


def _cover(m: Match) -> Cover:
    match m:
        case MatchAll():
            return Cover(FULL, everything=True)
        case MatchNone():
            return Cover()
        case AddrMatch(nets=nets):
            if isinstance(nets, NetList):  # a set file: its unions per family, from integers
                return Cover(_line_spans(nets))
            if len(nets) == 1:  # most rules: nothing to sort or merge
                return Cover((_line_range(nets[0]),))
            return Cover(union(_line_range(n) for n in nets))
        case AnyOf(items=items):
            out = Cover()
            for item in items:
                out = out | cover(item)
            return out
        case Except(include=include, exclude=exclude):
            inc, exc = cover(include), cover(exclude)
            if exc.everything:
                return Cover()  # everything is excepted: the rule matches nobody
            if inc.atoms or exc.atoms:
                return Cover(atoms=frozenset([_unlabel(m)]))
            return Cover(difference(inc.spans, exc.spans))
        case HostPattern() | HostClass() | Principal() | UserAt():
            return Cover(atoms=frozenset([m]))
        case _:
            assert_never(m)


def _unlabel(m: Match) -> Match:
    """``m`` with address labels dropped, so ``10.0.0.1`` and ``10.0.0.1/32`` compare equal."""
    match m:
        case AddrMatch(nets=nets):
            return AddrMatch(tuple(sorted(nets, key=_line_range)))
        case AnyOf(items=items):
            return AnyOf(tuple(_unlabel(i) for i in items))
        case Except(include=include, exclude=exclude):
            return Except(_unlabel(include), _unlabel(exclude))
        case MatchAll() | MatchNone() | HostPattern() | HostClass() | Principal() | UserAt():
            return m
        case _:
            assert_never(m)


SCAN_LIMIT = 4096  # runs of segments looked at per question: bounds the work on hostile input


class Deciders:
    """Who decides first, for ``claims`` in order: each an (intervals, atoms, everything)."""

    def __init__(self, claims: Sequence[tuple[Spans, frozenset[Hashable], bool]]) -> None:
        self.points = sorted({p for spans, _, _ in claims for r in spans for p in r})
        self._index = {p: i for i, p in enumerate(self.points)}
        owner = [-1] * len(self.points)  # segment k is points[k] .. points[k + 1] - 1
        nxt = list(range(len(self.points)))  # the first unclaimed segment at or after k
        self.atom_owner: dict[Hashable, int] = {}
        self.first_all: int | None = None
        self.fresh: list[bool] = []  # the rule claims some client first
        for i, (spans, atoms, everything) in enumerate(claims):
            new = self._claim_segments(i, spans, owner, nxt)
            for atom in atoms:
                if self.atom_owner.setdefault(atom, i) == i:
                    new = True
            self.fresh.append(new or (everything and self.first_all is None))
            if everything and self.first_all is None:
                self.first_all = i
        self.run_start = [k for k in range(len(owner)) if k == 0 or owner[k] != owner[k - 1]]
        self.run_owner = [owner[k] for k in self.run_start]

    def _claim_segments(self, i: int, spans: Spans, owner: list[int], nxt: list[int]) -> bool:
        claimed = False
        index = self._index
        for lo, hi in spans:
            k, end = _find(nxt, index[lo]), index[hi]
            while k < end:
                owner[k], nxt[k], claimed = i, k + 1, True
                k += 1
                if k < end and nxt[k] != k:  # claimed before: jump (an unclaimed one needs no call)
                    k = _find(nxt, k)
        return claimed

    def covered(self, i: int) -> bool:
        """Do the rules before ``i`` decide every client rule ``i`` names?"""
        return (self.first_all is not None and self.first_all < i) or not self.fresh[i]

    def owners(self, i: int, spans: Spans) -> Iterator[tuple[int, Spans]]:
        """The earlier rules that decide addresses of ``spans`` (rule ``i``'s), each once with
        the first such addresses, in address order. Runs rule ``i`` decides itself cost one
        step each (in all, as many as there are segments); of the others, at most
        ``SCAN_LIMIT`` are looked at."""
        seen: set[int] = set()
        budget = SCAN_LIMIT
        starts, owners = self.run_start, self.run_owner
        for lo, hi in spans:
            a, b = self._index[lo], self._index[hi]
            r = bisect.bisect_right(starts, a) - 1
            while r < len(starts) and starts[r] < b and budget > 0:
                who = owners[r]
                if who != i:
                    budget -= 1
                if 0 <= who < i and who not in seen:
                    seen.add(who)
                    end = starts[r + 1] if r + 1 < len(starts) else len(self.points) - 1
                    yield who, ((self.points[max(a, starts[r])], self.points[min(b, end)]),)
                r += 1

    def culprits(self, i: int, spans: Spans, atoms: frozenset[Hashable], everything: bool) -> list[int]:
        """The earlier rules that together decide every client of covered rule ``i``."""
        found = {who for who, _ in self.owners(i, spans)}
        found |= {self.atom_owner[a] for a in atoms if self.atom_owner[a] < i}
        if self.first_all is not None and (everything or any(self.atom_owner[a] == i for a in atoms) or not found):
            found.add(self.first_all)
        return sorted(found)


def _find(nxt: list[int], k: int) -> int:
    """The first unclaimed segment at or after ``k`` (``len(nxt)`` and past: none), with path
    halving so that the pointers stay short."""
    while k < len(nxt) and nxt[k] != k:
        nxt[k] = nxt[nxt[k]]  # a claimed segment points past itself, never past the last one
        k = nxt[k]
    return k
