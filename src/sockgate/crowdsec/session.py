"""The bouncer's schedule, sans I/O: which request comes next, when, and what ``status`` says.

The edge (``sockgate.crowdsec.lapi``) asks ``request()`` whether to pull with ``startup=true``,
performs it, and reports back ``received(body)`` or ``failed(reason)``; ``delay(u)`` says how
long to wait (``u`` a uniform draw in [0, 1) the edge supplies, so tests choose it). While the
LAPI answers, the wait is the configured interval. After a failure it grows exponentially
(1 s, 2 s, 4 s... up to a cap) with "equal jitter" — half the step fixed, half drawn — so a
fleet whose LAPI came back does not return in one wave, and no bouncer polls a dead LAPI faster
than half a step. During an outage the decisions held stay enforced (they still expire on
their own clock: a ban the LAPI would have lifted ends no later than its duration said), and
the next successful pull is a startup pull (stream.py says why).

A full resync also comes every ``resync_s`` (an hour by default) while the LAPI answers: the
stream is deltas, and a delta the LAPI never sends — a deletion it made while writing another
answer that got lost without an error, a database restored from a backup, a LAPI replaced
behind the same address on a fresh database without a failed pull in between — would
otherwise last until the decision ends or the agent restarts. A startup answer replaces the
state (stream.py), so whatever was missed is right again within ``resync_s``. At 100,000
decisions a full answer costs the agent about 3.5 s of CPU (docs/benchmarks.md): once an
hour, 0.1 %. A decision sent again keeps its end (stream.py), so a resync that changed nothing
changes nothing downstream. A *periodic* full answer that would lift more than half of the
decisions held (and at least ``MASS_LIFT``) is not applied at once: a LAPI answering from an
empty or stale database for a moment (a restore, a replica behind) would otherwise lift every
ban once an hour. The whole list is asked again at the next pull, and that answer is applied,
whatever it says (a real mass deletion costs one interval).
"""

from __future__ import annotations

from dataclasses import dataclass

from sockgate.crowdsec.stream import (
    DEFAULT_CAPACITY,
    Batch,
    DEFAULT_MAX_ENTRIES,
    Report,
    StreamError,
    StreamState,
    parse,
)
from sockgate.policy.source import escape

DEFAULT_INTERVAL_S = 10.0  # crowdsec-firewall-bouncer's default update_frequency
DEFAULT_RESYNC_S = 3600.0  # a full (startup) pull this often while the LAPI answers
MAX_REASON = 200  # characters of a failure kept for status
MASS_LIFT = 100  # a periodic resync lifting at least this many, and over half, is asked again first


@dataclass(frozen=True)
class Backoff:
    first_s: float = 1.0
    cap_s: float = 60.0

    def delay(self, failures: int, u: float) -> float:
        """The wait after ``failures`` (>= 1) failures in a row: half fixed, half jitter."""
        step = min(self.cap_s, self.first_s * 2.0 ** min(max(failures, 1) - 1, 62))
        return step / 2 + min(max(u, 0.0), 1.0) * step / 2


@dataclass(frozen=True)
class Status:
    """What ``sockgate status`` shows of the bouncer."""

    up: bool  # the last pull succeeded
    since_ns: int | None  # when the LAPI last changed from up to down or back (None: never asked)
    failures: int  # failed pulls in a row
    last_error: str | None
    last_success_ns: int | None
    decisions: int
    last_report: Report | None


class Session:
    def __init__(self, *, interval_s: float = DEFAULT_INTERVAL_S, backoff: Backoff = Backoff(),
                 capacity: int = DEFAULT_CAPACITY, max_entries: int = DEFAULT_MAX_ENTRIES,
                 resync_s: float = DEFAULT_RESYNC_S) -> None:
        if not interval_s > 0:
            raise ValueError(f"the stream interval must be positive, not {interval_s}")
        if not resync_s > 0:
            raise ValueError(f"the resync interval must be positive, not {resync_s}")
        self.interval_s = interval_s
        self.resync_s = resync_s
        self._full: int | None = None  # when the last startup answer was taken (ns)
        self.backoff = backoff
        self.max_entries = max_entries
        self.state = StreamState(capacity)
        self._startup = True
        self._failures = 0
        self._up: bool | None = None
        self._since: int | None = None
        self._error: str | None = None
        self._success: int | None = None
        self._report: Report | None = None
        self.doubted: str | None = None  # a periodic resync held back (module doc), for status

    def request(self, now_ns: int | None = None) -> bool:
        """Whether the next pull is ``startup=true``: after a failure, at the start, and
        ``resync_s`` after the last full answer (module doc; ``now_ns`` None: not yet due)."""
        if self._startup:
            return True
        return now_ns is not None and self._full is not None and now_ns - self._full >= self.resync_s * 1e9

    def received(self, body: bytes, now_ns: int, *, startup: bool) -> Report:
        """An answer to a pull made with ``startup``. A body that is no stream answer counts as
        a failed pull (``StreamError`` is raised after it is recorded)."""
        try:
            batch = parse(body, now_ns, startup=startup, max_entries=self.max_entries)
        except StreamError as e:
            self.failed(now_ns, str(e))
            raise
        self.state.expire(now_ns)
        if startup and not self._startup and (doubt := self._doubt(batch)) is not None:
            self.doubted = doubt
            self._startup = True  # the whole list again at the next pull, applied then
            self._success, self._failures, self._error = now_ns, 0, None
            self._mark(True, now_ns)
            return Report(False, 0, 0, 0, 0, 0, (doubt,), (), 0, frozenset())
        self.doubted = None
        report = self.state.apply(batch)
        if startup:
            self._full = now_ns
        self._startup = False
        self._failures = 0
        self._error = None
        self._success = now_ns
        self._report = report
        self._mark(True, now_ns)
        return report

    def _doubt(self, batch: Batch) -> str | None:
        """Why a periodic full answer is held back, or None (module doc)."""
        held = len(self.state)
        lifted = held - sum(1 for d in batch.new if self.state.holds(d.id))
        if lifted < MASS_LIFT or 2 * lifted <= held:
            return None
        return f"a full resync would lift {lifted} of {held} decisions: asked again before applying it"

    def failed(self, now_ns: int, reason: str) -> None:
        """A pull that got no usable answer: keep the decisions, resync at the next one."""
        self._startup = True
        self._failures += 1
        self._error = escape(reason[:MAX_REASON])
        self._mark(False, now_ns)

    def delay(self, u: float) -> float:
        """Seconds until the next pull."""
        return self.interval_s if self._failures == 0 else self.backoff.delay(self._failures, u)

    def status(self) -> Status:
        return Status(bool(self._up), self._since, self._failures, self._error, self._success,
                      len(self.state), self._report)

    def _mark(self, up: bool, now_ns: int) -> None:
        if self._up is not up:
            self._up, self._since = up, now_ns
