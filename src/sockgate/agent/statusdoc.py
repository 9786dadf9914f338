"""The status document (schema 1): what ``sockgate status`` prints, ``--json`` shows, and
``top`` reads.

One JSON object — the agent, the policy in force and its last reload, each service with its
sockets (held by whom, guarded or not and why), bans and their origins, the ban sources — built
here from typed values (``build``), checked against the schema (``check``: the client trusts an
answer no more than the agent trusts a request), rendered for a terminal of 80 columns
(``render``) and turned into the exit code monitoring wants (``exit_code``: 3 while any
selected socket is not guarded, else 4 while something wanted is not in force — ``degraded``:
a failed reload kept the old policy, CrowdSec's decisions are not applied or its LAPI does not
answer, host names are not refreshed or failed, the bans are not saved, ban lines of the hosts
files do not fit a classic program — for a check that only
reads the exit code must not stay green while sshguard's lines or a fleet's decisions are not
enforced). An enrolled daemon none of whose listeners is seen is flagged
(``no_listener``, and a line with the ``--map`` advice) but does not change the exit code: a
daemon simply not running is not a fault, while a listener a super-server (inetd, xinetd,
systemd socket activation) holds for it is one only the operator can tell apart. The schema is the ``SCHEMA`` table below, checked by a small
hand-written walker: the document is one fixed shape, and a dependency for that is not worth
its weight. Times are RFC 3339 in UTC; anything a process or a peer chose (comm, argv[0],
reasons) is escaped before it reaches a terminal. Pure.
"""

from __future__ import annotations

import datetime
import textwrap
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from sockgate.agent.desired import ServiceSpec
from sockgate.agent.model import Observed
from sockgate.errors import SockgateError
from sockgate.policy.source import escape

SCHEMA_VERSION = 1
WIDTH = 80
EXIT_OK, EXIT_UNGUARDED, EXIT_DEGRADED = 0, 3, 4
# What is wanted but not in force (``degraded``), one word each: the last reload failed (the old
# policy stays), CrowdSec's decisions could not be applied, its LAPI does not answer, a host
# name is not refreshed, failed or its change not applied, the ban state file is not saved,
# ban lines of the hosts files did not fit a classic program.
Degraded = Literal["reload", "crowdsec_bans", "crowdsec_lapi", "names", "state", "ban_lines"]
DEGRADED: tuple[Degraded, ...] = ("reload", "crowdsec_bans", "crowdsec_lapi", "names", "state", "ban_lines")
SocketState = Literal["guarded", "adopted", "unguarded", "retrying"]
ITEMS_MAX = 1000  # bans listed in status; the `bans` request gives them all


class StatusError(SockgateError):
    """A status document not of schema 1."""


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SocketRow:
    sock: Observed
    state: SocketState
    since: float | None = None  # wall clock
    error: str | None = None
    attempts: int = 0
    retry_at: float | None = None  # wall clock


@dataclass(frozen=True)
class ImpostorRow:
    """A socket held by a process that took an enrolled daemon's name (``service``) without
    plausibly being it: listed apart, never guarded, never in the exit code."""

    service: str
    sock: Observed


@dataclass(frozen=True)
class SuperservedRow:
    """A listener a super-server (xinetd, inetd, systemd) holds on a port no configuration the
    agent read maps to a daemon: if it starts a daemon the policy names, that daemon is NOT
    guarded there. Listed apart; not in the exit code (it may well run nothing the policy names)."""

    sock: Observed
    why: str = ""  # why the configurations read could not say which daemon (an unreadable unit, ...)


@dataclass(frozen=True)
class Refusals:
    total: int
    sources: int
    top: tuple[tuple[str, int, float, float], ...] = ()  # source, count, first, last (wall clock)


@dataclass(frozen=True)
class NameRow:
    name: str
    addresses: tuple[str, ...]
    expires: float | None
    stale: bool = False
    error: str | None = None


@dataclass(frozen=True)
class ServiceRow:
    spec: ServiceSpec
    loaded: float
    sockets: tuple[SocketRow, ...] = ()
    refusals: Refusals | None = None  # None: the backend does not count
    bans: int = 0
    names: tuple[NameRow, ...] = ()
    bans_in: Literal["maps", "program"] = "program"  # eBPF ban maps (in place) or compiled in (a recompile)


@dataclass(frozen=True)
class BanRow:
    net: str
    origin: str
    services: tuple[str, ...] | None  # None: every service
    expires: float | None
    added: float
    reason: str | None = None


@dataclass(frozen=True)
class AgentInfo:
    pid: int
    version: str
    started: float
    backend: str  # cbpf or ebpf: what --backend came to in this agent (never "auto")
    watch_mode: Literal["cgroup-bpf", "poll"]
    control_path: str
    control_group: str | None = None
    watch_cgroup: str | None = None
    events: int = 0
    lost: int = 0
    last_resync: float | None = None
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyInfo:
    digest: str
    loaded: float
    files: tuple[str, ...]
    reload_at: float
    reload_ok: bool
    trigger: Literal["start", "signal", "file", "request", "names", "bans"]
    reload_error: str | None = None
    tool_bans: tuple[BanRow, ...] = ()  # the policy's own ban lines: sshguard's, DenyHosts' (agent/toolbans.py)


COUNTERS = ("adopted", "attached", "reloaded", "replaced", "detached", "destroyed")


# -- build -----------------------------------------------------------------------------------------


def build(agent: AgentInfo, policy: PolicyInfo, services: Sequence[ServiceRow], bans: Sequence[BanRow],
          sources: Mapping[str, Mapping[str, Any]] | None = None, errors: Sequence[str] = (),
          impostors: Sequence[ImpostorRow] = (), superserved: Sequence[SuperservedRow] = (),
          degraded: Sequence[Degraded] = ()) -> dict[str, Any]:
    """The document; ``degraded`` the runtime's kinds of what is not in force, to which a failed
    last reload and any host name that is not plainly answered are added here."""
    doc = {
        "schema": SCHEMA_VERSION,
        "agent": _agent(agent),
        "policy": {"digest": policy.digest, "loaded": rfc3339(policy.loaded), "files": list(policy.files),
                   "last_reload": {"at": rfc3339(policy.reload_at), "ok": policy.reload_ok, "trigger": policy.trigger,
                                   "error": policy.reload_error}},
        "services": [_service(s) for s in services],
        "bans": _bans([*bans, *policy.tool_bans]),
        "sources": {k: dict(v) for k, v in (sources or {}).items()},
        "unguarded": sum(1 for s in services for r in s.sockets if r.state in ("unguarded", "retrying")),
        "errors": list(errors),
        "impostors": [_impostor(i) for i in impostors],
        "superserved": [_superserved(r) for r in superserved],
        "degraded": _degraded(policy, services, degraded),
    }
    check(doc)
    return doc


def _degraded(policy: PolicyInfo, services: Sequence[ServiceRow], given: Sequence[Degraded]) -> list[str]:
    kinds = set(given)
    kinds |= {"reload"} if not policy.reload_ok else set()
    kinds |= {"names"} if any(n.error is not None or n.stale for s in services for n in s.names) else set()
    return [k for k in DEGRADED if k in kinds]


def _agent(a: AgentInfo) -> dict[str, Any]:
    return {"pid": a.pid, "version": a.version, "started": rfc3339(a.started), "backend": a.backend,
            "watch": {"mode": a.watch_mode, "cgroup": a.watch_cgroup, "events": a.events, "lost": a.lost,
                      "last_resync": rfc3339(a.last_resync)},
            "control": {"path": a.control_path, "group": a.control_group},
            "counters": {k: int(a.counters.get(k, 0)) for k in COUNTERS}}


def _service(s: ServiceRow) -> dict[str, Any]:
    sel = s.spec.selector
    refusals: dict[str, Any] = {"counted": False}
    if s.refusals is not None:
        refusals = {"counted": True, "total": s.refusals.total, "sources": s.refusals.sources,
                    "top": [{"source": src, "count": n, "first": rfc3339(a), "last": rfc3339(b)} for src, n, a, b in s.refusals.top]}
    return {
        "name": s.spec.name, "origin": s.spec.origin, "daemon": sel.daemon,
        "endpoints": [str(e) for e in (*sel.endpoints, *sel.mapped)], "backend": s.spec.want.backend,
        "digest": s.spec.want.digest, "loaded": rfc3339(s.loaded), "instructions": s.spec.compiled.instructions,
        "kernel_refusal": s.spec.kernel_refusal,
        "names": [{"name": n.name, "addresses": list(n.addresses), "expires": rfc3339(n.expires), "stale": n.stale,
                   "error": n.error} for n in s.names],
        "sockets": [_socket(r) for r in s.sockets],
        "refusals": refusals, "bans": s.bans, "bans_in": s.bans_in,
        "no_listener": sel.daemon is not None and not s.sockets,
    }


def _socket(r: SocketRow) -> dict[str, Any]:
    o, g = r.sock, r.sock.guard
    return {
        "cookie": o.cookie, "proto": o.proto, "family": o.family, "local": o.local_text(), "netns": f"net:[{o.netns}]",
        "holders": [{"pid": h.pid, "comm": h.comm, "argv0": h.argv0, "fd": h.fd} for h in o.holders],
        "state": r.state,
        "guard": {"state": g.state, "service": g.service, "digest": g.digest, "backend": g.backend, "locked": g.locked},
        "since": rfc3339(r.since), "error": r.error, "attempts": r.attempts, "retry_at": rfc3339(r.retry_at),
    }


def _impostor(i: ImpostorRow) -> dict[str, Any]:
    o = i.sock
    return {"service": i.service, "proto": o.proto, "local": o.local_text(),
            "holders": [{"pid": h.pid, "comm": h.comm, "argv0": h.argv0, "uid": h.euid, "exe": h.exe} for h in o.holders]}


def _superserved(r: SuperservedRow) -> dict[str, Any]:
    o = r.sock
    return {"proto": o.proto, "local": o.local_text(), "port": o.port, "why": r.why,
            "holders": [{"pid": h.pid, "comm": h.comm, "argv0": h.argv0, "uid": h.euid, "exe": h.exe} for h in o.holders]}


def _bans(rows: Sequence[BanRow]) -> dict[str, Any]:
    by: dict[str, int] = {}
    for b in rows:
        by[b.origin] = by.get(b.origin, 0) + 1
    items = [{"net": b.net, "origin": b.origin, "services": ["*"] if b.services is None else list(b.services),
              "expires": rfc3339(b.expires), "added": rfc3339(b.added), "reason": b.reason} for b in rows[:ITEMS_MAX]]
    return {"total": len(rows), "by_origin": by, "items": items}


# -- schema ----------------------------------------------------------------------------------------

# A spec is a type (int, str, bool), a tuple of allowed strings or ints, ("?", spec) for
# "or null", ["list of", spec], a dict (an object with exactly these keys), or ("map", spec)
# (an object of any keys whose values are spec).
_TIME = ("?", str)
_GUARD = {"state": ("none", "sockgate", "modified", "foreign", "ebpf"), "service": ("?", str), "digest": ("?", str),
          "backend": ("?", str), "locked": bool}
_SOCKET = {"cookie": int, "proto": ("tcp", "udp"), "family": (4, 6), "local": str, "netns": str,
           "holders": [{"pid": int, "comm": str, "argv0": ("?", str), "fd": int}],
           "state": ("guarded", "adopted", "unguarded", "retrying"), "guard": _GUARD, "since": _TIME,
           "error": ("?", str), "attempts": int, "retry_at": _TIME}
_SERVICE = {"name": str, "origin": ("native", "hosts_access"), "daemon": ("?", str), "endpoints": [str], "backend": str,
            "digest": str, "loaded": _TIME, "instructions": int, "kernel_refusal": ("?", str),
            "names": [{"name": str, "addresses": [str], "expires": _TIME, "stale": bool, "error": ("?", str)}],
            "sockets": [_SOCKET], "refusals": ("refusals",), "bans": int,
            "bans_in": ("maps", "program"), "no_listener": bool}
_REFUSALS = {"counted": bool, "total": int, "sources": int,
             "top": [{"source": str, "count": int, "first": _TIME, "last": _TIME}]}
SCHEMA: dict[str, Any] = {
    "schema": (SCHEMA_VERSION,),
    "agent": {"pid": int, "version": str, "started": _TIME, "backend": str,
              "watch": {"mode": ("cgroup-bpf", "poll"), "cgroup": ("?", str), "events": int, "lost": int, "last_resync": _TIME},
              "control": {"path": str, "group": ("?", str)}, "counters": {k: int for k in COUNTERS}},
    "policy": {"digest": str, "loaded": _TIME, "files": [str],
               "last_reload": {"at": _TIME, "ok": bool, "trigger": ("start", "signal", "file", "request", "names", "bans"),
                               "error": ("?", str)}},
    "services": [_SERVICE],
    "bans": {"total": int, "by_origin": ("map", int),
             "items": [{"net": str, "origin": str, "services": [str], "expires": _TIME, "added": _TIME, "reason": ("?", str)}]},
    "sources": ("map", ("map", ("any",))),
    "unguarded": int,
    "errors": [str],
    "impostors": [{"service": str, "proto": ("tcp", "udp"), "local": str,
                   "holders": [{"pid": int, "comm": str, "argv0": ("?", str), "uid": ("?", int), "exe": ("?", str)}]}],
    "superserved": [{"proto": ("tcp", "udp"), "local": str, "port": int, "why": str,
                     "holders": [{"pid": int, "comm": str, "argv0": ("?", str), "uid": ("?", int), "exe": ("?", str)}]}],
    "degraded": [DEGRADED],
}


def check(doc: object) -> None:
    """Raise ``StatusError`` naming the first place where ``doc`` is not schema 1."""
    _walk(doc, SCHEMA, "status")


def _walk(v: object, spec: Any, where: str) -> None:
    if spec in (int, str, bool):
        if type(v) is not spec:
            raise StatusError(f"{where}: expected {spec.__name__}, found {type(v).__name__}")
    elif isinstance(spec, dict):
        if not isinstance(v, dict) or set(v) != set(spec):
            raise StatusError(f"{where}: expected an object with keys {', '.join(sorted(spec))}")
        for k, sub in spec.items():
            _walk(v[k], sub, f"{where}.{k}")
    elif isinstance(spec, list):
        if not isinstance(v, list):
            raise StatusError(f"{where}: expected a list")
        for i, item in enumerate(v):
            _walk(item, spec[0], f"{where}[{i}]")
    else:
        _special(v, spec, where)


def _special(v: object, spec: tuple[Any, ...], where: str) -> None:
    match spec:
        case ("any",):
            return
        case ("?", sub):
            if v is not None:
                _walk(v, sub, where)
        case ("map", sub):
            if not isinstance(v, dict):
                raise StatusError(f"{where}: expected an object")
            for k, item in v.items():
                _walk(item, sub, f"{where}.{k}")
        case ("refusals",):
            _walk(v, _REFUSALS if isinstance(v, dict) and v.get("counted") is True else {"counted": (False,)}, where)
        case _:
            if type(v) not in {type(x) for x in spec} or v not in spec:
                raise StatusError(f"{where}: expected one of {', '.join(map(str, spec))}, found {v!r:.40}")


def json_schema() -> dict[str, Any]:
    """``SCHEMA`` as a JSON Schema (draft 2020-12), for tools outside sockgate
    (docs/status.schema.json is this, checked by a test)."""
    doc = _json_schema(SCHEMA)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "sockgate agent status, schema 1", **doc}


def _json_schema(spec: Any) -> dict[str, Any]:
    if spec in (int, str, bool):
        return {"type": {int: "integer", str: "string", bool: "boolean"}[spec]}
    if isinstance(spec, dict):
        return {"type": "object", "properties": {k: _json_schema(v) for k, v in spec.items()},
                "required": list(spec), "additionalProperties": False}
    if isinstance(spec, list):
        return {"type": "array", "items": _json_schema(spec[0])}
    match spec:
        case ("any",):
            return {}
        case ("?", sub):
            return {"anyOf": [_json_schema(sub), {"type": "null"}]}
        case ("map", sub):
            return {"type": "object", "additionalProperties": _json_schema(sub)}
        case ("refusals",):
            return {"anyOf": [_json_schema(_REFUSALS), _json_schema({"counted": (False,)})]}
    return {"enum": list(spec)}


# -- text ------------------------------------------------------------------------------------------


def exit_code(doc: Mapping[str, Any]) -> int:
    """3 while any selected socket is unguarded or waiting for a retry; else 4 while anything
    wanted is not in force (``degraded``); else 0."""
    if doc["unguarded"] > 0:
        return EXIT_UNGUARDED
    return EXIT_DEGRADED if doc["degraded"] else EXIT_OK


def render(doc: Mapping[str, Any], width: int = WIDTH) -> str:
    """The document for a terminal, every line at most ``width`` columns."""
    a, p = doc["agent"], doc["policy"]
    lines = [f"agent pid {a['pid']}, {a['backend']}, watching by {a['watch']['mode']}, control {a['control']['path']}",
             f"policy {p['digest']} loaded {p['loaded']}"]
    r = p["last_reload"]
    if not r["ok"]:
        lines.append(f"last reload ({r['trigger']}, {r['at']}) FAILED, old policy kept: {r['error']}")
    for s in doc["services"]:
        lines += _service_text(s)
    b = doc["bans"]
    if b["total"]:
        lines.append(f"bans: {b['total']} ({', '.join(f'{k} {n}' for k, n in sorted(b['by_origin'].items()))})")
    for name, src in sorted(doc["sources"].items()):
        lines.append(f"source {name}: {src.get('state', '?')}" + (f" ({src['error']})" if src.get("error") else ""))
    lines += [f"error: {e}" for e in doc["errors"]]
    for i in doc["impostors"]:
        who = " ".join(_who(h) for h in i["holders"])
        lines.append(f"impostor (name only, not {i['service']}, left alone): {i['proto']} {i['local']} {who}")
    for r in doc["superserved"]:
        who = " ".join(_who(h) for h in r["holders"])
        lines.append(f"held by a super-server for an unknown daemon: {r['proto']} {r['local']} {who}; a daemon the "
                     f"policy names started from it is NOT guarded (--map DAEMON={r['proto']}/{r['port']})"
                     + (f"; not settled: {r['why']}" if r["why"] else ""))
    if doc["degraded"]:
        lines.append(f"DEGRADED, not in force: {', '.join(doc['degraded'])} (see above)")
    n = doc["unguarded"]
    seen = "" if a["watch"]["mode"] != "poll" else " (polling: this network namespace only)"
    lines.append(f"{_count(n, 'socket')} NOT guarded" if n else f"every selected socket is guarded{seen}")
    return "".join(_fit(escape(line), width) for line in lines)


def _service_text(s: Mapping[str, Any]) -> list[str]:
    what = s["daemon"] and f"daemon {s['daemon']}" or "native"
    eps = f", {' '.join(s['endpoints'])}" if s["endpoints"] else ""
    count = s["refusals"]["total"] if s["refusals"]["counted"] else None
    refused = f", {count} refused" if count is not None else ""
    maps = ", bans in maps" if s["bans_in"] == "maps" else ""
    out = [f"{s['name']} ({what}{eps}): {s['backend']} {s['digest']}, {_count(len(s['sockets']), 'socket')}{refused}{maps}"]
    if s["kernel_refusal"]:
        out.append(f"  in user space only: {s['kernel_refusal']}")
    for n in s["names"]:
        said = ", ".join(n["addresses"]) or "no address"
        out.append(f"  host name {n['name']}: {said}" + (f" ({n['error']})" if n["error"] else ""))
    if s["no_listener"]:
        out.append(f"  no listening socket seen: if inetd, xinetd or systemd socket activation holds its listener, "
                   f"that listener is NOT guarded; map its port: --map {s['daemon']}=tcp/PORT")
    for k in s["sockets"]:
        holders = " ".join(f"{h['pid']}/{h['argv0'] or h['comm']}:{h['fd']}" for h in k["holders"]) or "no holder"
        state = k["state"] if k["state"] in ("guarded", "adopted") else _stale(k) or k["state"].upper()
        out.append(f"  {state:<9} {k['proto']} {k['local']} {holders}")
        if k["error"]:
            retry = f" (attempt {k['attempts']}, next {k['retry_at']})" if k["retry_at"] else ""
            out.append(f"    {k['error']}{retry}")
    return out


def _stale(k: Mapping[str, Any]) -> str | None:
    """``STALE`` for a socket not guarded as the policy wants that still carries an earlier
    sockgate program (a locked filter): it is not unfiltered, but not this policy either."""
    return "STALE" if k["guard"]["state"] == "sockgate" else None


def _who(h: Mapping[str, Any]) -> str:
    uid = "?" if h["uid"] is None else h["uid"]
    return f"{h['pid']}/{h['argv0'] or h['comm']} uid {uid} exe {h['exe'] or '?'}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _fit(line: str, width: int) -> str:
    """``line`` wrapped to ``width``, continuation lines indented under its text."""
    indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
    return "\n".join(textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False) or [""]) + "\n"
