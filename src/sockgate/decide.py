"""The reference decision engine: ``(resolved service, peer) -> Decision``.

Pure and total: every other enforcement path (the BPF compiler through its interpreter, the
kernel, the proxy, the exporters) is tested against this function. Rules are tried in order
and the first whose match holds decides; when none does the service default applies. The
service arrives resolved (``sockgate.resolve``): rules a daemon list never selects are gone,
and a ``daemon@host`` list is tested per connection (``server_matches``).

Name lookups never happen here. A peer arrives with whatever the edge learned about it (its
address, and maybe a verified host name, an ident user, Unix credentials); a rule that needs
something the peer does not carry simply does not match, exactly as libwrap treats an
unknown name.

One verdict comes before every rule: a *forged* peer is denied whatever the policy says. A
dual-stack socket shows a real IPv4 client as ``::ffff:a.b.c.d`` but receives its packets with
an IPv4 header; an IPv6 header whose source is IPv4-mapped (``::ffff:0:0/96``) is never sent
by a real stack (RFC 4291 2.5.5.2 reserves those addresses for the API), yet Linux 6.18
delivers such UDP datagrams, and answering one sends the reply as IPv4 to ``a.b.c.d`` — to
127.0.0.1 itself, for ``::ffff:127.0.0.1``. An edge that saw the packet's header says so in
``Peer.header``; one that did not (a TCP connection: the kernel drops those SYNs itself,
``tcp_v6_conn_request``) leaves it None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import assert_never

from sockgate.peers import Peer
from sockgate.policy import hostmatch
from sockgate.policy.netlist import NetList
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    DaemonMatch,
    DaemonPattern,
    Except,
    HostClass,
    HostPattern,
    Match,
    MatchAll,
    MatchNone,
    Policy,
    Principal,
    Rule,
    Service,
    UserAt,
)
from sockgate.resolve import ResolvedService, resolve_service


@dataclass(frozen=True)
class Decision:
    action: Action
    service: str
    rule: Rule | None  # None: the default decided
    reason: str

    @property
    def allowed(self) -> bool:
        return self.action is Action.ALLOW


def decide(policy: Policy, service: str, peer: Peer) -> Decision:
    """Decide ``peer`` for ``service`` under ``policy``. Raises ``KeyError`` for a service the
    policy neither declares nor covers with a default or global rules."""
    return decide_resolved(resolve_service(policy.service(service)), peer)


FORGED_REASON = "forged: an IPv6 packet from an IPv4-mapped address (::ffff:0:0/96); a real IPv4 client arrives with an IPv4 header"

# The service decided last and its resolved form: a caller that decides many peers against one
# ``Service`` value (an accept loop) resolves it once. One slot, replaced whole (one store).
_last: list[ResolvedService] = [resolve_service(Service("", (), None))]


def decide_service(service: Service, peer: Peer) -> Decision:
    """``decide_resolved`` for a ``Service`` (resolved once while the same value is decided)."""
    resolved = _last[0]
    if resolved.service is not service:
        resolved = _last[0] = resolve_service(service)
    return decide_resolved(resolved, peer)


def decide_resolved(service: ResolvedService, peer: Peer) -> Decision:
    """The first rule whose daemon list selects this connection (``daemon@host`` parts: its
    server side) and whose match holds decides; else the default."""
    name = service.name
    if peer.header is not None and peer.forged:  # (header first: one attribute read for most peers)
        return Decision(Action.DENY, name, None, FORGED_REASON)
    for r in service.rules:
        if r.server_test is not None and not server_matches(r.server_test, name, peer):
            continue
        rule = r.rule
        if matches(rule.match, peer):
            where = f"{rule.span.file}:{rule.span.line}"
            return Decision(rule.action, name, rule, f"matched {where}: {rule.text}")
    svc = service.service
    action = svc.effective_default
    said = "default" if svc.default is not None else "implicit default (no default given)"
    return Decision(action, name, None, f"no rule matched; {said} {action._value_}")  # (Enum.__format__ is slow)


def server_matches(d: DaemonMatch, service: str, peer: Peer) -> bool:
    """Does daemon list ``d`` select ``service`` for this connection? A ``daemon@host`` part
    matches the server side of it (``peer.server_address``/``server_name``), whose unknown
    address or name is the word ``unknown`` as on the client side (libwrap's ``server_match``).
    ``policy.ir.applies`` answers the same from the service name alone, where it can."""
    match d:
        case MatchAll():
            return True
        case DaemonPattern(name=name, server=server):
            if not hostmatch.daemon_name_matches(name, service):
                return False
            if server is None:
                return True
            return matches(server, Peer(address=peer.server_address, name=peer.server_name))
        case AnyOf(items=items):
            return any(server_matches(i, service, peer) for i in items)
        case Except(include=include, exclude=exclude):
            return server_matches(include, service, peer) and not server_matches(exclude, service, peer)
        case _:
            assert_never(d)


def matches(m: Match, peer: Peer) -> bool:
    """Does ``m`` hold for ``peer``? Total over every Match node."""
    # An isinstance chain rather than ``match``: this is the proxy's per-connection path, and
    # mypy narrows it the same way, so the closing assert_never still fails on a new kind.
    if isinstance(m, MatchAll):
        return True
    if isinstance(m, MatchNone):
        return False
    if isinstance(m, AddrMatch):
        a = peer.address
        if a is not None and isinstance(m.nets, NetList):  # a set file: a bisection of its union
            return m.nets.contains(int(a), a.version)
        return a is not None and any(a in n for n in m.nets)  # `in` is False across families
    if isinstance(m, AnyOf):
        return any(matches(i, peer) for i in m.items)
    if isinstance(m, Except):
        return matches(m.include, peer) and not matches(m.exclude, peer)
    if isinstance(m, HostPattern):
        return hostmatch.pattern_matches(
            m, peer.name if peer.name_verified else None, peer.address, paranoid=not peer.name_verified
        )
    if isinstance(m, HostClass):
        return hostmatch.class_matches(m.kind, peer.name, peer.name_verified, peer.address)
    if isinstance(m, UserAt):
        return hostmatch.user_matches(m.user, peer.user) and matches(m.host, peer)
    if isinstance(m, Principal):
        return _principal_matches(m, peer)
    assert_never(m)


def _principal_matches(p: Principal, peer: Peer) -> bool:
    match p.kind:
        case "uid" | "user":
            want = p.value if p.kind == "uid" else p.ident
            return peer.uid is not None and want is not None and peer.uid == want
        case "gid" | "group":
            want = p.value if p.kind == "gid" else p.ident
            if want is None:
                return False
            return peer.gid == want or want in peer.groups
        case "pid":
            return peer.pid is not None and peer.pid == p.value
        case "exe":
            return peer.exe is not None and _exe_pattern(str(p.value)).fullmatch(peer.exe) is not None
        case _:
            assert_never(p.kind)


def _exe_pattern(pattern: str) -> "re.Pattern[str]":
    """``exe`` paths: ``*`` matches any run of characters; everything else is literal (an
    fnmatch ``[`` or ``?`` in a real path must not turn into a character class)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def decide_unnamed(
    service: Service | ResolvedService, surely: Service | ResolvedService, peer: Peer, why: str
) -> Decision:
    """The decision for ``peer`` (no name) whose host-name lookup was cut short: the engine's
    when ``surely`` (``kernelpart.surely_allowed_service(service)``) allows it, else a denial saying
    ``why`` — never an allow that some name could have turned into a deny."""
    if _decide_either(surely, peer).allowed:
        return _decide_either(service, peer)
    return Decision(Action.DENY, service.name, None, why)


def _decide_either(service: Service | ResolvedService, peer: Peer) -> Decision:
    return decide_resolved(service, peer) if isinstance(service, ResolvedService) else decide_service(service, peer)
