"""Connection limits and rate bans as a sans-IO state machine; the clock is passed in.

The proxy asks ``admit(source, now)`` before it connects a client to the backend and calls
``release(source)`` when the connection ends; ``expire(now)`` lifts bans whose time is up and
forgets idle sources. Nothing here reads a clock, sleeps or touches a socket, so every rule
is tested with plain numbers (``tests/core/test_limits.py``), in the manner of h11.

Rates are sliding windows: ``count/seconds`` admits a connection when fewer than ``count``
were admitted in the last ``seconds`` — exactly what "at most N per minute" says (a token
bucket would let up to twice that through in a window: a full burst, then its refill). Each
source keeps the times of its last ``count`` admissions (a deque, so memory per source is
bounded by the rate's count), and a source is forgotten once its window is empty and it
holds no connection, so a scan from many addresses cannot grow the tables past one window.

A source that exceeds its *per-source* rate is banned for ``ban_seconds`` when the limits
give one; exceeding a service-wide limit or a concurrency limit refuses the connection but
bans nobody (that is not one source's fault). While banned, every attempt is refused and does
not extend the ban.

``FlowTable`` is the UDP relay's table of flows: not a refusal but a choice of which flow a
new one displaces, so a full table costs the source holding the most, not everyone.

What a *source* is, for every per-source count and ban of the proxy (limits, bans and the
kernel filter's ban list, UDP flow caps, connections per source, name lookups):
``source_of``. An IPv4 address is one; an IPv6 host picks any address of its /64 (the
interface identifier, RFC 4291 section 2.5.1), so there the /64 is one source — counted per
/128, one host would get a limit, a ban and a flow quota for each of its 2^64 addresses.
Except where a /64 is not one host's: link-local fe80::/10 (every neighbour on every link
shares fe80::/64, and the scope is gone by then), ::/64 (loopback ::1 and the IPv4-compatible
::a.b.c.d) and NAT64's 64:ff9b::/96 (every IPv4 client behind the translator): there each
address is its own source, so one neighbour's ban is not everybody's.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Hashable, TypeVar

from sockgate.policy.ir import IPAddress, Limits, Rate

K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound=Hashable)
Source = ipaddress.IPv4Address | ipaddress.IPv6Network
_NAT64 = int(ipaddress.IPv6Address("64:ff9b::"))  # RFC 6052 well-known prefix, a /96


def source_of(address: IPAddress) -> Source:
    """The source ``address`` belongs to: an IPv4 address (also when written IPv4-mapped), or
    an IPv6 address's /64. A ban of it is a network the kernel filter can drop as a whole."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        value = int(address)
        if address.is_link_local or value >> 64 == 0 or value >> 32 == _NAT64 >> 32:
            return ipaddress.IPv6Network((value, 128))  # a /64 here is many hosts' (module docstring)
        return ipaddress.IPv6Network((value >> 64 << 64, 64))
    return address


def as_network(source: Hashable) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A banned ``source_of`` value as the network the kernel filter drops (None: not an IP
    source, e.g. a Unix peer's uid)."""
    if isinstance(source, (ipaddress.IPv4Address, ipaddress.IPv6Network)):
        return ipaddress.ip_network(source)
    return None


@dataclass(frozen=True)
class LimitOutcome:
    """The outcome of ``admit``. ``banned_until`` is set when this attempt started a ban."""

    ok: bool
    reason: str = ""
    banned_until: float | None = None


OK = LimitOutcome(True)


def _room(window: deque[float], rate: Rate, now: float) -> bool:
    """Drop admissions older than the window; is there room for one more?"""
    while window and window[0] <= now - rate.seconds:
        window.popleft()
    return len(window) < rate.count


@dataclass
class _Source:
    active: int = 0
    window: deque[float] = field(default_factory=deque)


@dataclass
class Limiter(Generic[K]):
    """Limits of one service (or one rule): per source and in total, with bans."""

    limits: Limits
    sources: dict[K, _Source] = field(default_factory=dict)
    bans: dict[K, float] = field(default_factory=dict)  # source -> ban end
    active_total: int = 0
    window_total: deque[float] = field(default_factory=deque)

    def banned(self, source: K, now: float) -> bool:
        until = self.bans.get(source)
        return until is not None and now < until

    def admit(self, source: K, now: float) -> LimitOutcome:
        """May ``source`` open one more connection at ``now``? Counts it when it may."""
        lim = self.limits
        if self.banned(source, now):
            return LimitOutcome(False, f"banned until +{self.bans[source] - now:.1f}s")
        st = self.sources.get(source) or _Source()
        if lim.concurrent_per_source is not None and st.active >= lim.concurrent_per_source:
            return LimitOutcome(False, f"over the per-source limit of {lim.concurrent_per_source} connections")
        if lim.concurrent_total is not None and self.active_total >= lim.concurrent_total:
            return LimitOutcome(False, f"over the service limit of {lim.concurrent_total} connections")
        if lim.rate_per_source is not None and not _room(st.window, lim.rate_per_source, now):
            self.sources[source] = st
            return self._over_rate(source, now)
        if lim.rate_total is not None:
            if not _room(self.window_total, lim.rate_total, now):
                return LimitOutcome(False, f"over the service rate of {lim.rate_total}")
            self.window_total.append(now)
        if lim.rate_per_source is not None:
            st.window.append(now)
        st.active += 1
        self.sources[source] = st
        self.active_total += 1
        return OK

    def _over_rate(self, source: K, now: float) -> LimitOutcome:
        lim = self.limits
        why = f"over the per-source rate of {lim.rate_per_source}"
        if lim.ban_seconds:
            until = now + lim.ban_seconds
            self.bans[source] = until
            return LimitOutcome(False, f"{why}; banned for {lim.ban_seconds:g}s", banned_until=until)
        return LimitOutcome(False, why)

    def release(self, source: K) -> None:
        """A connection admitted for ``source`` has ended."""
        st = self.sources.get(source)
        if st is None or st.active == 0:
            return
        st.active -= 1
        self.active_total -= 1

    def expire(self, now: float) -> list[K]:
        """Lift bans that are over (returned, so the kernel filter can be rebuilt) and forget
        sources with no connection and a full bucket."""
        lifted = [s for s, until in self.bans.items() if until <= now]
        for s in lifted:
            del self.bans[s]
        rate = self.limits.rate_per_source
        idle = [
            s for s, st in self.sources.items() if st.active == 0 and (rate is None or not st.window or st.window[-1] <= now - rate.seconds)
        ]
        for s in idle:
            del self.sources[s]
        return lifted

    def next_expiry(self) -> float | None:
        """When the earliest ban ends (None: no ban)."""
        return min(self.bans.values(), default=None)

    def active_bans(self, now: float) -> list[K]:
        return [s for s, until in self.bans.items() if until > now]


@dataclass
class FlowTable(Generic[K, S]):
    """Which UDP flows to keep when a new one arrives: a cap per source and a fair choice of
    victim when the table is full, so no one source can lock the others out.

    A flow is keyed by the client's address and port (``K``) and belongs to a source (``S``:
    its address). Before a flow is added, ``make_room`` names the flows to end first:

    * a source already at ``per_source`` flows gives up its own least recently used flow
      (cycling source ports only recycles the cycler's own flows);
    * a full table gives up the least recently used flow of the source holding the most
      flows; a source holding as many as anyone gives up its own, so nobody is evicted for a
      source that already has its share. Among sources holding equally many, the one that
      least recently added, used or lost a flow pays: an active client stays, and
      evictions go round the idle ones.

    ``touch`` on every datagram keeps the recency order. Every operation is O(1): sources are
    kept in buckets by how many flows they hold, each bucket ordered by activity.
    """

    total: int
    per_source: int
    owner: dict[K, S] = field(default_factory=dict)
    flows: dict[S, dict[K, None]] = field(default_factory=dict)  # insertion order = recency
    buckets: dict[int, dict[S, None]] = field(default_factory=dict)  # flow count -> sources
    top: int = 0

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_source < 1:
            raise ValueError("flow limits must be at least 1")

    def __len__(self) -> int:
        return len(self.owner)

    def __contains__(self, key: object) -> bool:
        return key in self.owner

    def make_room(self, source: S) -> list[K]:
        """The flows to end (oldest first) before ``source`` may add one."""
        mine = self.flows.get(source, {})
        if len(mine) >= self.per_source:
            return list(mine)[: len(mine) - self.per_source + 1]
        if len(self.owner) < self.total:
            return []
        victim_source = source if len(mine) >= self.top else next(iter(self.buckets[self.top]))
        return [next(iter(self.flows[victim_source]))]

    def add(self, key: K, source: S) -> None:
        if key in self.owner:
            self.touch(key)
            return
        mine = self.flows.setdefault(source, {})
        self._move(source, len(mine), len(mine) + 1)
        mine[key] = None
        self.owner[key] = source

    def touch(self, key: K) -> None:
        """``key`` saw a datagram: it and its source become the most recently used."""
        source = self.owner[key]
        mine = self.flows[source]
        del mine[key]
        mine[key] = None
        bucket = self.buckets[len(mine)]
        del bucket[source]
        bucket[source] = None

    def remove(self, key: K) -> None:
        source = self.owner.pop(key, None)
        if source is None:
            return
        mine = self.flows[source]
        del mine[key]
        self._move(source, len(mine) + 1, len(mine))
        if not mine:
            del self.flows[source]

    def count(self, source: S) -> int:
        return len(self.flows.get(source, ()))

    def _move(self, source: S, old: int, new: int) -> None:
        if old:
            bucket = self.buckets[old]
            del bucket[source]
            if not bucket:
                del self.buckets[old]
        if new:
            self.buckets.setdefault(new, {})[source] = None
        # counts change by one at a time: when the largest bucket empties, the source that
        # left it holds one less, so that is the largest now (or the table is empty)
        if new > self.top:
            self.top = new
        elif old == self.top and old not in self.buckets:
            self.top = new
