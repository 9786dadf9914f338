"""What the keys of ``sockgate top`` do to the rows, sans I/O: filter (``service:``, ``port:``,
``user:`` and free words), sort by a column, follow one source, explain a source.

A filter is typed by a person, so it is parsed strictly: an unknown key or a port that is no
number is a ``FilterError`` naming what was expected, never a filter that silently matches
everything. Refusals and bans carry no port or user of their own; ``port:`` and ``user:``
select the services whose sockets have that port or user (a ban on every service matches
any). Sorting is stable and puts rows without a value (no rate yet) last.

Explaining a source reuses ``sockgate.explain`` (the same program, trace and deciding rule as
``sockgate explain --client``), for each service it was refused or banned on, with the
covering bans passed as ``--banned`` would be.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal, Sequence, TypeVar, assert_never

from sockgate.errors import SockgateError, UsageError
from sockgate.explain import explain, render
from sockgate.intlist import number
from sockgate.policy.ir import Policy
from sockgate.policy.source import escape, printable
from sockgate.top.model import BanView, ServiceView, SocketView, SourceView, View, address_of

Pane = Literal["sockets", "services", "sources", "bans"]
PANES: tuple[Pane, ...] = ("sockets", "services", "sources", "bans")
AnyRow = SocketView | ServiceView | SourceView | BanView
R = TypeVar("R", SocketView, ServiceView, SourceView, BanView)

# Per pane: (header, field) in the order shown. The sort cycles through these.
COLUMNS: dict[Pane, tuple[tuple[str, str], ...]] = {
    "sockets": (("PROTO", "proto"), ("LOCAL", "local"), ("PROCESS", "process"), ("USER", "user"),
                ("REACH", "exposure"), ("GUARD", "guard"), ("AGENT", "agent")),
    "services": (("SERVICE", "service"), ("REFUSED", "count"), ("SOURCES", "sources"), ("PER S", "rate")),
    "sources": (("SOURCE", "source"), ("SERVICE", "service"), ("REFUSED", "count"), ("PER S", "rate"), ("LAST", "last")),
    "bans": (("BANNED", "net"), ("ORIGIN", "origin"), ("SERVICES", "services"), ("EXPIRES", "expires"),
             ("REASON", "reason")),
}


class FilterError(UsageError):
    """A filter a person typed that means nothing."""


@dataclass(frozen=True)
class Filter:
    service: str | None = None
    port: int | None = None
    user: str | None = None
    words: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self == Filter()

    def text(self) -> str:
        parts = [f"service:{self.service}" if self.service is not None else "",
                 f"port:{self.port}" if self.port is not None else "",
                 f"user:{self.user}" if self.user is not None else "", *self.words]
        return " ".join(p for p in parts if p)


def parse_filter(text: str) -> Filter:
    """``service:ssh port:22 user:root word`` → a ``Filter``; a ``FilterError`` for a bad term."""
    f: dict[str, Any] = {}
    words = []
    for term in text.split():
        key, sep, value = term.partition(":")
        if not sep:
            words.append(term.lower())
            continue
        if key not in ("service", "port", "user") or not value:
            raise FilterError(f"filter {escape(term)!r}: expected service:NAME, port:N, user:NAME or a word")
        if key == "port":
            port = number(value, 0, 65535)
            if port is None:
                raise FilterError(f"filter {escape(term)!r}: a port is a number 0-65535")
            f[key] = port
        else:
            f[key] = value
    return Filter(f.get("service"), f.get("port"), f.get("user"), tuple(words))


def cells(row: AnyRow, pane: Pane) -> tuple[str, ...]:
    return tuple(_cell(getattr(row, name)) for _, name in COLUMNS[pane])


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def apply(view: View, f: Filter) -> View:
    """The rows of ``view`` that ``f`` selects, pane by pane."""
    if f.empty:
        return view
    sockets = tuple(r for r in view.sockets if _socket_ok(r, f))
    services = _services_of(view.sockets, f)

    def ok(service: str, row: AnyRow, pane: Pane) -> bool:
        return (services is None or service in services or service == "*") and _words_ok(row, pane, f.words)

    return View(
        sockets=sockets,
        services=tuple(r for r in view.services if ok(r.service, r, "services")),
        sources=tuple(r for r in view.sources if ok(r.service, r, "sources")),
        bans=tuple(r for r in view.bans if any(ok(s, r, "bans") for s in r.services.split(","))),
        health=view.health, notes=view.notes, refusals_from=view.refusals_from, agent=view.agent)


def _socket_ok(r: SocketView, f: Filter) -> bool:
    return ((f.service is None or r.service == f.service) and (f.port is None or r.port == f.port)
            and (f.user is None or r.user == f.user) and _words_ok(r, "sockets", f.words))


def _services_of(sockets: Sequence[SocketView], f: Filter) -> set[str] | None:
    """The services ``f`` selects (None: any): named, or guarding a socket of the port or user."""
    if f.port is None and f.user is None:
        return None if f.service is None else {f.service}
    found = {r.service for r in sockets if _socket_ok(r, Filter(f.service, f.port, f.user))}
    return found - {"-"}


def _words_ok(row: AnyRow, pane: Pane, words: tuple[str, ...]) -> bool:
    if not words:
        return True
    text = " ".join(cells(row, pane)).lower()
    return all(w in text for w in words)


def sort_rows(rows: Sequence[R], pane: Pane, column: int, reverse: bool = False) -> list[R]:
    """``rows`` by the pane's ``column``-th column (numbers as numbers); rows without a value
    last whichever the direction."""
    name = COLUMNS[pane][column % len(COLUMNS[pane])][1]
    have = [r for r in rows if getattr(r, name) is not None]
    none = [r for r in rows if getattr(r, name) is None]
    return sorted(have, key=lambda r: _key(getattr(r, name), r), reverse=reverse) + none


def _key(v: object, row: AnyRow) -> tuple[int, float, str]:
    if isinstance(v, (int, float)):
        return (0, float(v), "")
    if isinstance(row, SocketView) and v == row.local:
        return (0, float(row.port or 0), row.local)  # addresses by port, then text
    return (1, 0.0, str(v))


# -- follow and explain ------------------------------------------------------------------------


@dataclass(frozen=True)
class Followed:
    source: str
    refusals: tuple[SourceView, ...]
    bans: tuple[BanView, ...]  # the bans that cover the source

    @property
    def services(self) -> tuple[str, ...]:
        """The services to explain the source for: where it was refused, else where banned."""
        named = [r.service for r in self.refusals] + [s for b in self.bans for s in b.services.split(",") if s != "*"]
        return tuple(dict.fromkeys(named))


def follow(view: View, source: str) -> Followed:
    """Everything ``view`` knows of ``source`` (an address or a network)."""
    net = address_of(source)
    refusals = tuple(r for r in view.sources if _within(address_of(r.source), net) or r.source == source)
    bans = tuple(b for b in view.bans if _within(net, address_of(b.net)))
    return Followed(source, refusals, bans)


def _within(a: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
            b: ipaddress.IPv4Network | ipaddress.IPv6Network | None) -> bool:
    """Whether ``a`` lies inside ``b`` (both known, same family)."""
    if a is None or b is None or a.version != b.version:
        return False
    return a.subnet_of(b)  # type: ignore[arg-type]  # same version checked above


def explain_source(policy: Policy | None, followed: Followed, services: Sequence[str] = ()) -> str:
    """``sockgate explain --client SOURCE`` for each service (``services``, else the followed
    source's), without the listing; what stands in the way, in a line, instead."""
    if policy is None:
        return "explain needs the policy: start sockgate top with POLICY files, --hosts-allow or --hosts-deny\n"
    net = address_of(followed.source)
    if net is None or net.num_addresses != 1:
        return f"explain needs one address, not {escape(followed.source)}\n"
    names = list(services or followed.services or policy.service_names())
    banned = [n for b in followed.bans if (n := address_of(b.net)) is not None]
    out = []
    for name in names:
        try:
            report = explain(policy, name, [str(net.network_address)], banned, listing=False)
        except SockgateError as e:
            out.append(f"service {escape(name)}: {escape(str(e))}\n")
            continue
        out.append(printable(render(report, capacity=False)))
    return "\n".join(out) or "the policy has no service\n"


def pane_rows(view: View, pane: Pane) -> Sequence[AnyRow]:
    match pane:
        case "sockets":
            return view.sockets
        case "services":
            return view.services
        case "sources":
            return view.sources
        case "bans":
            return view.bans
        case _:
            assert_never(pane)
