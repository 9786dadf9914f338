"""A long list of networks kept as integers: what a set file of a million lines becomes.

A set file is the one place a policy holds hundreds of thousands of networks, and every pass
over it wants integers — the compilers' intervals (``policy.intervals``), the parser's cover
(``policy.coverage``), the digest (``ir._content``), the engine's membership test — never
``ipaddress`` objects. Building one ``IPv4Network`` per line cost more than all the rest of
loading and compiling such a set, so ``setfile`` parses straight into integers and the IR
carries them as a ``NetList``: a ``Sequence`` of networks, equal to (and hashed like) the tuple
of the same networks, whose ``ipaddress`` objects are made only if somebody iterates it
(printing, exporting) — once, then kept.

Each network is one integer key: ``value << 8 | prefixlen``, plus ``V6`` (``1 << 136``, above
any IPv6 value so shifted) for IPv6. So one sort of the keys (in C) puts every IPv4 network
before every IPv6 one, each family by address and then prefix length: the order an interval
union wants. Per family the union of the networks (``policy.intervals`` form: sorted,
disjoint, non-adjacent half-open ranges) is computed once, on first use, and answers
``contains`` by bisection.

Hand-written: the standard library has no compact network list, and a third-party interval
or radix-tree package would be one more dependency for what is forty lines of arithmetic.
Pure: ``ipaddress`` and ``bisect`` only.
"""

from __future__ import annotations

import bisect
import ipaddress
import operator
from itertools import islice
from typing import Iterable, Iterator, Sequence, Union, overload

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Range = tuple[int, int]

V6 = 1 << 136  # the family bit of an IPv6 key
_VALUE = (1 << 128) - 1


def key_of(net: Network) -> int:
    """The key of ``net``."""
    key = int(net.network_address) << 8 | net.prefixlen
    return key | V6 if net.version == 6 else key


def net_of(key: int) -> Network:
    """The network of ``key``."""
    value, plen = (key >> 8) & _VALUE, key & 0xFF
    if key >= V6:
        return ipaddress.IPv6Network((value, plen))
    return ipaddress.IPv4Network((value, plen))


def _union(keys: Sequence[int], width: int) -> list[Range]:
    """The addresses of the networks ``keys`` (one family, sorted) as ``intervals.union``
    gives them: a range that starts in or right after the last one extends it."""
    out: list[Range] = []
    end = -1
    for k in keys:
        lo = (k >> 8) & _VALUE
        hi = lo + (1 << (width - (k & 0xFF)))
        if lo <= end:
            if hi > end:
                out[-1] = (out[-1][0], hi)
                end = hi
        else:
            out.append((lo, hi))
            end = hi
    return out


class NetList(Sequence[Network]):
    """Distinct networks in their written order, as keys (see the module docstring)."""

    __slots__ = ("keys", "_nets", "_ranges", "_starts", "_sorted")

    def __init__(self, keys: Iterable[int]) -> None:
        self.keys = tuple(keys)
        self._nets: tuple[Network, ...] | None = None
        self._ranges: dict[int, tuple[Range, ...]] = {}
        self._starts: dict[int, list[int]] = {}
        self._sorted: list[int] | None = None  # the keys sorted, when known (``distinct``)

    @classmethod
    def distinct(cls, keys: Sequence[int]) -> NetList:
        """The distinct ``keys``, first occurrence first. They are sorted once — the order the
        unions want, kept for them — and only when two sorted neighbours are equal does a dict
        drop the duplicates (a million keys: half a second each, the sort and the dict)."""
        ordered = sorted(keys)
        got = cls(dict.fromkeys(keys) if any(map(operator.eq, ordered, islice(ordered, 1, None))) else keys)
        got._sorted = ordered  # (duplicates change no union)
        return got

    @classmethod
    def of(cls, nets: Iterable[Network]) -> NetList:
        """The distinct ``nets``, first occurrence first."""
        return cls.distinct(list(map(key_of, nets)))

    @property
    def networks(self) -> tuple[Network, ...]:
        """The networks as ``ipaddress`` objects (made on first use, then kept)."""
        if self._nets is None:
            self._nets = tuple(map(net_of, self.keys))
        return self._nets

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> Network: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[Network, ...]: ...

    def __getitem__(self, i: int | slice) -> Network | tuple[Network, ...]:
        if isinstance(i, slice):
            return tuple(map(net_of, self.keys[i]))
        return net_of(self.keys[i])

    def __iter__(self) -> Iterator[Network]:
        return iter(self.networks)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NetList):
            return self.keys == other.keys
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and self.networks == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.networks)  # as the equal tuple's

    def __repr__(self) -> str:
        return repr(self.networks)

    def ranges(self, version: int) -> tuple[Range, ...]:
        """The addresses of family ``version`` the list holds, as ``intervals.union`` gives them."""
        if not self._ranges:
            keys = self._sorted if self._sorted is not None else sorted(self.keys)
            self._sorted = None  # (needed no more)
            cut = bisect.bisect_left(keys, V6)
            self._ranges[4] = tuple(_union(keys[:cut], 32))
            self._ranges[6] = tuple(_union(keys[cut:], 128))
        return self._ranges[version]

    def contains(self, value: int, version: int) -> bool:
        """Is the address ``value`` of family ``version`` in one of the networks?"""
        spans = self.ranges(version)
        starts = self._starts.get(version)
        if starts is None:
            starts = self._starts[version] = [lo for lo, _ in spans]
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value < spans[i][1]

    def content(self) -> str:
        """Each network as ``{version}{address:x}/{prefixlen}``, joined by ``,`` (what
        ``ir._content`` writes for a tuple of the same networks)."""
        return ",".join([f"6{(k >> 8) & _VALUE:x}/{k & 0xFF}" if k >= V6 else f"4{k >> 8:x}/{k & 0xFF}" for k in self.keys])

