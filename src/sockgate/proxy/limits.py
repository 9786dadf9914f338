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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Hashable, TypeVar

from sockgate.policy.ir import Limits, Rate

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Verdict:
    """The outcome of ``admit``. ``banned_until`` is set when this attempt started a ban."""

    ok: bool
    reason: str = ""
    banned_until: float | None = None


OK = Verdict(True)


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

    def admit(self, source: K, now: float) -> Verdict:
        """May ``source`` open one more connection at ``now``? Counts it when it may."""
        lim = self.limits
        if self.banned(source, now):
            return Verdict(False, f"banned until +{self.bans[source] - now:.1f}s")
        st = self.sources.get(source) or _Source()
        if lim.concurrent_per_source is not None and st.active >= lim.concurrent_per_source:
            return Verdict(False, f"over the per-source limit of {lim.concurrent_per_source} connections")
        if lim.concurrent_total is not None and self.active_total >= lim.concurrent_total:
            return Verdict(False, f"over the service limit of {lim.concurrent_total} connections")
        if lim.rate_per_source is not None and not _room(st.window, lim.rate_per_source, now):
            self.sources[source] = st
            return self._over_rate(source, now)
        if lim.rate_total is not None:
            if not _room(self.window_total, lim.rate_total, now):
                return Verdict(False, f"over the service rate of {lim.rate_total}")
            self.window_total.append(now)
        if lim.rate_per_source is not None:
            st.window.append(now)
        st.active += 1
        self.sources[source] = st
        self.active_total += 1
        return OK

    def _over_rate(self, source: K, now: float) -> Verdict:
        lim = self.limits
        why = f"over the per-source rate of {lim.rate_per_source}"
        if lim.ban_seconds:
            until = now + lim.ban_seconds
            self.bans[source] = until
            return Verdict(False, f"{why}; banned for {lim.ban_seconds:g}s", banned_until=until)
        return Verdict(False, why)

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
