"""Refusals as people and log readers see them: the eBPF backend's counters and events turned
into one line per source per interval, and into the rows of ``sockgate refused``.

TCP Wrappers logged ``refused connect from HOST`` for every refused connection, and fail2ban,
sshguard and DenyHosts were built to read that line. A kernel filter refuses silently and
could refuse millions of packets a second, so sockgate logs differently: the program counts
every refusal per source (``layout.Count``) and sends at most one event per source per event
interval to a ring (``layout.Event``); the ``Aggregator`` here gathers events for an interval
(a minute by default) and yields one ``Refusal`` per service and source, counted from the
kernel's own counter when it can tell how many of that counter's refusals fell inside the
interval, else from the events. A flood of distinct (spoofed) sources is bounded: past
``memory`` sources in one interval the rest are only counted, in one ``Overflow``.

Times: the program stamps ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC); a ``Clock`` — one reading
of the wall clock and the monotonic clock taken together — converts them to wall-clock UTC.
Pure: the caller passes every clock reading and the counter look-up; no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, assert_never

from sockgate.resolve.ranges import BANNED, FORGED
from sockgate.ebpf import layout
from sockgate.ebpf.layout import Count, Event, Origin, Reason, SourceKey
from sockgate.ebpf.maps import ADDR_BYTES, DEFAULT_RULE, LpmKey

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Totals = Callable[[str, SourceKey], "Count | None"]  # (service, source) → the kernel's counter


@dataclass(frozen=True)
class Clock:
    """The wall clock and CLOCK_MONOTONIC read together, in nanoseconds."""

    wall_ns: int
    mono_ns: int

    def iso(self, mono_ns: int) -> str | None:
        """``mono_ns`` as ISO 8601 UTC to the second (``2026-01-02T03:04:05Z``); None for 0,
        which the kernel's records use for "never"."""
        if mono_ns <= 0:
            return None
        return iso_utc(self.wall_ns - self.mono_ns + mono_ns)


_ISO: dict[int, str] = {}  # second → text: a listing's rows share few distinct seconds


def iso_utc(wall_ns: int) -> str:
    sec = wall_ns // 1_000_000_000
    text = _ISO.get(sec)
    if text is None:
        try:
            text = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (OverflowError, OSError, ValueError):  # a hostile time far outside the calendar
            text = "9999-12-31T23:59:59Z" if sec > 0 else "1970-01-01T00:00:00Z"
        if len(_ISO) >= 4096:
            _ISO.clear()
        _ISO[sec] = text
    return text


def decode_event(raw: bytes) -> Event | None:
    """A ring record as an ``Event``, or None when it is not one (short, or neither IPv4 nor
    IPv6): a record is read from memory other processes can write, so any bytes may arrive."""
    if len(raw) < layout.EVENT.size:
        return None
    event = Event.unpack(raw)
    return event if event.family in (4, 6) else None


# -- one line per source per interval -------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A source refused by a service in one interval."""

    service: str
    source: Address
    count: int
    first_ns: int  # CLOCK_MONOTONIC
    last_ns: int
    reason: Reason
    rule: int | None  # the rule's index for Reason.RULE, None for the default
    window_ns: int  # the interval's length
    recovered: bool = False  # found in the counters, its events lost: the cause is not known


@dataclass(frozen=True)
class Overflow:
    """Sources past the aggregator's memory in one interval: counted, not named."""

    service: str
    sources: int
    events: int
    window_ns: int


@dataclass
class _Pending:
    events: int
    first_ns: int
    last_ns: int
    reason: Reason
    rule: int
    recovered: bool = False
    known: bool = False  # recovered, but its cause found elsewhere (its ban)


@dataclass
class Aggregator:
    """Events in, one ``Refusal`` per (service, source) per interval out."""

    interval_ns: int
    window_start: int  # CLOCK_MONOTONIC ns
    memory: int = layout.DEFAULT_COUNTERS
    _pending: dict[tuple[str, SourceKey], _Pending] = field(default_factory=dict)
    _overflow: dict[str, list[int]] = field(default_factory=dict)  # service → [sources, events]
    _reported: dict[tuple[str, SourceKey], int] = field(default_factory=dict)  # counter at the last report

    @property
    def deadline(self) -> int:
        return self.window_start + self.interval_ns

    def add(self, service: str, event: Event) -> None:
        key = (service, SourceKey(event.family, event.addr))
        p = self._pending.get(key)
        if p is not None:
            p.events += 1
            p.first_ns, p.last_ns = min(p.first_ns, event.ts_ns), max(p.last_ns, event.ts_ns)
            p.reason, p.rule = event.reason, event.rule
        elif len(self._pending) < self.memory:
            self._pending[key] = _Pending(1, event.ts_ns, event.ts_ns, event.reason, event.rule)
        else:
            tally = self._overflow.setdefault(service, [0, 0])
            tally[0] += 1  # (a source seen twice past the memory counts twice: only a bound)
            tally[1] += 1

    def recover(self, service: str, counters: Iterable[tuple[SourceKey, Count]],
                banned: Callable[[SourceKey], bool] | None = None) -> None:
        """Sources the kernel's counters show refused in this interval but no event named
        (the ring was full: an attacker hiding among a flood of spoofed sources): added
        without a cause, so ``flush`` logs them with their count too. The counters are the
        truth; the ring is only the wake-up. ``banned`` (the service's ban tries, asked now)
        names the cause of a source banned now: a ``cause unknown`` line about it would feed
        a ban sockgate enforces back to fail2ban, which ignores only ``banned`` lines."""
        for key, c in counters:
            k = (service, key)
            if c.last_ns < self.window_start or k in self._pending or key.address is None:
                continue
            if len(self._pending) >= self.memory:
                tally = self._overflow.setdefault(service, [0, 0])
                tally[0] += 1
                continue
            ban = banned is not None and banned(key)
            self._pending[k] = _Pending(0, max(c.first_ns, self.window_start), c.last_ns, Reason.RULE,
                                        BANNED if ban else DEFAULT_RULE, recovered=True, known=ban)

    def flush(self, now_ns: int, totals: Totals) -> list[Refusal | Overflow]:
        """The interval's lines, and a new interval from ``now_ns``."""
        window = max(now_ns - self.window_start, 0)
        out: list[Refusal | Overflow] = []
        for (service, key), p in self._pending.items():
            count, last = self._count(service, key, p, totals(service, key))
            reason, rule = _classify(p.reason, p.rule)
            address = key.address
            assert address is not None  # add() and recover() key only IPv4 and IPv6 sources
            if p.recovered and count == 0:
                continue  # its counter did not grow after all (the last report had it)
            if forged(address):  # known from the address alone, whatever the ring said (or lost)
                reason, rule = Reason.FORGED, None
            out.append(Refusal(service, address, count, p.first_ns, last, reason, rule, window,
                               p.recovered and not p.known and reason is not Reason.FORGED))
        out += [Overflow(s, n, e, window) for s, (n, e) in self._overflow.items()]
        self._pending, self._overflow = {}, {}
        self.window_start = now_ns
        return out

    def _count(self, service: str, key: SourceKey, p: _Pending, c: Count | None) -> tuple[int, int]:
        """Refusals in this interval: the counter's growth since the last report, or the whole
        counter when the source was first refused in this interval; the events otherwise."""
        if c is None:
            return p.events, p.last_ns
        k = (service, key)
        before = self._reported.pop(k, None)
        if c.first_ns >= self.window_start:
            delta = c.refused
        elif before is not None and c.refused >= before:
            delta = c.refused - before
        else:
            delta = int(p.recovered)  # counted before this reader started, or the LRU forgot it: unknown
            # (a recovered source was refused in this interval: at least once)
        self._reported[k] = c.refused
        while len(self._reported) > self.memory:
            del self._reported[next(iter(self._reported))]
        return max(p.events, delta), max(p.last_ns, c.last_ns)


def forged(address: Address) -> bool:
    """An IPv4-mapped source (``::ffff:0:0/96``) in an IPv6 header: the program refuses it as
    forged before any ban or rule (codegen.py), so that is its cause even when no event said so.
    A line must never name it without ``forged source``: fail2ban reads ``::ffff:V`` as the IPv4
    ``V``, and one spoofed datagram would ban an innocent host."""
    return isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None


def _classify(reason: Reason, rule: int) -> tuple[Reason, int | None]:
    """The reason as the log names it: the program reports a ban or a forged source found in
    its rule tries as ``RULE`` with the lists' rule indexes (resolve.ranges)."""
    if reason is Reason.RULE and rule == BANNED:
        return Reason.BAN, None
    if reason is Reason.RULE and rule == FORGED:
        return Reason.FORGED, None
    if reason is Reason.RULE and rule >= 0:
        return reason, rule
    return reason, None


def cause(reason: Reason, rule: int | None, label: str | None = None) -> str:
    """``rule 2`` (or the rule's label), ``default``, ``banned``, ``rate limit``, ``forged source``."""
    match reason:
        case Reason.RULE:
            return "default" if rule is None else f"rule {label or rule + 1}"
        case Reason.BAN:
            return "banned"
        case Reason.RATE:
            return "rate limit"
        case Reason.FORGED:
            return "forged source"
        case _:
            assert_never(reason)


def describe(r: Refusal, label: str | None = None) -> str:
    """The line's message, in the TCP Wrappers spirit (``refused connect from HOST``):
    ``ssh: refused connect from 203.0.113.5 (3 times in 60 s, rule 2)``. ``service`` is
    written as given: the caller escapes it for its sink."""
    times = "1 time" if r.count == 1 else f"{r.count} times"
    why = "cause unknown: its events were lost" if r.recovered else cause(r.reason, r.rule, label)
    return f"{r.service}: refused connect from {r.source} ({times} in {_seconds(r.window_ns)} s, {why})"


def describe_overflow(o: Overflow) -> str:
    return (f"{o.service}: refused connect from {o.sources} more sources ({o.events} events in "
            f"{_seconds(o.window_ns)} s, not named: more sources than the log remembers)")


def _seconds(ns: int) -> int:
    return max(1, round(ns / 1e9))


def fields(r: Refusal, clock: Clock) -> dict[str, object]:
    """The JSON object of one line (``first_seen``/``last_seen`` wall-clock UTC)."""
    return {"service": r.service, "source": str(r.source), "count": r.count, "first_seen": clock.iso(r.first_ns),
            "last_seen": clock.iso(r.last_ns), "reason": "unknown" if r.recovered else r.reason.name.lower(),
            "rule": None if r.rule is None else r.rule + 1, "interval": _seconds(r.window_ns)}


def overflow_fields(o: Overflow) -> dict[str, object]:
    return {"service": o.service, "unnamed_sources": o.sources, "events": o.events, "interval": _seconds(o.window_ns)}


# -- sockgate refused: the pinned counters and bans -----------------------------------------


def service_of(dirname: str) -> str | None:
    """The service whose objects ``layout.service_dir`` put in ``dirname``, or None for a name
    it would not have made. ``x-`` and hex encodes a name unsafe as a file name (or one that
    starts with ``x-``/``h-`` itself); ``h-`` and a SHA-256 stands for a name too long to
    encode, and is shown as it is.)"""
    if dirname.startswith("x-"):
        try:
            name: str | None = bytes.fromhex(dirname[2:]).decode()
        except ValueError:
            name = None
        return name if name is not None and layout.service_dir(name, "") == "/services/" + dirname else None
    if dirname.startswith("h-"):
        return dirname if re.fullmatch(r"h-[0-9a-f]{64}", dirname) else None
    return dirname if layout.service_dir(dirname, "") == "/services/" + dirname else None


@dataclass(frozen=True)
class CountRow:
    service: str
    source: Address
    count: Count


@dataclass(frozen=True)
class BanRow:
    service: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ban: layout.Ban


def count_row(service: str, key: bytes, value: bytes) -> CountRow | None:
    """A counter entry as a row; None for a key that names no address (hostile or foreign)."""
    if len(key) != layout.SOURCE_KEY.size or len(value) != layout.COUNT_VALUE.size:
        return None
    source = SourceKey.unpack(key)
    address = source.address
    if address is None or source.scope != layout.SERVICE_SCOPE:
        return None
    return CountRow(service, address, Count.unpack(value))


def ban_row(service: str, family: int, key: bytes, value: bytes) -> BanRow | None:
    if len(value) != layout.BAN_VALUE.size:
        return None
    try:
        network = lpm_network(family, key)
    except ValueError:
        return None
    return BanRow(service, network, layout.Ban.unpack(value))


def lpm_network(family: int, key: bytes) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A ban trie's key as a network; ValueError for a key no trie of ``family`` holds."""
    if len(key) != 4 + ADDR_BYTES[family]:
        raise ValueError("wrong key size")
    return LpmKey.unpack(family, key).network


def active(row: BanRow, now_ns: int) -> bool:
    return row.ban.active(now_ns)


def sort_counts(rows: list[CountRow]) -> list[CountRow]:
    """Most refused first; then by service and address, so equal counts keep one order."""
    return sorted(rows, key=lambda r: (-r.count.refused, r.service, r.source.version, int(r.source)))


def count_json(r: CountRow, clock: Clock) -> dict[str, object]:
    """A counter's row; with ``"forged": true`` when its source is IPv4-mapped (``forged``):
    a consumer that bans from these rows must not read ``::ffff:V`` as the IPv4 ``V``."""
    out: dict[str, object] = {"type": "refused", "service": r.service, "source": str(r.source), "count": r.count.refused,
                              "first_seen": clock.iso(r.count.first_ns), "last_seen": clock.iso(r.count.last_ns)}
    if forged(r.source):
        out["forged"] = True
    return out


def ban_json(r: BanRow, clock: Clock) -> dict[str, object]:
    return {"type": "ban", "service": r.service, "source": str(r.network), "origin": origin_name(r.ban.origin),
            "expires": clock.iso(r.ban.expires_ns)}


def origin_name(origin: Origin) -> str:
    return origin.name.lower().replace("_", "-")

