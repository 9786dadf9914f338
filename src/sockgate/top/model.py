"""What ``sockgate top`` shows, computed from snapshots: sockets, refusals with rates, bans,
the agent's health, and what could not be seen. Sans I/O: a ``Snapshot`` (what ``top/feed.py``
gathered at one moment) and the one before it go in, a ``View`` of plain rows comes out; the
textual app (``top/app.py``) only lays them out. So every number on the screen is tested
without a terminal, a socket or an agent.

Where each part comes from, in order of trust:

* sockets — the inventory ``sockgate ls`` reads (``socktable.list_sockets``), joined by socket
  cookie with the agent's own state for the sockets it selects (guarded, adopted, unguarded,
  retrying);
* refusals — the agent's status when it answers (its per-service total and its top sources),
  else the pinned eBPF counters read as ``sockgate refused`` reads them; a rate is the growth
  of a counter between two snapshots over the wall time between them (none on the first
  snapshot, and none when a counter went down: an LRU counter evicted and reborn);
* bans — the agent's ban book (every origin, the reason), else the pinned ban tries;
* health — the agent's status only (its last reload, its drift: sockets it selects that are
  not guarded, filters it had to put back; its errors).

What a part could not be read for is a note, worded once here, so the screen says what is
missing instead of showing an empty table as if nothing were there. Every text a process,
a peer or a policy author chose is escaped (``policy.source.escape``) before it is a cell.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from sockgate.ebpf.refusals import BanRow, Clock, origin_name
from sockgate.policy.source import escape
from sockgate.refused import Listing
from sockgate.socktable import Row, netid

NOT_COUNTED = "-"


@dataclass(frozen=True)
class Snapshot:
    """What was read at one moment. ``*_error``: why that part could not be read (one line)."""

    wall: float  # time.time() when taken
    sockets: tuple[Row, ...] = ()
    sockets_error: str | None = None
    status: Mapping[str, Any] | None = None  # a status document checked against schema 1
    status_error: str | None = None
    refused: Listing | None = None  # read only when no agent answers
    refused_error: str | None = None


# -- rows out ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SocketView:
    proto: str
    local: str
    port: int | None
    process: str
    user: str
    exposure: str  # who can reach it, in a word (REACH)
    guard: str  # SERVICE/BACKEND when sockgate's, else NONE, MODIFIED, foreign, unknown (why)
    backend: str
    service: str
    agent: str  # the agent's state for this socket, "-" when it does not select it or does not run


@dataclass(frozen=True)
class SourceView:
    service: str
    source: str
    count: int
    rate: float | None  # refusals per second since the snapshot before
    last: str


@dataclass(frozen=True)
class ServiceView:
    service: str
    count: int
    sources: int
    rate: float | None


@dataclass(frozen=True)
class BanView:
    net: str
    origin: str  # policy, manual, fail2ban, CrowdSec, hosts.deny
    services: str  # "*" for every service
    expires: str  # "never", or the time left
    reason: str
    unban_origin: str  # what ``unban --origin`` names this ban by


@dataclass(frozen=True)
class View:
    sockets: tuple[SocketView, ...]
    services: tuple[ServiceView, ...]
    sources: tuple[SourceView, ...]
    bans: tuple[BanView, ...]
    health: tuple[tuple[str, str], ...]  # label, value
    notes: tuple[str, ...]  # what is missing, and why
    refusals_from: str  # "agent", "eBPF counters" or "nothing"
    agent: bool


@dataclass(frozen=True)
class Tally:
    """One counter: ``service`` refused ``source`` ``count`` times, last at ``last``."""

    service: str
    source: str
    count: int
    last: str


def view(cur: Snapshot, prev: Snapshot | None = None) -> View:
    tallies, service_totals, origin = refusal_tallies(cur)
    before = {(t.service, t.source): t.count for t in refusal_tallies(prev)[0]} if prev is not None else {}
    span = cur.wall - prev.wall if prev is not None else 0.0
    sources = tuple(SourceView(t.service, t.source, t.count, rate(before.get((t.service, t.source)), t.count, span), t.last)
                    for t in tallies)
    return View(
        sockets=tuple(socket_rows(cur)),
        services=tuple(service_rows(sources, service_totals, prev_totals(prev), span)),
        sources=sources,
        bans=tuple(ban_rows(cur)),
        health=tuple(health_rows(cur.status)) if cur.status is not None else (),
        notes=tuple(notes(cur)),
        refusals_from=origin,
        agent=cur.status is not None,
    )


MIN_SPAN = 0.001  # seconds: below it (or a wall clock stepped back) two readings give no rate


def rate(before: int | None, now: int, span: float) -> float | None:
    """Refusals per second between two readings; None without a reading before, with a span
    under ``MIN_SPAN``, or when the counter went down (evicted and counted again)."""
    if before is None or span < MIN_SPAN or now < before:
        return None
    return (now - before) / span


# -- sockets -----------------------------------------------------------------------------------


def socket_rows(snap: Snapshot) -> list[SocketView]:
    states = _agent_states(snap.status)
    out = []
    for r in snap.sockets:
        g = r.guard
        agent = states.get(r.sock.cookie, "-") if r.sock.cookie is not None else "-"
        out.append(SocketView(
            proto=netid(r.sock), local=escape(r.sock.local_text()), port=r.sock.local_port,
            process=escape(r.process_text()), user=escape(r.user or "?"), exposure=REACH.get(r.exposure.kind, "?"),
            guard=escape(_guard_word(r)), backend=g.backend or "-", service=escape(g.service or "-"), agent=agent))
    return out


# ``ls``'s exposure kinds in a word (80 columns have no room for its sentence).
REACH = {"any": "all", "loopback": "loopback", "address": "one addr", "connected": "peer", "path": "path",
         "abstract": "abstract", "unnamed": "unnamed"}


def _guard_word(r: Row) -> str:
    """The guard in a word or two: the service and backend when sockgate's, else its state."""
    g = r.guard
    match g.state:
        case "sockgate":
            return f"{g.service}/{g.backend or '?'}"
        case "none":
            return "NONE"
        case "modified":
            return "MODIFIED"
        case "foreign":
            return "foreign"
        case _:
            return f"unknown ({g.reason})" if g.reason else "unknown"


def _agent_states(status: Mapping[str, Any] | None) -> dict[int, str]:
    if status is None:
        return {}
    return {k["cookie"]: k["state"] if k["state"] in ("guarded", "adopted") else k["state"].upper()
            for s in status["services"] for k in s["sockets"]}


# -- refusals ----------------------------------------------------------------------------------


def refusal_tallies(snap: Snapshot) -> tuple[list[Tally], dict[str, int], str]:
    """Per (service, source) counters, per-service totals where the agent gives them, and where
    they come from. The agent's word when it runs; else the pinned counters."""
    if snap.status is not None:
        tallies, totals = [], {}
        for s in snap.status["services"]:
            r = s["refusals"]
            if not r["counted"]:
                continue
            totals[escape(s["name"])] = r["total"]
            tallies += [Tally(escape(s["name"]), escape(t["source"]), t["count"], t["last"] or NOT_COUNTED) for t in r["top"]]
        return _ordered(tallies), totals, "agent"
    if snap.refused is not None:
        c = snap.refused.clock
        return _ordered([Tally(escape(r.service), str(r.source), r.count.refused, c.iso(r.count.last_ns) or NOT_COUNTED)
                         for r in snap.refused.counts]), {}, "eBPF counters"
    return [], {}, "nothing"


def _ordered(tallies: list[Tally]) -> list[Tally]:
    return sorted(tallies, key=lambda t: (-t.count, t.service, t.source))


def prev_totals(prev: Snapshot | None) -> dict[str, int]:
    if prev is None:
        return {}
    tallies, totals, _ = refusal_tallies(prev)
    return {**_sums(tallies), **totals}


def _sums(tallies: Sequence[Tally] | Sequence[SourceView]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tallies:
        out[t.service] = out.get(t.service, 0) + t.count
    return out


def service_rows(sources: Sequence[SourceView], totals: Mapping[str, int], before: Mapping[str, int],
                 span: float) -> list[ServiceView]:
    """One row per service: the agent's total where it gives one (its top lists only the most
    refused sources), else the sum of the counters; most refused first."""
    sums = {**_sums(sources), **totals}
    n_sources: dict[str, int] = {}
    for s in sources:
        n_sources[s.service] = n_sources.get(s.service, 0) + 1
    rows = [ServiceView(name, n, n_sources.get(name, 0), rate(before.get(name), n, span)) for name, n in sums.items()]
    return sorted(rows, key=lambda r: (-r.count, r.service))


# -- bans --------------------------------------------------------------------------------------

# The agent's origin names (status: Origin.name lower-cased) and ``refused``'s (origin_name)
# → the word an admin knows them by; the last column: the origin ``unban`` lifts them by.
ORIGINS: dict[str, tuple[str, str]] = {
    "limit": ("policy", "manual"), "manual": ("manual", "manual"), "fail2ban": ("fail2ban", "fail2ban"),
    "crowdsec": ("CrowdSec", "manual"), "hosts_deny": ("hosts.deny", "hosts_deny"), "hosts-deny": ("hosts.deny", "hosts_deny"),
}


def origin_label(name: str) -> tuple[str, str]:
    return ORIGINS.get(name, (escape(name), "manual"))


def ban_rows(snap: Snapshot) -> list[BanView]:
    if snap.status is not None:
        return [_status_ban(b, snap.wall) for b in snap.status["bans"]["items"]]
    if snap.refused is not None:
        c = snap.refused.clock
        return [_pinned_ban(b, c) for b in snap.refused.bans]
    return []


def _pinned_ban(b: BanRow, c: Clock) -> BanView:
    label, unban = origin_label(origin_name(b.ban.origin))
    expires = None if b.ban.expires_ns == 0 else (b.ban.expires_ns - c.mono_ns) / 1e9
    return BanView(str(b.network), label, escape(b.service), left(expires), "", unban)


def _status_ban(b: Mapping[str, Any], now: float) -> BanView:
    label, unban = origin_label(b["origin"])
    expires = None if b["expires"] is None else _seconds(b["expires"]) - now
    services = ",".join(escape(s) for s in b["services"])
    return BanView(escape(b["net"]), label, services, left(expires), escape(b["reason"] or ""), unban)


def _seconds(rfc3339: str) -> float:
    try:
        return datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return 0.0


def left(seconds: float | None) -> str:
    """Time left as ``2h05m``, ``4m10s``, ``9s``; ``never`` for None; ``expired`` at or below 0."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s <= 0:
        return "expired"
    d, rest = divmod(s, 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


# -- health and what is missing ----------------------------------------------------------------


def health_rows(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    a, p = doc["agent"], doc["policy"]
    r = p["last_reload"]
    reload = f"{r['at']} ({r['trigger']}) " + ("ok" if r["ok"] else f"FAILED, old policy kept: {r['error']}")
    w = a["watch"]
    c = a["counters"]
    rows = [
        ("agent", f"pid {a['pid']}, sockgate {a['version']}, {a['backend']}, since {a['started']}"),
        ("policy", f"{p['digest']} loaded {p['loaded']}"),
        ("last reload", reload),
        ("drift", f"{doc['unguarded']} selected socket(s) not guarded; {c['replaced']} filter(s) put back"),
        ("watch", f"{w['mode']}, {w['events']} events, {w['lost']} lost, last resync {w['last_resync'] or 'never'}"),
        ("counters", ", ".join(f"{k} {c[k]}" for k in sorted(c))),
        ("bans", f"{doc['bans']['total']}" + "".join(f", {origin_label(k)[0]} {n}" for k, n in sorted(doc["bans"]["by_origin"].items()))),
    ]
    rows += [(f"source {name}", str(s.get("state", "?")) + (f" ({s['error']})" if s.get("error") else ""))
             for name, s in sorted(doc["sources"].items())]
    rows += [("error", e) for e in doc["errors"]]
    rows += [("impostor", f"{i['proto']} {i['local']} takes {i['service']}'s name; left alone") for i in doc["impostors"]]
    rows += [("super-server", f"{r['proto']} {r['local']} held for an unknown daemon: NOT guarded if it starts one the "
                              f"policy names (--map DAEMON={r['proto']}/{r['port']})"
                              + (f"; not settled: {r['why']}" if r.get("why") else "")) for r in doc["superserved"]]
    return [(k, escape(v)) for k, v in rows]


def notes(snap: Snapshot) -> list[str]:
    """One line per part that could not be read: what is missing and why."""
    out = []
    if snap.status is None:
        why = snap.status_error or "not asked"
        out.append(f"no agent ({why}): shown is what `ls` sees; agent health, socket states and bans' reasons are missing")
        if snap.refused is None:
            out.append(f"refusals and bans: no eBPF counters readable ({snap.refused_error or 'not read'})")
        else:
            out += [f"refusals: {p}" for p in snap.refused.problems]
    if snap.sockets_error is not None:
        out.append(f"sockets: {snap.sockets_error}")
    return [escape(n) for n in out]


def address_of(source: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A source or ban cell as a network; None when it names none."""
    try:
        return ipaddress.ip_network(source, strict=False)
    except ValueError:
        return None


def clock_at(wall: float, mono: float) -> Clock:
    """The ``Clock`` of a snapshot taken at ``wall`` and ``mono`` seconds (tests build listings)."""
    return Clock(int(wall * 1e9), int(mono * 1e9))
