"""CrowdSec's decision stream as a state machine: response bodies in, the bans to enforce out.

Theory of operation. A bouncer asks the Local API ``GET /v1/decisions/stream?startup=true``
once, and gets every active decision in ``new``; then ``startup=false`` every few seconds, and
gets the decisions made (``new``) and deleted or expired (``deleted``) since its previous
successful pull. The LAPI keeps that "previous pull" per bouncer key, in its database, and
moves it when it has *written* a response (crowdsec ``pkg/apiserver/controllers/v1/
decisions.go``, ``UpdateBouncerLastPull`` after ``StreamDecision``): a response lost on the way
(timeout, reset, a LAPI killed mid-write, a proxy's 502) is a delta nobody will send again. So
after any failed pull the next request is ``startup=true`` again, and a startup answer
*replaces* the state: the full list is the truth, whatever was missed. A LAPI restarted on the
same database would have served the right delta, but one restarted on a fresh database, or a
different LAPI behind the same address (CrowdSec's multi-LAPI set-ups), would not; a full
resync after an outage costs one large response and is always right.

Decisions are held by their ``id``, not by their value: two decisions on one address (a 4 h
ban from a scenario, a 24 h one from an operator) are two entries, and deleting one keeps the
other enforcing — deleting by value, as simple bouncers do, would lift a ban still in force. A
network is banned until the latest expiry of the decisions on it. Deltas overlap (the LAPI
re-sends deletions of the last two seconds), so every step is idempotent.

Every entry is hostile: an entry that is malformed (not an object, a missing or mistyped
field, an address that does not parse, a duration that is not Go's ``time.Duration`` syntax)
is rejected alone and counted, never the batch; decision types other than ``ban`` (``captcha``,
``throttle``, custom ones) and scopes other than ``Ip`` and ``Range`` (``Country``, ``AS``...)
are ignored and counted. A deletion must name the network the decision was held for, else it
is rejected (a deletion lifts a ban: it is the one thing a garbled entry must not do). A body
that is not a stream answer at all raises ``StreamError`` and changes nothing. The number of
entries read from one answer and the number of decisions held are bounded; what does not fit
is counted, so ``status`` can say so.

Pure: bytes and the caller's clock (CLOCK_MONOTONIC, ns) in, values out; the HTTP client is
``sockgate.crowdsec.lapi``. Expiries are the receipt time plus the remaining duration the LAPI
computed when it wrote the answer, so a ban lasts at most one transfer time longer, never less.
"""

from __future__ import annotations

import heapq
import ipaddress
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sockgate.bans import BannedPrefix, IPNetwork, Origin, check_width, touches_loopback
from sockgate.errors import PeerError
from sockgate.intlist import is_number
from sockgate.policy.literals import LiteralError, network, unmap
from sockgate.policy.source import quote

DEFAULT_CAPACITY = 262_144  # decisions held; the eBPF ban tries hold 131,072 per family
DEFAULT_MAX_ENTRIES = 2 * DEFAULT_CAPACITY  # entries read from one answer (new and deleted together)
# Bytes per JSON value, at least: a decision is one object of 8 to 10 fields in about 170 bytes,
# some 18 bytes per ',', '{' or '['. Counting those (one C-level pass) before decoding bounds the
# objects json.loads would build from a body of a given size: 64 MiB of "{}," alone would be 22
# million dicts, over a gigabyte; at 8 bytes a value it is at most 8 million small ones.
MIN_BYTES_PER_VALUE = 8
MAX_PROBLEMS = 16  # rejected entries described in a report; the rest are only counted
MAX_KINDS = 32  # distinct ignored types/scopes named in a report; the rest are "other"
MAX_ID = 2**63 - 1  # the LAPI's ids are int64
_MAX_DURATION_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds

BAN = "ban"
SCOPES = ("ip", "range")  # compared case-insensitively: the LAPI writes "Ip" and "Range"


class StreamError(PeerError):
    """The LAPI's answer is not a decision stream at all; nothing of it was applied."""


# -- Go durations ----------------------------------------------------------------------------

# Hand-written: the standard library has no reader of Go's durations, and the PyPI ones read
# other syntaxes ("1 hour", ISO 8601) or lack "µs". time.ParseDuration's units;
# time.Duration.String() writes "1h2m3.5s", "4.66ms", "-1.5s", "0s".
_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9,
             "m": 60 * 10**9, "h": 3600 * 10**9}
_PIECE = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(r"[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+|[-+]?0")
_MAX_DURATION_TEXT = 64
_USUAL = re.compile(r"(-?)(?:([0-9]{1,7})h)?(?:([0-9]{1,2})m)?([0-9]{1,2})(?:\.([0-9]{1,9}))?s")


def duration_ns(text: str) -> int:
    """Go's ``time.Duration`` text in nanoseconds (negative for an expired decision).
    ``ValueError`` for anything else, or beyond what an int64 of nanoseconds holds."""
    if (m := _USUAL.fullmatch(text)) is not None:  # what time.Duration.String() writes for >= 1 s
        sign, h, mins, secs, frac = m.groups()
        ns = ((int(h or 0) * 60 + int(mins or 0)) * 60 + int(secs)) * 10**9 + int((frac or "0").ljust(9, "0"))
        if ns > _MAX_DURATION_NS:
            raise ValueError(f"duration {quote(text)} is longer than a time.Duration holds")
        return -ns if sign else ns
    if len(text) > _MAX_DURATION_TEXT or not _DURATION.fullmatch(text):
        raise ValueError(f"expected a duration such as '3h59m58.1s', found {quote(text)}")
    sign = -1 if text.startswith("-") else 1
    total = 0
    for whole, frac, unit in _PIECE.findall(text.lstrip("+-")):
        scale = _UNITS_NS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        if total > _MAX_DURATION_NS:
            raise ValueError(f"duration {quote(text)} is longer than a time.Duration holds")
    return sign * total


# -- one answer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One ban decision as held: the LAPI's id, the network, the end on the caller's clock."""

    id: int
    network: IPNetwork
    expires_ns: int


@dataclass(frozen=True)
class Deletion:
    id: int
    network: IPNetwork


@dataclass
class Tally:
    """What an answer held besides the decisions applied: counted, the first few described."""

    rejected: int = 0
    problems: list[str] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    expired: int = 0  # ``new`` decisions whose duration had already run out

    def reject(self, part: str, index: int, why: str) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{part}[{index}]: {why}")

    def ignore(self, kind: str) -> None:
        self.ignored[kind if kind in self.ignored or len(self.ignored) < MAX_KINDS else "other"] += 1


@dataclass(frozen=True)
class Batch:
    startup: bool
    new: tuple[Decision, ...]
    deleted: tuple[Deletion, ...]
    tally: Tally


def parse(body: bytes, now_ns: int, *, startup: bool, max_entries: int = DEFAULT_MAX_ENTRIES) -> Batch:
    """A stream answer → a ``Batch``. ``StreamError`` when the body is not a stream answer."""
    values = body.count(b",") + body.count(b"{") + body.count(b"[")
    if values * MIN_BYTES_PER_VALUE > len(body) + 4096:
        raise StreamError(f"the LAPI's answer packs {values} JSON values in {len(body)} bytes; decisions are not that small")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise StreamError(f"the LAPI's answer is not JSON: {type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise StreamError(f"the LAPI's answer is a JSON {type(doc).__name__}, not an object with 'new' and 'deleted'")
    lists = {part: [] if doc.get(part) is None else doc[part] for part in ("new", "deleted")}
    for part, items in lists.items():
        if not isinstance(items, list):
            raise StreamError(f"the LAPI's answer has {part!r} as a {type(items).__name__}, not a list")
    tally, budget = Tally(), max_entries
    new: list[Decision] = []
    deleted: list[Deletion] = []
    for part, items in lists.items():
        items = _bounded(part, items, budget, tally)
        budget -= len(items)
        if part == "new":
            new.extend(d for i, item in enumerate(items) if (d := _decision(item, now_ns, i, tally)) is not None)
        else:
            deleted.extend(g for i, item in enumerate(items) if (g := _deletion(item, i, tally)) is not None)
    return Batch(startup, tuple(new), tuple(deleted), tally)


def _bounded(part: str, items: list[Any], budget: int, tally: Tally) -> list[Any]:
    """The entries of ``part`` within what is left of the bound of one answer; the rest counted."""
    if len(items) <= budget:
        return items
    tally.rejected += len(items) - budget
    tally.problems.append(f"{part}: {len(items)} entries, only {budget} read (the bound of one answer)")
    return items[:budget]


def _fields(item: Any, part: str, index: int, tally: Tally) -> tuple[int, IPNetwork] | None:
    """The id and network of a ban entry in Ip or Range scope; None when rejected or ignored."""
    if not isinstance(item, dict):
        tally.reject(part, index, f"expected an object, found a JSON {type(item).__name__}")
        return None
    ident, kind, scope, value = item.get("id"), item.get("type"), item.get("scope"), item.get("value")
    if type(ident) is not int or not 0 < ident <= MAX_ID:
        tally.reject(part, index, f"expected a positive integer id, found {quote(repr(ident))}")
        return None
    if not isinstance(kind, str) or not isinstance(scope, str) or not isinstance(value, str):
        tally.reject(part, index, f"decision {ident}: 'type', 'scope' and 'value' must be strings")
        return None
    if kind.lower() != BAN:
        tally.ignore(f"type {quote(kind)}")
        return None
    if scope.lower() not in SCOPES:
        tally.ignore(f"scope {quote(scope)}")
        return None
    try:
        net = prefix(scope.lower(), value)
        check_width(net)
        if touches_loopback(net):
            raise ValueError(f"{net} covers this host's loopback: a remote decision never bans it")
        return ident, net
    except ValueError as e:
        tally.reject(part, index, f"decision {ident}: {e}")
        return None


def _decision(item: Any, now_ns: int, index: int, tally: Tally) -> Decision | None:
    got = _fields(item, "new", index, tally)
    if got is None:
        return None
    ident, net = got
    text = item.get("duration")
    try:
        if not isinstance(text, str):
            raise ValueError(f"expected a duration string, found {quote(repr(text))}")
        left = duration_ns(text)
    except ValueError as e:
        tally.reject("new", index, f"decision {ident}: {e}")
        return None
    if left <= 0:
        tally.expired += 1
        return None
    return Decision(ident, net, now_ns + left)


def _deletion(item: Any, index: int, tally: Tally) -> Deletion | None:
    got = _fields(item, "deleted", index, tally)
    return None if got is None else Deletion(*got)


def prefix(scope: str, value: str) -> IPNetwork:
    """The network of an ``ip`` or ``range`` decision. An IPv4-mapped IPv6 value means its IPv4
    source (that is how the kernel sees such a peer); a range with host bits set bans its whole
    network, as CrowdSec means it; an IPv6 zone is refused (a ban is host-wide)."""
    if len(value) > 64 or "%" in value or value != value.strip():
        raise ValueError(f"expected an address or CIDR, found {quote(value)}")
    if scope == "ip":
        if "/" in value:
            raise ValueError(f"an Ip decision names one address, found {quote(value)}")
        try:
            return network(value)
        except LiteralError as e:
            raise ValueError(str(e)) from None
    addr, slash, bits = value.partition("/")
    if not slash or not is_number(bits):
        raise ValueError(f"a Range decision needs a prefix length, found {quote(value)}")
    try:
        return unmap(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"expected a CIDR range, found {quote(value)}") from None


# -- the state --------------------------------------------------------------------------------

SAME_END_NS = 2 * 10**9  # a startup answer's end within this of the held one: the same end


def _same_end(d: Decision, held: Decision | None) -> Decision:
    if held is not None and held.network == d.network and abs(held.expires_ns - d.expires_ns) <= SAME_END_NS:
        return held
    return d



@dataclass(frozen=True)
class Report:
    """What one answer changed. ``changed``: networks whose ban (or its end) changed, for the
    caller to push into the kernel."""

    startup: bool
    added: int
    deleted: int
    unknown_deletions: int  # ids not held (already expired here, or never a ban)
    over_capacity: int
    rejected: int
    problems: tuple[str, ...]
    ignored: tuple[tuple[str, int], ...]
    expired: int
    changed: frozenset[IPNetwork]


class StreamState:
    """The decisions held, by id, and the bans they make."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._by_id: dict[int, Decision] = {}
        self._by_net: dict[IPNetwork, dict[int, int]] = {}  # network → {id: expires_ns}
        self._end_of: dict[IPNetwork, int] = {}  # network → the latest expires_ns of its decisions
        self._heap: list[tuple[int, int]] = []  # (expires_ns, id), stale entries skipped

    def __len__(self) -> int:
        return len(self._by_id)

    def holds(self, ident: int) -> bool:
        return ident in self._by_id

    def apply(self, batch: Batch) -> Report:
        """A startup batch replaces everything held; a delta adds ``new``, then removes ``deleted``.
        A decision a startup batch sends again (same id and network) keeps the end held when the
        new one is within ``SAME_END_NS`` of it: its end is the receipt time plus the duration
        left, so each answer moves it by its own latency, and a resync that changed nothing must
        change nothing (no ban rewritten, no program rebuilt)."""
        new = batch.new
        if batch.startup:  # every network may change: the ends before and after, compared once each
            before = self._end_of  # (the old tables kept whole: networks hash slowly)
            held = self._by_id
            self._by_id, self._by_net, self._end_of, self._heap = {}, {}, {}, []
            new = tuple(_same_end(d, held.get(d.id)) for d in new)
        else:
            touched: set[IPNetwork] = {d.network for d in batch.new} | {d.network for d in batch.deleted}
            touched |= {self._by_id[d.id].network for d in batch.new if d.id in self._by_id}  # an id re-sent elsewhere
            before = {n: end for n in touched if (end := self._end_of.get(n)) is not None}  # the others had none
        added, over = self._add(new)
        deleted, unknown, mismatched = self._delete(batch.deleted)
        problems = (list(batch.tally.problems) + mismatched)[:MAX_PROBLEMS]
        rejected = batch.tally.rejected + len(mismatched)
        if batch.startup:
            after = self._end_of
            changed = frozenset([*(n for n, end in after.items() if before.get(n) != end),
                                 *(n for n in before if n not in after)])
        else:
            changed = frozenset(n for n in touched if self._end(n) != before.get(n))
        return Report(batch.startup, added, deleted, unknown, over, rejected, tuple(problems),
                      tuple(sorted(batch.tally.ignored.items())), batch.tally.expired, changed)

    def _add(self, new: tuple[Decision, ...]) -> tuple[int, int]:
        """Hold ``new``: how many were added, how many did not fit."""
        added = over = 0
        for d in new:
            if d.id not in self._by_id and len(self._by_id) >= self.capacity:
                over += 1
                continue
            self._put(d)
            added += 1
        return added, over

    def _delete(self, deleted: tuple[Deletion, ...]) -> tuple[int, int, list[str]]:
        """Lift ``deleted``: how many were lifted, how many were not held, and why the ones
        naming another network than their decision's were refused."""
        done = unknown = 0
        mismatched: list[str] = []
        for gone in deleted:
            held = self._by_id.get(gone.id)
            if held is None:
                unknown += 1
            elif held.network != gone.network:
                mismatched.append(f"deleted: decision {gone.id} names {gone.network}, held for {held.network}; kept")
            else:
                self._drop(gone.id)
                done += 1
        return done, unknown, mismatched

    def expire(self, now_ns: int) -> frozenset[IPNetwork]:
        """Drop the decisions whose end has come; the networks whose ban changed."""
        touched: dict[IPNetwork, int | None] = {}
        while self._heap and self._heap[0][0] <= now_ns:
            end, ident = heapq.heappop(self._heap)
            held = self._by_id.get(ident)
            if held is not None and held.expires_ns == end:
                touched.setdefault(held.network, self._end(held.network))
                self._drop(ident)
        return frozenset(n for n, was in touched.items() if self._end(n) != was)

    def bans(self, now_ns: int) -> dict[IPNetwork, BannedPrefix]:
        """The desired set: each network banned until its latest decision ends."""
        crowdsec = Origin.CROWDSEC
        return {net: BannedPrefix(net, end, crowdsec) for net, end in self._end_of.items() if end > now_ns}

    def ban(self, net: IPNetwork, now_ns: int) -> BannedPrefix | None:
        end = self._end(net)
        return BannedPrefix(net, end, Origin.CROWDSEC) if end is not None and end > now_ns else None

    def decisions(self) -> tuple[Decision, ...]:
        return tuple(self._by_id.values())

    def _end(self, net: IPNetwork) -> int | None:
        return self._end_of.get(net)

    def _put(self, d: Decision) -> None:
        if d.id in self._by_id:
            self._drop(d.id)
        self._by_id[d.id] = d
        self._by_net.setdefault(d.network, {})[d.id] = d.expires_ns
        if d.expires_ns > self._end_of.get(d.network, -1):
            self._end_of[d.network] = d.expires_ns
        heapq.heappush(self._heap, (d.expires_ns, d.id))
        if len(self._heap) > 2 * len(self._by_id) + 1024:  # replaced decisions left stale entries
            self._heap = [(x.expires_ns, x.id) for x in self._by_id.values()]
            heapq.heapify(self._heap)

    def _drop(self, ident: int) -> None:
        d = self._by_id.pop(ident)
        ends = self._by_net[d.network]
        del ends[ident]
        if not ends:
            del self._by_net[d.network]
            del self._end_of[d.network]
        elif d.expires_ns == self._end_of[d.network]:
            self._end_of[d.network] = max(ends.values())
