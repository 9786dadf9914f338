"""Every ban the agent enforces, kept apart by who set it.

Bans come from several places — the policy's own ``ban`` after a rate limit, ``sockgate ban``,
fail2ban, CrowdSec, a hosts.deny that sshguard or DenyHosts write — and each may ban the same
network for its own reasons and lift it on its own schedule. So the book keeps one entry per
(network, origin, services) and the *effective* set of a service is their union, one ban per
network (the one that lasts longest): fail2ban lifting its ban never lifts CrowdSec's on the same
address, and a CrowdSec restart (``replace_origin``, its startup snapshot) touches only its own
entries. A service can be exempted from chosen origins (``--crowdsec-exempt``).

Times are CLOCK_MONOTONIC nanoseconds, as in the ban values themselves (0: never), since the
eBPF program compares them with ``bpf_ktime_get_ns``; wall-clock time appears only in the
persistence form, converted both ways by functions the caller passes in, so a state file
written before a reboot still expires its bans at the right hour.

The ban values are the shared ban type (``sockgate.bans.BannedPrefix``), taken here through
the small ``Ban`` protocol so this module needs nothing but their shape. Pure.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any, Callable, Collection, Generic, Hashable, Iterable, Mapping, Protocol, TypeVar

from sockgate.bans import check_width
from sockgate.errors import SockgateError
from sockgate.policy.ir import IPNetwork

STATE_VERSION = 1
NEVER = 0
MAX_REASON = 200


class OriginLike(Hashable, Protocol):
    @property
    def name(self) -> str: ...


class Ban(Protocol):
    """The shape of a ban (``sockgate.bans.BannedPrefix``)."""

    @property
    def network(self) -> IPNetwork: ...
    @property
    def expires_ns(self) -> int: ...
    @property
    def origin(self) -> OriginLike: ...


B = TypeVar("B", bound=Ban)


class BanStateError(SockgateError):
    """A ban state file that is not what this version writes."""


@dataclass(frozen=True)
class BanEntry(Generic[B]):
    ban: B
    services: frozenset[str] | None  # None: every guarded service
    added_ns: int
    reason: str | None = None

    @property
    def key(self) -> tuple[IPNetwork, Hashable, frozenset[str] | None]:
        return self.ban.network, self.ban.origin, self.services

    def applies_to(self, service: str) -> bool:
        return self.services is None or service in self.services

    def active(self, now_ns: int) -> bool:
        return self.ban.expires_ns == NEVER or now_ns < self.ban.expires_ns


def _order(net: IPNetwork) -> tuple[int, int, int]:
    return net.version, int(net.network_address), net.prefixlen


def _lasts_longer(a: Ban, b: Ban) -> bool:
    """Whether ``a`` outlasts ``b`` (never outlasts everything)."""
    ea = math.inf if a.expires_ns == NEVER else a.expires_ns
    eb = math.inf if b.expires_ns == NEVER else b.expires_ns
    return ea > eb


@dataclass(frozen=True)
class BanBook(Generic[B]):
    """The bans by origin. Every method returns a new book."""

    entries: tuple[BanEntry[B], ...] = ()

    def add(self, e: BanEntry[B]) -> BanBook[B]:
        """``e``, replacing the entry of the same network, origin and services (a renewed ban)."""
        return BanBook((*(x for x in self.entries if x.key != e.key), e))

    def remove(self, net: IPNetwork, origin: Hashable | None = None, service: str | None = None) -> BanBook[B]:
        """Lift ``net`` for ``origin`` (None: every origin). With ``service``, only the service's
        own share: an entry for several services loses that one, an entry for every service
        is kept (it cannot be narrowed to "all but one")."""
        out: list[BanEntry[B]] = []
        for x in self.entries:
            if x.ban.network != net or (origin is not None and x.ban.origin != origin):
                out.append(x)
            elif service is not None and x.services is None:
                out.append(x)
            elif service is not None and x.services is not None and x.services != {service}:
                rest = x.services - {service}
                out.append(BanEntry(x.ban, rest, x.added_ns, x.reason) if rest != x.services else x)
        return BanBook(tuple(out))

    def replace_origin(self, origin: Hashable, entries: Iterable[BanEntry[B]]) -> BanBook[B]:
        """Every entry of ``origin`` replaced by ``entries`` (a source's full snapshot). An entry
        the snapshot gives again unchanged (same key, same ban) stays as it was, its ``added_ns``
        too, so a snapshot that changed nothing gives an equal book (nothing re-applied)."""
        others = tuple(x for x in self.entries if x.ban.origin != origin)  # never a key of ``entries``
        held = {x.key: x for x in self.entries if x.ban.origin == origin}
        fresh = tuple(e if (old := held.get(e.key)) is None or old.ban != e.ban or old.reason != e.reason else old
                      for e in entries)
        by_key: dict[tuple[IPNetwork, Hashable, frozenset[str] | None], BanEntry[B]] = {}
        for e in fresh:  # one pass, one hash each (100,000 decisions; networks hash slowly)
            if e.ban.origin != origin:
                raise ValueError(f"an entry of origin {e.ban.origin.name} in a snapshot of {_name(origin)}")
            by_key[e.key] = e
        if len(by_key) == len(fresh):
            return BanBook(others + fresh)
        for e in fresh:  # a key given twice: as ``add``, the renewed entry goes last
            by_key.pop(e.key, None)
            by_key[e.key] = e
        return BanBook(others + tuple(by_key.values()))

    def expire(self, now_ns: int) -> BanBook[B]:
        kept = tuple(x for x in self.entries if x.active(now_ns))
        return self if len(kept) == len(self.entries) else BanBook(kept)

    def effective(self, service: str, now_ns: int, exempt: Collection[Hashable] = ()) -> tuple[B, ...]:
        """The bans ``service`` enforces now: one per network, the longest lasting, in address
        order."""
        best: dict[IPNetwork, B] = {}
        for x in self.entries:  # (100,000 CrowdSec decisions: one hash each, the tests inline)
            ban = x.ban
            if (x.services is not None and service not in x.services) or (exempt and ban.origin in exempt) \
                    or not (ban.expires_ns == NEVER or now_ns < ban.expires_ns):
                continue
            held = best.setdefault(ban.network, ban)
            if held is not ban and _lasts_longer(ban, held):
                best[ban.network] = ban
        return tuple(sorted(best.values(), key=lambda b: _order(b.network)))

    def diff(self, old: BanBook[B], service: str, now_ns: int,
             exempt: Collection[Hashable] = ()) -> tuple[tuple[B, ...], tuple[IPNetwork, ...]]:
        """What to write and what to delete in ``service``'s ban map to go from ``old`` to this
        book: bans new or changed, networks no longer banned."""
        before = {b.network: b for b in old.effective(service, now_ns, exempt)}
        after = self.effective(service, now_ns, exempt)
        nets = {b.network for b in after}
        put = tuple(b for b in after if before.get(b.network) != b)
        gone = tuple(n for n in sorted(before, key=_order) if n not in nets)
        return put, gone

    def next_expiry(self) -> int | None:
        """The earliest end of a ban that ends, for the expiry timer."""
        ends = [x.ban.expires_ns for x in self.entries if x.ban.expires_ns != NEVER]
        return min(ends) if ends else None

    def to_json(self, mono_to_wall: Callable[[int], float]) -> dict[str, Any]:
        """The state file's form: wall-clock seconds, origins by name."""
        return {"version": STATE_VERSION, "bans": [_entry_json(x, mono_to_wall) for x in self.entries]}

    @classmethod
    def from_json(cls, doc: object, wall_to_mono: Callable[[float], int],
                  make: Callable[[IPNetwork, int, str], B]) -> BanBook[B]:
        """The book a state file holds. ``make(network, expires_ns, origin_name)`` builds one ban
        (and raises ``KeyError``/``ValueError`` for an origin it does not know). Anything not
        as ``to_json`` writes it raises ``BanStateError`` naming the entry."""
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION or not isinstance(doc.get("bans"), list):
            raise BanStateError(f"not a version {STATE_VERSION} ban state (expected {{\"version\": 1, \"bans\": [...]}})")
        kept: dict[tuple[IPNetwork, Hashable, frozenset[str] | None], BanEntry[B]] = {}
        for i, item in enumerate(doc["bans"]):
            try:
                e = _entry_from(item, wall_to_mono, make)
            except (KeyError, ValueError, TypeError) as err:
                raise BanStateError(f"ban {i}: {err}") from None
            kept.pop(e.key, None)  # as ``add`` one by one, in one pass (100,000 entries)
            kept[e.key] = e
        return cls(tuple(kept.values()))


def _name(origin: Hashable) -> str:
    name = _NAMES.get(origin)  # (asked once per entry of a state file: 100,000 times)
    if name is None:
        text = getattr(origin, "name", None)
        name = _NAMES[origin] = text.lower() if isinstance(text, str) else str(origin)
    return name


_NAMES: dict[Hashable, str] = {}


def _entry_json(x: BanEntry[Any], mono_to_wall: Callable[[int], float]) -> dict[str, Any]:
    return {
        "net": str(x.ban.network),
        "origin": _name(x.ban.origin),
        "expires": None if x.ban.expires_ns == NEVER else mono_to_wall(x.ban.expires_ns),
        "services": None if x.services is None else sorted(x.services),
        "added": mono_to_wall(x.added_ns),
        "reason": x.reason,
    }


def _entry_from(item: object, wall_to_mono: Callable[[float], int], make: Callable[[IPNetwork, int, str], B]) -> BanEntry[B]:
    if not isinstance(item, Mapping):
        raise TypeError("not an object")
    net = ipaddress.ip_network(_typed(item, "net", str), strict=True)
    check_width(net)  # a state file edited by hand is refused like a request
    expires = item.get("expires")
    if expires is not None and (not isinstance(expires, (int, float)) or isinstance(expires, bool) or not math.isfinite(expires)):
        raise TypeError("expires: not a time")
    services = item.get("services")
    if services is not None and (not isinstance(services, list) or not all(isinstance(s, str) and s for s in services)):
        raise TypeError("services: not a list of names")
    reason = item.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise TypeError(f"reason: not a text of at most {MAX_REASON} characters")
    added = item.get("added")
    if not isinstance(added, (int, float)) or isinstance(added, bool) or not math.isfinite(added):
        raise TypeError("added: not a time")
    expires_ns = NEVER if expires is None else max(1, wall_to_mono(float(expires)))
    ban = make(net, expires_ns, _typed(item, "origin", str))
    return BanEntry(ban, None if services is None else frozenset(services), wall_to_mono(float(added)), reason)


def _typed(item: Mapping[Any, Any], key: str, kind: type[str]) -> str:
    v = item.get(key)
    if not isinstance(v, kind):
        raise TypeError(f"{key}: expected a string")
    return v
