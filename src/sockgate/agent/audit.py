"""Who enforces a hosts.allow/hosts.deny pair, socket by socket: libwrap, a sockgate guard, or
nothing — the audit ``sockgate ls --hosts-allow A --hosts-deny D`` prints, without the agent.

A hosts.allow line naming a daemon protects nothing when that daemon no longer calls libwrap,
and nothing says so. The audit enrols the daemons as the agent does (``desired.selectors``,
``enrol.claims``: the literal names of the files and ``--map``; a holder by argv[0] or comm,
plausibly the daemon; a super-server's listener for a daemon its configuration starts) and
then, for each selected socket, names who enforces the rules:

* ``sockgate``: the socket carries a sockgate guard (its service, digest and backend named;
  a guard of another service still guards, and says which);
* ``libwrap``: every process holding the socket maps a trusted libwrap (``procfs.libwrap``) —
  or, for a super-server's listener, the server line runs tcpd, or the super-server calls
  libwrap itself (xinetd, unless ``NOLIBWRAP``) and maps it (``superserver.Launch.wrap``);
* ``none``: neither — every source is served: the silent fail-open, made visible;
* ``unknown``: it could not be told (a holder hidden or gone while looked at, a filter
  sockgate did not make): never counted as enforced, never as nothing.

A holder that does not map libwrap makes the socket ``none`` even when another does: the
process that accepts a connection is the one that would have to ask libwrap. A daemon the
files name with no socket seen is a row too (``no-listener``). Impostors (a daemon's name on a
process that is not plausibly it) and super-server listeners no configuration maps are listed
apart, as ``status`` lists them, and do not change the exit status.

Pure: the enrolled daemons, the sockets seen (``Observed``, with each holder's libwrap
reading) and the super-servers' launches in; rows and an exit status out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence, assert_never

from sockgate.agent.desired import selectors
from sockgate.agent.enrol import Level, claims
from sockgate.agent.model import Endpoint, GuardState, Observed, Selector
from sockgate.agent.superserver import Launch, unknown_why
from sockgate.loading import DEFAULT_SYS_UID_MAX
from sockgate.policy.hostmatch import fold
from sockgate.policy.ir import Policy
from sockgate.resolve import literal_daemons

Enforcement = Literal["libwrap", "sockgate", "none", "unknown"]
Kind = Literal["socket", "no-listener", "impostor", "superserved"]
WrapState = Literal["mapped", "absent", "untrusted", "unknown"]
EXIT_OK, EXIT_NOTHING, EXIT_UNKNOWN = 0, 3, 4


@dataclass(frozen=True)
class Enrolled:
    """A daemon the files (or ``--map``) name, with what selects its sockets and where it is
    named (``path:line`` of each rule, ``--map``)."""

    name: str
    selector: Selector
    named_at: tuple[str, ...]


@dataclass(frozen=True)
class HolderWrap:
    """What one holder's memory map says of libwrap (``procfs.Libwrap``, read under its pidfd)."""

    pid: int
    state: WrapState
    path: str | None = None
    why: str | None = None


@dataclass(frozen=True)
class Seen:
    """A selected socket as looked at: its guard (``sock.guard``, or ``sock.unreadable``) and
    its holders' libwrap readings, in holder order."""

    sock: Observed
    wraps: tuple[HolderWrap, ...]


@dataclass(frozen=True)
class Verdict:
    enforcement: Enforcement
    detail: str


@dataclass(frozen=True)
class Row:
    kind: Kind
    daemon: str | None
    named_at: tuple[str, ...]
    sock: Observed | None = None
    via: Level | None = None
    verdict: Verdict | None = None
    wraps: tuple[HolderWrap, ...] = ()
    note: str | None = None


def enrolled(policy: Policy, daemons: Iterable[str], maps: Mapping[str, tuple[Endpoint, ...]],
             launched: Mapping[str, tuple[Endpoint, ...]]) -> tuple[Enrolled, ...]:
    """The daemons the agent would enrol from ``policy`` (hosts_access rules only) and ``maps``,
    each with the places naming it."""
    return tuple(Enrolled(name, sel, named_at(policy, name, maps))
                 for name, origin, sel in selectors(policy, daemons, maps, launched) if origin == "hosts_access")


def named_at(policy: Policy, daemon: str, maps: Mapping[str, tuple[Endpoint, ...]]) -> tuple[str, ...]:
    """``path:line`` of every rule whose daemon list names ``daemon`` literally, then ``--map``."""
    key = fold(daemon)
    at = [f"{r.span.file}:{r.span.line}" for r in policy.rules
          if r.daemons is not None and any(fold(n) == key for n in literal_daemons(r.daemons))]
    if any(fold(d) == key for d in maps):
        at.append("--map")
    return tuple(dict.fromkeys(at))


def audit(services: Sequence[Enrolled], seen: Iterable[Seen], launches: Sequence[Launch],
          impostors: Iterable[tuple[str, Observed]] = (), superserved: Iterable[Observed] = (),
          sys_uid_max: int = DEFAULT_SYS_UID_MAX) -> tuple[Row, ...]:
    """Every row: each daemon's sockets (or that none was seen), in the order the daemons are
    named, then impostors and super-server listeners for unknown daemons (``sys_uid_max``:
    the highest uid of a system account, ``enrol.plausible``)."""
    by_daemon: dict[str, list[Row]] = {s.name: [] for s in services}
    at = {s.name: s.named_at for s in services}
    for x in sorted(seen, key=lambda x: _sock_key(x.sock)):
        found = claims(services, x.sock, sys_uid_max)
        if found is None:
            continue
        level, who = found
        for s in who:
            launch = launch_for(launches, s.name, x.sock) if level == "superserver" else None
            note = None if len(who) == 1 else f"claimed by {', '.join(sorted(c.name for c in who))} alike"
            by_daemon[s.name].append(Row("socket", s.name, at[s.name], x.sock, level, verdict(x, level, launch),
                                         x.wraps, note))
    rows: list[Row] = []
    for s in services:
        rows += by_daemon[s.name] or [Row("no-listener", s.name, s.named_at, note="not running / no listener seen")]
    rows += [Row("impostor", d, at.get(d, ()), o, note="has the name, is not plausibly the daemon: not its socket")
             for d, o in sorted(impostors, key=lambda i: _sock_key(i[1]))]
    rows += [Row("superserved", None, (), o, note=_superserved_note(launches, o)) for o in sorted(superserved, key=_sock_key)]
    return tuple(rows)


SUPERSERVED = "held by a super-server for a daemon no configuration read names (--map DAEMON=PROTO/PORT)"


def _superserved_note(launches: Sequence[Launch], o: Observed) -> str:
    why = unknown_why(launches, o.proto, o.port)
    return SUPERSERVED + (f"; not settled: {why}" if why else "")


def exit_status(rows: Iterable[Row]) -> int:
    """``EXIT_NOTHING`` (3) when a socket of a daemon the files name is enforced by nothing,
    else ``EXIT_UNKNOWN`` (4) when one could not be told, else 0."""
    found = {r.verdict.enforcement for r in rows if r.kind == "socket" and r.verdict is not None}
    return EXIT_NOTHING if "none" in found else EXIT_UNKNOWN if "unknown" in found else EXIT_OK


def launch_for(launches: Iterable[Launch], daemon: str, sock: Observed) -> Launch | None:
    """The launch by which a super-server listens on ``sock``'s port for ``daemon``."""
    return next((x for x in launches if fold(x.daemon) == fold(daemon) and x.endpoint.covers(sock.proto, sock.port)),
                None)


# -- the verdict -------------------------------------------------------------------------------------


def verdict(seen: Seen, via: Level, launch: Launch | None) -> Verdict:
    """Who enforces the rules on one selected socket: its guard first (the kernel drops before
    anyone accepts), then libwrap, else nothing; ``unknown`` when either could not be told."""
    guard = guard_verdict(seen.sock)
    if guard.enforcement == "sockgate":
        return guard
    wrap = wrap_verdict(seen, via, launch)
    if wrap.enforcement == "libwrap":
        return wrap
    if "unknown" in (guard.enforcement, wrap.enforcement):
        return Verdict("unknown", "; ".join(v.detail for v in (wrap, guard) if v.enforcement == "unknown"))
    return Verdict("none", f"{wrap.detail}; {guard.detail}")


def guard_verdict(sock: Observed) -> Verdict:
    if sock.unreadable is not None:
        return Verdict("unknown", f"its filter could not be read: {sock.unreadable}")
    g: GuardState = sock.guard
    match g.state:
        case "sockgate":
            return Verdict("sockgate", f"sockgate guard of service {g.service}, digest {g.digest}, {g.backend}")
        case "none":
            return Verdict("none", "no filter on the socket")
        case "modified":
            return Verdict("unknown", f"a sockgate marker (service {g.service}) on code it was not made from")
        case "foreign":
            return Verdict("unknown", "a filter sockgate did not make")
        case "ebpf":
            return Verdict("unknown", "an eBPF program sockgate has no record of")
        case _:
            assert_never(g.state)


def wrap_verdict(seen: Seen, via: Level, launch: Launch | None) -> Verdict:
    """Whether libwrap is asked about every connection the socket accepts."""
    where = f" ({launch.where})" if launch is not None else ""
    if via == "superserver" and launch is not None:
        match launch.wrap:
            case "tcpd":
                return Verdict("libwrap", f"libwrap, through tcpd{where}")
            case "never":
                return Verdict("none", f"no libwrap: {launch.why}{where}")
            case "superserver":
                pass
            case _:
                assert_never(launch.wrap)
    v = maps_verdict(seen)
    if v.enforcement == "libwrap" and launch is not None:
        limit = f", {launch.why}" if launch.why else ""
        return Verdict("libwrap", f"libwrap, called by the super-server: {v.detail}{limit}{where}")
    return v


def maps_verdict(seen: Seen) -> Verdict:
    """libwrap when every holder maps a trusted one; none when any maps none; else unknown."""
    if not seen.wraps:
        return Verdict("unknown", "no process holding it could be looked at")
    names = {h.pid: h.argv0 or h.comm for h in seen.sock.holders}
    absent = [w for w in seen.wraps if w.state == "absent"]
    if absent:
        return Verdict("none", ", ".join(f"pid {w.pid} ({names.get(w.pid, '?')}) maps no libwrap" for w in absent))
    unsure = [w for w in seen.wraps if w.state != "mapped"]
    if unsure:
        return Verdict("unknown", "; ".join(f"pid {w.pid}: {_wrap_why(w)}" for w in unsure))
    paths = sorted({w.path or "libwrap" for w in seen.wraps})
    return Verdict("libwrap", f"maps {', '.join(paths)}")


def _wrap_why(w: HolderWrap) -> str:
    match w.state:
        case "untrusted":
            return f"maps a libwrap it may have made itself ({w.why})"
        case "unknown" | "absent" | "mapped":
            return w.why or w.state
        case _:
            assert_never(w.state)


def _sock_key(o: Observed) -> tuple[str, int, int, str, int]:
    return (o.proto, o.port, o.family, o.local_addr, o.cookie)


# -- output ------------------------------------------------------------------------------------------

HEADERS = ("Daemon", "Named at", "Proto", "Local", "Process", "Enforced by", "Why")
_SHOWN: Mapping[Enforcement, str] = {"libwrap": "libwrap", "sockgate": "sockgate", "none": "NOTHING", "unknown": "unknown"}


def cells(r: Row) -> list[str]:
    """The text row (not yet escaped: names are the processes' own)."""
    sock = r.sock
    where = [sock.proto + ("6" if sock.family == 6 else ""), sock.local_text(),
             ",".join(f"{h.pid}/{h.argv0 or h.comm}" for h in sock.holders) or "?"] if sock else ["-", "-", "-"]
    match r.kind:
        case "socket":
            assert r.verdict is not None
            by, why = _SHOWN[r.verdict.enforcement], r.verdict.detail + (f" ({r.note})" if r.note else "")
        case "no-listener":
            by, why = "-", r.note or ""
        case "impostor":
            by, why = "(impostor)", r.note or ""
        case "superserved":
            by, why = "(super-server)", r.note or ""
        case _:
            assert_never(r.kind)
    return [r.daemon or "?", ",".join(r.named_at) or "-", *where, by, why]


def to_json(r: Row) -> dict[str, object]:
    """One ``--json`` line; fields in docs/ls.md (*Audit*)."""
    o, wrap = r.sock, {w.pid: w for w in r.wraps}
    return {
        "kind": r.kind,
        "daemon": r.daemon,
        "named_at": list(r.named_at),
        "enforcement": r.verdict.enforcement if r.verdict else None,
        "enforced_by": r.verdict.detail if r.verdict else None,
        "via": r.via,
        "proto": o.proto if o else None,
        "local": o.local_text() if o else None,
        "port": o.port if o else None,
        "cookie": o.cookie if o else None,
        "holders": [] if o is None else [
            {"pid": h.pid, "comm": h.comm, "argv0": h.argv0, "uid": h.euid, "exe": h.exe,
             "libwrap": wrap[h.pid].state if h.pid in wrap else None,
             "libwrap_path": wrap[h.pid].path if h.pid in wrap else None} for h in o.holders],
        "guard": None if o is None or o.unreadable is not None else {
            "status": o.guard.state, "service": o.guard.service, "digest": o.guard.digest, "backend": o.guard.backend},
        "note": r.note,
    }
