"""Connection limits and rate bans as a sans-IO state machine; the clock is passed in.

The proxy asks ``admit(source, now)`` before it connects a client to the backend and calls
``release(source)`` when the connection ends; ``expire(now)`` lifts bans whose time is up and
forgets idle sources. Nothing here reads a clock, sleeps or touches a socket, so every rule
is tested with plain numbers (``tests/core/test_limits.py``), in the manner of h11.

Rates use GCRA (the generic cell rate algorithm, a token bucket held as one number per
source: the "theoretical arrival time"). ``count/seconds`` lets ``count`` connections through
back to back and then one every ``seconds/count``; memory is one float per recently seen
source, and a source is forgotten once its bucket is full again and it holds no connection,
so a scan from many addresses cannot grow the tables without bound past one rate window.

A source that exceeds its *per-source* rate is banned for ``ban_seconds`` when the limits
give one; exceeding a service-wide limit or a concurrency limit refuses the connection but
bans nobody (that is not one source's fault). While banned, every attempt is refused and does
not extend the ban.
"""

from __future__ import annotations

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


class _Gcra:
    """One rate: ``allow(tat, now)`` → new tat, or None when the rate is exceeded."""

    def __init__(self, rate: Rate) -> None:
        self.interval = rate.seconds / rate.count
        self.tolerance = rate.seconds - self.interval

    def allow(self, tat: float, now: float) -> float | None:
        t = max(tat, now)
        if t - now > self.tolerance + 1e-9:
            return None
        return t + self.interval


@dataclass
class _Source:
    active: int = 0
    tat: float = 0.0


@dataclass
class Limiter(Generic[K]):
    """Limits of one service (or one rule): per source and in total, with bans."""

    limits: Limits
    sources: dict[K, _Source] = field(default_factory=dict)
    bans: dict[K, float] = field(default_factory=dict)  # source -> ban end
    active_total: int = 0
    tat_total: float = 0.0

    def __post_init__(self) -> None:
        lim = self.limits
        self._rate = _Gcra(lim.rate_per_source) if lim.rate_per_source else None
        self._rate_total = _Gcra(lim.rate_total) if lim.rate_total else None

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
        tat = st.tat
        if self._rate is not None:
            new = self._rate.allow(st.tat, now)
            if new is None:
                return self._over_rate(source, now)
            tat = new
        if self._rate_total is not None:
            new_total = self._rate_total.allow(self.tat_total, now)
            if new_total is None:
                return Verdict(False, f"over the service rate of {lim.rate_total}")
            self.tat_total = new_total
        st.tat = tat
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
        idle = [s for s, st in self.sources.items() if st.active == 0 and st.tat <= now]
        for s in idle:
            del self.sources[s]
        return lifted

    def next_expiry(self) -> float | None:
        """When the earliest ban ends (None: no ban)."""
        return min(self.bans.values(), default=None)

    def active_bans(self, now: float) -> list[K]:
        return [s for s, until in self.bans.items() if until > now]
