"""The agent's book of host-name answers: which are in force, when each is asked again.

An exact host name in a kernel rule stands for the addresses DNS gives it now
(``policy/forward.py``). An answer is in force until its records' shortest TTL runs out (TTLs
under ``floor`` count as ``floor``, so a TTL of 0 does not turn into a lookup loop); it is
asked again at 90 % of that time, at least once an hour, so a working resolver replaces it
before it expires. A lookup that *fails* (timeout, SERVFAIL, no resolver — not NXDOMAIN, which
is an answer: no addresses) is retried with a doubling delay (``retry`` up to ``retry_max``);
the last good answer stays in force only until it expires. After that the name has no answer:
a match that admits by it admits nobody, and one that refuses by it keeps refusing the last
answer's addresses (``last``) — fail closed both ways: an answer libwrap could no longer get
never admits, and a name whose DNS stops answering (its owner is the one the rule refuses)
cannot make the service uncompilable and so freeze every later reload. A refusing name never
answered keeps its rule in user space (``policy/forward.substitute``).

Pure: the clock is passed in (``now``, seconds on any monotonic scale); the lookups happen in
``agent/names.py``. Values, never mutated: every change returns a new book.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from sockgate.policy.forward import Lookup, admitted, matched
from sockgate.policy.ir import IPAddress

NameState = Literal["pending", "ok", "stale", "failed"]


@dataclass(frozen=True)
class Answer:
    """One lookup's outcome: ``lookup`` None when it failed (``error`` says why)."""

    name: str  # policy.forward.key form
    lookup: Lookup | None
    ttl: float  # the shortest TTL of the records used (meaningless when it failed)
    fetched: float
    error: str | None = None


@dataclass(frozen=True)
class Entry:
    good: Answer | None = None  # the last answer that succeeded
    failures: int = 0  # failed lookups since then
    error: str | None = None  # the last failure's reason
    retry_at: float = float("-inf")  # when a failed, never made or forced lookup is due


@dataclass(frozen=True)
class Row:
    """A name as ``status`` shows it."""

    name: str
    state: NameState  # pending: never answered; stale: refreshing fails, the answer still holds
    admitted: tuple[IPAddress, ...]  # where a match admits
    matched: tuple[IPAddress, ...]  # where a match refuses
    expires: float | None
    error: str | None


@dataclass(frozen=True)
class NameBook:
    entries: Mapping[str, Entry] = field(default_factory=dict)
    floor: float = 2.0
    ceiling: float = 3600.0
    retry: float = 1.0
    retry_max: float = 60.0

    def track(self, names: Iterable[str]) -> NameBook:
        """The book for exactly ``names`` (the policy's): answers of others dropped, new ones due."""
        return replace(self, entries={n: self.entries.get(n, Entry()) for n in dict.fromkeys(names)})

    def expires(self, a: Answer) -> float:
        return a.fetched + max(a.ttl, self.floor)

    def _refresh_at(self, a: Answer) -> float:
        return a.fetched + 0.9 * min(max(a.ttl, self.floor), self.ceiling)

    def update(self, a: Answer) -> tuple[NameBook, bool]:
        """The book with answer ``a`` recorded, and whether the name's answer in force changed
        (at ``a.fetched``). Answers for names not tracked, or older than the one held, are
        ignored."""
        old = self.entries.get(a.name)
        if old is None or (old.good is not None and a.fetched < old.good.fetched):
            return self, False
        if a.lookup is not None:
            new = Entry(good=a, retry_at=float("inf"))
        else:
            delay = min(self.retry * 2**min(old.failures, 30), self.retry_max)
            new = Entry(old.good, old.failures + 1, a.error or "lookup failed", a.fetched + delay)
        book = replace(self, entries={**self.entries, a.name: new})
        return book, self._force(old, a.fetched) != book._force(new, a.fetched)

    def _force(self, e: Entry, now: float) -> Lookup | None:
        if e.good is None or now >= self.expires(e.good):
            return None
        return e.good.lookup

    def _next(self, e: Entry) -> float:
        if e.good is None or e.failures:
            return e.retry_at
        return min(self._refresh_at(e.good), e.retry_at)

    def ask_again(self, now: float) -> NameBook:
        """Every name due at ``now`` (the hosts file or resolv.conf changed, SIGHUP); the
        answers in force stay until replaced or expired."""
        return replace(self, entries={n: replace(e, retry_at=min(e.retry_at, now)) for n, e in self.entries.items()})

    def due(self, now: float) -> tuple[str, ...]:
        """The names to look up now."""
        return tuple(n for n, e in self.entries.items() if self._next(e) <= now)

    def wake_at(self, asking: Container[str] = (), now: float = float("-inf")) -> float | None:
        """The next time something is due or an answer expires (None: nothing tracked); the
        names in ``asking`` (looked up now) are not due again until their answer comes, and
        answers that expired by ``now`` are past (not a time to wake for again)."""
        times = [self._next(e) for n, e in self.entries.items() if n not in asking]
        times += [t for e in self.entries.values() if e.good is not None and (t := self.expires(e.good)) > now]
        return min(times, default=None)

    def in_force(self, now: float) -> dict[str, Lookup]:
        """The answers to substitute (``policy.forward.substitute``); a name missing failed."""
        out: dict[str, Lookup] = {}
        for n, e in self.entries.items():
            lk = self._force(e, now)
            if lk is not None:
                out[n] = lk
        return out

    def last(self, now: float) -> dict[str, Lookup]:
        """The last good answers of the names with none in force at ``now`` (expired, the
        refresh failing): what a match that refuses by such a name keeps refusing."""
        return {n: e.good.lookup for n, e in self.entries.items()
                if e.good is not None and e.good.lookup is not None and self._force(e, now) is None}

    def rows(self, now: float) -> tuple[Row, ...]:
        return tuple(self._row(n, e, now) for n, e in sorted(self.entries.items()))

    def _row(self, name: str, e: Entry, now: float) -> Row:
        lk = self._force(e, now)
        expires = self.expires(e.good) if e.good is not None else None
        state: NameState
        if lk is None:
            state = "failed" if e.failures else "pending"
        else:
            state = "stale" if e.failures else "ok"
        if lk is None:
            return Row(name, state, (), (), expires, e.error)
        return Row(name, state, admitted(lk), matched(lk), expires, e.error)
