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
"""

from __future__ import annotations

from dataclasses import dataclass

from sockgate.policy.intervals import Ranges, cidrs, difference, union
from sockgate.policy.ir import AddrMatch, AnyOf, Except, IPNetwork, Match, MatchAll, MatchNone

V4_BASE = 1 << 128
NO_ADDRESS = -1
Spans = Ranges  # half-open ranges of the one number line above
FULL: Spans = ((NO_ADDRESS, NO_ADDRESS + 1), (0, V4_BASE + (1 << 32)))


def _line_range(net: IPNetwork) -> tuple[int, int]:
    base = V4_BASE if net.version == 4 else 0
    lo = base + int(net.network_address)
    return lo, lo + net.num_addresses


def describe_point(spans: Spans) -> str:
    """The first address (as a CIDR when the first interval starts with one) of non-empty
    ``spans``."""
    lo, hi = next((lo, hi) for lo, hi in spans if lo != NO_ADDRESS)
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


def cover(m: Match) -> Cover:
    if isinstance(m, MatchAll):
        return Cover(FULL, everything=True)
    if isinstance(m, MatchNone):
        return Cover()
    if isinstance(m, AddrMatch):
        return Cover(union(_line_range(n) for n in m.nets))
    if isinstance(m, AnyOf):
        out = Cover()
        for item in m.items:
            out = out | cover(item)
        return out
    if isinstance(m, Except):
        inc, exc = cover(m.include), cover(m.exclude)
        if inc.atoms or exc.atoms or exc.everything:
            return Cover(atoms=frozenset([_unlabel(m)]))
        return Cover(difference(inc.spans, exc.spans))
    return Cover(atoms=frozenset([m]))


def _unlabel(m: Match) -> Match:
    """``m`` with address labels dropped, so ``10.0.0.1`` and ``10.0.0.1/32`` compare equal."""
    if isinstance(m, AddrMatch):
        return AddrMatch(tuple(sorted(m.nets, key=_line_range)))
    if isinstance(m, AnyOf):
        return AnyOf(tuple(_unlabel(i) for i in m.items))
    if isinstance(m, Except):
        return Except(_unlabel(m.include), _unlabel(m.exclude))
    return m
