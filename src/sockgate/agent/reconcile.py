"""From what is wanted and what is seen to the changes that make them agree.

``plan(desired, observed, retry, now)`` looks at each socket once and puts it in exactly one
place: a ``Change`` (attach, reload, replace or detach), ``adopted`` (it already carries the
service, digest and backend wanted: an agent that restarts touches nothing), or ``unguarded``
with the reason — never nowhere, since a selected socket left out silently is a socket nobody
guards. What cannot be fixed by trying again (a foreign, modified or locked filter; two
services claiming one socket) is reported without a retry time and looked at again only when
something about it changes; what may pass (permission, a kernel refusal) is retried with a
backoff of 0.1 s × 2ⁿ up to 30 s, for as long as it fails.

``RetryBook`` remembers failures between plans. It is immutable and the clock is passed in, so
a plan is a function of its arguments and tests run on a fake clock. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Collection, Literal, Mapping, Sequence, Union, assert_never

from sockgate.agent.desired import Desired
from sockgate.agent.enrol import Conflict, select
from sockgate.agent.model import GuardState, Observed, Unguarded, UnguardedKind, Want

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
# What retrying alone cannot fix: looked at again when the socket or the wanted program changes.
STUCK: frozenset[UnguardedKind] = frozenset({"locked", "foreign", "modified", "conflict"})

ChangeKind = Literal["attach", "reload", "replace", "detach"]


@dataclass(frozen=True)
class Change:
    cookie: int
    want: Want | None  # None: detach (no longer selected, and carries one of our services)
    guard: GuardState  # what is on the socket now

    @property
    def kind(self) -> ChangeKind:
        if self.want is None:
            return "detach"
        if self.guard.state == "none":
            return "attach"
        g = self.guard
        if g.state == "sockgate" and (g.service, g.backend) == (self.want.service, self.want.backend):
            return "reload"
        return "replace"


def backoff(attempts: int) -> float:
    """The wait after the ``attempts``-th failure in a row: 0.1 s, 0.2 s, 0.4 s … 30 s."""
    return min(BACKOFF_FIRST * 2.0 ** min(max(attempts - 1, 0), 16), BACKOFF_MAX)


@dataclass(frozen=True)
class Attempt:
    kind: UnguardedKind
    reason: str
    attempts: int
    retry_at: float | None  # None: until something changes
    tried: Change | None  # what was tried; a different change now is "something changed"


def _frozen(d: dict[int, Attempt]) -> Mapping[int, Attempt]:
    return MappingProxyType(d)


@dataclass(frozen=True)
class RetryBook:
    """Failures by socket cookie. Every method returns a new book."""

    entries: Mapping[int, Attempt] = field(default_factory=lambda: _frozen({}))

    def __post_init__(self) -> None:
        if not isinstance(self.entries, MappingProxyType):
            object.__setattr__(self, "entries", _frozen(dict(self.entries)))

    def failed(self, cookie: int, kind: UnguardedKind, reason: str, now: float, tried: Change | None = None) -> RetryBook:
        """One more failure of ``cookie``. ``gone`` forgets it (the socket closed)."""
        if kind == "gone":
            return self.succeeded(cookie)
        before = self.entries.get(cookie)
        attempts = (before.attempts if before is not None else 0) + 1
        retry_at = None if kind in STUCK else now + backoff(attempts)
        return RetryBook({**self.entries, cookie: Attempt(kind, reason, attempts, retry_at, tried)})

    def succeeded(self, cookie: int) -> RetryBook:
        if cookie not in self.entries:
            return self
        return RetryBook({c: a for c, a in self.entries.items() if c != cookie})

    def due(self, now: float) -> frozenset[int]:
        """The sockets whose wait is over."""
        return frozenset(c for c, a in self.entries.items() if a.retry_at is not None and a.retry_at <= now)

    def forget(self, alive: Collection[int]) -> RetryBook:
        """Only the sockets in ``alive`` (after a full scan: the others closed)."""
        return RetryBook({c: a for c, a in self.entries.items() if c in alive})

    def next_wake(self) -> float | None:
        times = [a.retry_at for a in self.entries.values() if a.retry_at is not None]
        return min(times) if times else None

    def unguarded(self, cookie: int) -> Unguarded | None:
        a = self.entries.get(cookie)
        return None if a is None else Unguarded(cookie, a.reason, a.kind, a.attempts, a.retry_at)


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    adopted: tuple[int, ...]  # carry what is wanted already: untouched
    unguarded: tuple[Unguarded, ...]
    retry: RetryBook  # the book with what this plan found (unreadable sockets, conflicts)

    @property
    def next_wake(self) -> float | None:
        """The earliest retry this plan leaves pending."""
        times = [u.retry_at for u in self.unguarded if u.retry_at is not None]
        return min(times) if times else None


def plan(desired: Desired, observed: Sequence[Observed], retry: RetryBook, now: float,
         retired: Collection[str] = ()) -> Plan:
    """The changes that make ``observed`` match ``desired``. ``retired`` names services a
    previous policy had and this one dropped: their sockets are detached with those whose
    service no longer selects them. A filter of a service this agent never had (a manual
    ``sockgate attach``) is left alone."""
    ours = {s.name for s in desired.services} | set(retired)
    changes: list[Change] = []
    adopted: list[int] = []
    unguarded: list[Unguarded] = []
    book = retry
    for sock in _unique(observed):
        outcome, book = _one(desired, sock, book, now, ours)
        if isinstance(outcome, Change):
            changes.append(outcome)
        elif isinstance(outcome, Unguarded):
            unguarded.append(outcome)
        elif outcome == "adopted":
            adopted.append(sock.cookie)
    return Plan(tuple(changes), tuple(adopted), tuple(unguarded), book)


Outcome = Union[Change, Unguarded, Literal["adopted", "ignored"]]


def _one(desired: Desired, sock: Observed, book: RetryBook, now: float, ours: Collection[str]) -> tuple[Outcome, RetryBook]:
    wanted = select(desired, sock)
    if isinstance(wanted, Conflict):
        book = book.failed(sock.cookie, "conflict", wanted.reason, now) if _new_stuck(book, sock.cookie, "conflict") else book
        return _reported(book, sock.cookie), book
    if wanted is None:
        return _unselected(desired, sock, book, now, ours)
    if sock.unreadable is not None:
        return _unreadable(sock, book, now, f"cannot be read: {sock.unreadable}")
    g = sock.guard
    if g.state == "sockgate" and (g.service, g.digest, g.backend) == (wanted.service, wanted.digest, wanted.backend):
        return "adopted", book.succeeded(sock.cookie)
    change = Change(sock.cookie, wanted, g)
    stuck = _stuck_reason(g)
    if stuck is not None:
        kind, reason = stuck
        if _new_stuck(book, sock.cookie, kind):
            book = book.failed(sock.cookie, kind, reason, now, change)
        return _reported(book, sock.cookie), book
    return _attempt(change, book, now)


def _unselected(desired: Desired, sock: Observed, book: RetryBook, now: float,
                ours: Collection[str]) -> tuple[Outcome, RetryBook]:
    if sock.unreadable is not None:
        if not sock.holders and any(s.selector.daemon for s in desired.services):
            # Whose it is cannot be told, and it may be an enrolled daemon's: say so.
            return _unreadable(sock, book, now, f"its holders cannot be read ({sock.unreadable}): it may belong to an enrolled daemon")
        return "ignored", book.succeeded(sock.cookie)  # nothing read can be trusted, nor acted on
    g = sock.guard
    if g.state == "sockgate" and g.service in ours:
        return _attempt(Change(sock.cookie, None, g), book, now)
    return "ignored", book.succeeded(sock.cookie)


def _unreadable(sock: Observed, book: RetryBook, now: float, reason: str) -> tuple[Outcome, RetryBook]:
    a = book.entries.get(sock.cookie)
    if a is None or a.retry_at is None or a.retry_at <= now:
        book = book.failed(sock.cookie, "permission", reason, now)
    return _reported(book, sock.cookie), book


def _attempt(change: Change, book: RetryBook, now: float) -> tuple[Outcome, RetryBook]:
    """The change, unless an earlier try of the very same change failed and its wait (or, for
    a stuck kind, a change of circumstances) is not over."""
    a = book.entries.get(change.cookie)
    if a is None or a.tried != change:
        return change, book
    if a.retry_at is not None and a.retry_at <= now:
        return change, book
    return _reported(book, change.cookie), book


def _stuck_reason(g: GuardState) -> tuple[UnguardedKind, str] | None:
    lock = " and locked (SO_LOCK_FILTER)" if g.locked else ""
    match g.state:
        case "foreign" | "ebpf":
            return "foreign", f"carries a filter sockgate did not put there{lock}; left as it is"
        case "modified":
            return "modified", f"carries a modified sockgate filter (claims {g.service} {g.digest}){lock}; left as it is"
        case "sockgate":
            return ("locked", f"stale guard: locked (SO_LOCK_FILTER) with sockgate's earlier program ({g.service} "
                              f"{g.digest}), which stays in force until the socket closes") if g.locked else None
        case "none":
            return ("locked", "its filter is locked (SO_LOCK_FILTER): it cannot be changed until the socket closes") if g.locked else None
        case _ as unreachable:
            assert_never(unreachable)


def _new_stuck(book: RetryBook, cookie: int, kind: UnguardedKind) -> bool:
    a = book.entries.get(cookie)
    return a is None or a.kind != kind


def _reported(book: RetryBook, cookie: int) -> Unguarded:
    u = book.unguarded(cookie)
    assert u is not None
    return u


def _unique(observed: Sequence[Observed]) -> list[Observed]:
    """One entry per socket (a full scan and an event may both name it; the later wins)."""
    by: dict[int, Observed] = {}
    for o in observed:
        by[o.cookie] = o
    return list(by.values())

