"""``sockgate check``: decide clients against a policy and say why, like tcpdmatch(8).

Every client is validated (and resolved) before anything is printed, so a bad client gives
exit 2 with its message on stderr and nothing on stdout. Each ``--client`` is decided on
its own: an address as given (plus its verified host name when the service has name rules,
unless ``--no-resolve``), a host name once per address it resolves to, as tcpdmatch does.
Options of the matched hosts_access rule are listed and never executed. A reverse lookup that
``--timeout`` cut short is not "no name" (libwrap would have waited for it): such a client is
granted only where every name would be, else denied with the timeout as the reason. Facts
sockgate never learns — the server's host name (``daemon@host`` rules) and, when no user is
given, the client's ident user (``user@host`` rules) — are assumed to be whatever denies
(``kernelpart.assume_unlearned``, as the proxy decides); a client libwrap would grant with
them known is denied with a ``note:`` saying so. Exit 0
when every client is allowed, 1 when any is denied. docs/check.md documents the output.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass, replace
from typing import Any

from sockgate.cli.common import add_policy_args, load_from_args, print_json
from sockgate.decide import Decision, decide_service, decide_unnamed
from sockgate.errors import UsageError
from sockgate.peers import Peer
from sockgate.policy.ir import IPAddress, Option, Policy, Service
from sockgate.policy.source import printable
from sockgate.resolve import resolve_service
from sockgate.resolve.kernelpart import assume_unlearned, needs_unlearned, surely_allowed_service
from sockgate.lookup import DEFAULT_TIMEOUT, Looked, SystemNameService, peers_for_client, credentials_peer

MAX_ID = 0xFFFFFFFE
_SIDE_EFFECTS = {
    "spawn": "not executed",
    "twist": "not executed; libwrap hands the connection to this command",
    "banners": "not sent",
    "setenv": "not applied",
    "user": "not applied",
    "group": "not applied",
    "umask": "not applied",
    "nice": "not applied",
    "linger": "not applied",
    "keepalive": "not applied",
    "rfc931": "no ident lookup made",
    "severity": "not logged",
}


def add_parser(p: argparse.ArgumentParser) -> None:
    add_policy_args(p, positional=True)
    p.add_argument("--service", required=True, metavar="NAME[@ADDR]",
                   help="service (daemon) name; @ADDR: the server address, as tcpdmatch takes it")
    p.add_argument("--client", action="append", default=[], metavar="ADDR_OR_NAME",
                   help="client address or host name, [user@]; repeatable")
    p.add_argument("--uid", type=int, help="Unix peer: user id")
    p.add_argument("--gid", type=int, help="Unix peer: group id (default: the user's group)")
    p.add_argument("--exe", metavar="PATH", help="Unix peer: executable path")
    p.add_argument("--pid", type=int, help="Unix peer: process id")
    p.add_argument("--user", metavar="NAME", help="ident user name of the clients (user@host rules)")
    p.add_argument("--server", metavar="ADDR", help="server address the clients connect to (daemon@host)")
    p.add_argument("--no-resolve", action="store_true", help="no name lookups (addresses only)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds per name lookup (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--json", action="store_true", help="one JSON object per client per line")


@dataclass(frozen=True)
class ClientReport:
    client: str
    peers: tuple[Peer, ...]
    decisions: tuple[Decision, ...]
    cut_short: tuple[str | None, ...]  # per peer: why its name lookup was cut short, or None
    notes: tuple[str | None, ...]  # per peer: why it was denied conservatively, or None

    @property
    def allowed(self) -> bool:
        return all(d.allowed for d in self.decisions)

    @property
    def deciding(self) -> int:
        """The index of the decision reported at top level: the first denial, else the first."""
        return next((i for i, d in enumerate(self.decisions) if not d.allowed), 0)


def run(args: argparse.Namespace) -> int:
    clients = _client_specs(args)
    name, server = _service_and_server(args)
    policy = load_from_args(args)
    service = policy.require_service(name)
    verdicts = [_verdict(policy, service, text, looked) for text, looked in _peers(args, clients, service, server)]
    out = [_json(v, service) for v in verdicts] if args.json else None
    if out is not None:
        for obj in out:
            print_json(obj)
    else:
        sys.stdout.write(printable("\n".join(_text(v, policy) for v in verdicts)))
    return 0 if all(v.allowed for v in verdicts) else 1


def _verdict(policy: Policy, service: Service, text: str, looked: tuple[Looked, ...]) -> ClientReport:
    decisions, notes = [], []
    for peer, why in looked:
        decided = assume_unlearned(service, ident=peer.user is None, server_name=True)
        d = _decide(decided, peer, why)
        plain = _decide(service, peer, why) if decided is not service else d
        if d.rule is not None and decided is not service:
            d = replace(d, rule=service.rules[decided.rules.index(d.rule)])
        notes.append(_conservative(service, peer) if plain.allowed and not d.allowed else None)
        decisions.append(_explained(policy, service, d))
    return ClientReport(text, tuple(p for p, _ in looked), tuple(decisions), tuple(w for _, w in looked), tuple(notes))


def _decide(service: Service, peer: Peer, why: str | None) -> Decision:
    if why is None:
        return decide_service(service, peer)
    return decide_unnamed(service, surely_allowed_service(service), peer,
                          f"host-name lookup timed out ({why}); libwrap would wait for the name, and some name is denied")


def _conservative(service: Service, peer: Peer) -> str:
    """Why a client libwrap would grant (ident user "unknown", server name unknown) is denied."""
    unlearned = []
    if peer.user is None and any(needs_unlearned(r, ident=True, server_name=False) for r in service.rules):
        unlearned.append("the client's ident user (sockgate does not query RFC 1413 ident; give [user@]client or --user)")
    if any(needs_unlearned(r, ident=False, server_name=True) for r in service.rules):
        unlearned.append("the server's host name (sockgate does not look it up; daemon@host rules)")
    return (f"decided conservatively: a rule needs {' and '.join(unlearned)}, "
            "so sockgate assumes the answer that denies, as its proxy does")


def _client_specs(args: argparse.Namespace) -> list[str]:
    unix = args.uid is not None
    if args.client and unix:
        raise UsageError("give --client or --uid, not both")
    if not args.client and not unix:
        raise UsageError("no client: give --client ADDR_OR_NAME (repeatable) or --uid N")
    if not unix and (args.gid is not None or args.exe or args.pid is not None):
        raise UsageError("--gid, --exe and --pid describe a Unix peer: give --uid too")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, found {args.timeout:g}")
    if unix:
        _check_credentials(args)
    return list(args.client)


def _check_credentials(args: argparse.Namespace) -> None:
    """Values a kernel could report for a Unix peer (2^32-1 is its "no id")."""
    for flag, value in (("--uid", args.uid), ("--gid", args.gid)):
        if value is not None and not 0 <= value <= MAX_ID:
            raise UsageError(f"{flag} must be 0-{MAX_ID}, found {value}")
    if args.pid is not None and args.pid < 1:
        raise UsageError(f"--pid must be a process id >= 1, found {args.pid}")
    if args.exe is not None and not args.exe.startswith("/"):
        raise UsageError(f"--exe must be an absolute path (as /proc/PID/exe gives it), found {args.exe!r}")


def _service_and_server(args: argparse.Namespace) -> tuple[str, IPAddress | None]:
    """``--service NAME`` and ``--server ADDR``, or tcpdmatch's ``--service NAME@ADDR``."""
    name, at, server_text = args.service.partition("@")
    if not name.strip():
        raise UsageError(f"--service: expected a service name, found {args.service!r}")
    if at and args.server is not None:
        raise UsageError("give the server either in --service NAME@ADDR or with --server, not both")
    if not at:
        server_text = args.server
    if server_text is None:
        return name, None
    try:
        return name, ipaddress.ip_address(server_text.strip("[]"))
    except ValueError:
        if at:
            raise UsageError(f"--service {args.service}: the server must be an IP address, "
                             f"found {server_text!r}") from None
        raise UsageError(f"--server: not an IP address: {server_text!r}") from None


def _explained(policy: Policy, service: Service, d: Decision) -> Decision:
    """A default decision for a service a native policy does not declare says so: a mistyped
    ``--service`` must not pass for the decision of the service meant."""
    if d.rule is not None or policy.kind != "native" or service.name in policy.service_names():
        return d
    known = ", ".join(policy.service_names()) or "none"
    return replace(d, reason=f"no rule matched; service {service.name} is not declared (the policy declares: "
                   f"{known}), so the file-wide default {d.action} applies")


def _peers(
    args: argparse.Namespace, clients: list[str], service: Service, server: IPAddress | None
) -> list[tuple[str, tuple[Looked, ...]]]:
    if args.uid is not None:
        p = credentials_peer(args.uid, args.gid, args.exe, args.pid)
        return [(p.describe(), ((p, None),))]
    resolver = None if args.no_resolve else SystemNameService(args.timeout)
    names = resolve_service(service).needs_host_name
    return [
        (c, peers_for_client(c, resolver, names=names, user=args.user, server=server)) for c in clients
    ]


# ---------------------------------------------------------------------------------------------
# Rendering


def _text(v: ClientReport, policy: Policy) -> str:
    lines = []
    for peer, d, why, note in zip(v.peers, v.decisions, v.cut_short, v.notes):
        lines.append(f"client:   {v.client}")
        if peer.address is not None:
            lines.append(f"client:   address  {peer.address}")
        if why is not None:
            lines.append(f"client:   hostname not known: the lookup timed out ({why})")
        elif peer.name is not None or not peer.name_verified:
            lines.append(f"client:   hostname {_name(peer)}")
        if peer.user:
            lines.append(f"client:   username {peer.user}")
        lines.append(f"server:   service  {d.service}")
        if d.rule is not None:
            lines.append(f"matched:  {d.rule.span.file}:{d.rule.span.line}: {d.rule.text}")
        elif why is not None and not d.allowed:
            lines.append("matched:  none (the host name is needed and its lookup timed out)")
        else:
            lines.append(f"matched:  default ({d.action})")
        for o in d.rule.options if d.rule is not None else ():
            lines.append(f"option:   {o.name}{' ' + o.value if o.value else ''}{_note(o)}")
        if d.rule is None:
            lines.append(f"reason:   {d.reason}")
        if note is not None:
            lines.append(f"note:     {note}")
        lines.append(f"access:   {'granted' if d.allowed else 'denied'}")
        lines.append("")
    return "\n".join(lines)


def _note(option: Option) -> str:
    note = _failing(option) or _SIDE_EFFECTS.get(option.name)
    return f" ({note})" if note else ""


def _failing(option: Option) -> str:
    return f"fails when libwrap runs it, so the rule denies: {option.fails}" if option.fails else ""


def _name(peer: Peer) -> str:
    if not peer.name_verified:
        return f"{peer.name or 'unknown'} (paranoid: does not verify)"
    return peer.name or "unknown"


def _json(v: ClientReport, service: Service) -> dict[str, Any]:
    per = [{**_decision_json(p, d), "name_lookup": "timed out" if why else "done", "conservative": note}
           for p, d, why, note in zip(v.peers, v.decisions, v.cut_short, v.notes)]
    top = dict(per[v.deciding])
    top = {"service": service.name, "client": v.client, **top}
    top["decision"] = "allow" if v.allowed else "deny"
    if len(per) > 1:
        top["addresses"] = per
    return top


def _decision_json(peer: Peer, d: Decision) -> dict[str, Any]:
    matched = None
    options: list[dict[str, str]] = []
    if d.rule is not None:
        matched = {"file": d.rule.span.file, "line": d.rule.span.line, "text": d.rule.text}
        options = [{"name": o.name, "value": o.value, "note": _failing(o) or _SIDE_EFFECTS.get(o.name, "")}
                   for o in d.rule.options]
    return {
        "decision": str(d.action),
        "matched": matched,
        "reason": d.reason,
        "options": options,
        "address": str(peer.address) if peer.address is not None else None,
        "name": peer.name,
        "name_verified": peer.name_verified,
        "user": peer.user,
        "uid": peer.uid,
        "gid": peer.gid,
        "groups": sorted(peer.groups),
        "pid": peer.pid,
        "exe": peer.exe,
    }
