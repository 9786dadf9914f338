"""Warnings about a valid policy: what a careful administrator wants to know before applying it.

Errors (what makes a policy invalid) belong to the parsers; lint looks at a parsed ``Policy``
and reports, as ``Diagnostic(severity="warning")`` sorted by position:

* a rule shadowed by earlier rules (their union covers every client it names, so it can
  never decide) — pointing at the rule and at the earlier rules that cover it;
* a rule that matches no client at all (everything it names is excepted, or an empty set);
* a set that overlaps a rule of the opposite action in the direction that weakens a deny:
  an earlier ``allow`` decides addresses a later ``deny`` names, so the deny does not hold
  for them (the other direction, ``deny @blocklist`` before ``allow @office``, is the usual
  way to carve exceptions and is not reported);
* host-name rules, which the kernel filter cannot enforce (only ``sockgate proxy`` can), and
  hosts_access rules that need a name, an ident user or the server address;
* credential rules in a service with only IP endpoints, address rules in a Unix-only one;
* two services that claim the same port or Unix path;
* a hosts_access rule whose daemon list names a service a native block declares: the block
  decides that service alone, so a hosts.deny ban written for it (sshguard, DenyHosts) does
  not apply to it;
* a service without a default;
* a hosts_access option libwrap always fails on when the rule is used (``user U`` without a
  group on Debian), which makes the rule deny every client it matches.

Coverage is computed by ``coverage.py`` (intervals over addresses, structural comparison for
everything else); it never reports a shadow that is not one.
"""

from __future__ import annotations

from typing import Iterator, assert_never

from sockgate.errors import Diagnostic
from sockgate.policy.coverage import Deciders, Spans, cover, describe_point
from sockgate.policy.intervals import union
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    Applies,
    Endpoint,
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
    applies,
)
from sockgate.policy.needs import Need, match_facts, rule_reason
from sockgate.policy.source import Span, quote


MAX_LISTED = 8  # earlier rules named in one shadow warning
_UDP = 1 << 16  # where UDP ports start on the line of ports


def lint(policy: Policy) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for service in policy.services:
        out += _rules(service.rules)
        out += _kinds(service)
        if service.default is None:
            out.append(_warn(service.span, f"service {service.name} has no default: clients that no rule "
                             "matches are denied; write 'default deny' (or 'default allow') to say so"))
    out += _shared_endpoints(policy.services)
    groups: dict[object, list[Rule]] = {}
    for rule in policy.rules:
        groups.setdefault(repr(rule.daemons), []).append(rule)
    for rules in groups.values():
        out += _rules(tuple(rules))
    out += _userspace_only(policy.rules)
    out += _hidden_by_services(policy)
    out += _failing_options(policy.rules)
    return sorted(out, key=lambda d: (d.span.file, d.span.line, d.span.col) if d.span else ("", 0, 0))


def _hidden_by_services(policy: Policy) -> Iterator[Diagnostic]:
    """hosts_access rules that a declared service never consults (``merge``: declared
    services win)."""
    for rule in policy.rules:
        if rule.daemons is None:
            continue
        for service in policy.services:
            if applies(rule.daemons, service.name) is not Applies.NEVER:
                where = f" at {service.span.file}:{service.span.line}" if service.span else ""
                related = ((service.span, f"service {service.name} is declared here"),) if service.span else ()
                yield _warn(rule.span, f"this rule does not apply to service {service.name}: the service block{where} "
                            "alone decides it (declared services win over hosts_access rules)", related)


def _warn(span: Span | None, message: str, related: tuple[tuple[Span, str], ...] = ()) -> Diagnostic:
    return Diagnostic(span, message, "warning", related)


def _where(rule: Rule) -> str:
    return f"{rule.span.file}:{rule.span.line}"


def _rules(rules: tuple[Rule, ...]) -> Iterator[Diagnostic]:
    covers = [cover(r.match) for r in rules]
    deciders = Deciders([(c.spans, frozenset(c.atoms), c.everything) for c in covers])
    for i, rule in enumerate(rules):
        c = covers[i]
        if c.is_empty():
            yield _warn(rule.span, "rule matches no client: everything it names is excepted, or its set is empty")
        elif deciders.covered(i):
            yield _shadowed(rule, [rules[j] for j in deciders.culprits(i, c.spans, frozenset(c.atoms), c.everything)])
        elif rule.action is Action.DENY and i > 0:  # the first rule has no earlier one to overlap
            yield from _overlaps(rule, [(rules[j], shared) for j, shared in sorted(deciders.owners(i, c.spans))])


def _shadowed(rule: Rule, culprits: list[Rule]) -> Diagnostic:
    listed = culprits[:MAX_LISTED]
    places = ", ".join(_where(r) for r in listed) + (" and others" if len(culprits) > MAX_LISTED else "")
    who = f"the rule at {places} already decides" if len(culprits) == 1 else f"the rules at {places} already decide"
    return _warn(
        rule.span,
        f"rule is shadowed and can never match: {who} every client it names",
        tuple((r.span, f"shadowing rule: {r.text}") for r in listed),
    )


def _overlaps(rule: Rule, deciders: list[tuple[Rule, Spans]]) -> Iterator[Diagnostic]:
    """``deciders``: the earlier rules that decide some addresses of deny ``rule`` first, with
    the first such addresses of each."""
    mine = _set_labels(rule.match)
    for other, shared in deciders:
        if other.action is not Action.ALLOW:
            continue
        theirs = _set_labels(other.match)
        if not (mine or theirs):
            continue
        point = describe_point(shared)
        subject = f"set {', '.join(mine)} of this {rule.action} rule" if mine else f"this {rule.action} rule"
        obj = f"the {other.action} rule at {_where(other)}" + (f" (set {', '.join(theirs)})" if theirs else "")
        yield _warn(
            rule.span,
            f"{subject} overlaps {obj} on {point}; that rule decides first, so {point} is allowed",
            ((other.span, f"overlapping rule: {other.text}"),),
        )


def _set_labels(m: Match) -> list[str]:
    match m:
        case AddrMatch(label=label):
            return [label] if label.startswith("@") else []
        case AnyOf(items=items):
            return [label for i in items for label in _set_labels(i)]
        case Except(include=include, exclude=exclude):
            return _set_labels(include) + _set_labels(exclude)
        case MatchAll() | MatchNone() | HostPattern() | HostClass() | Principal() | UserAt():
            return []
        case _:
            assert_never(m)


def _shared_endpoints(services: tuple[Service, ...]) -> Iterator[Diagnostic]:
    """A port or Unix path claimed by two services: which rules guard it is ambiguous. Each
    service is compared with the services that claimed its ports and paths first."""
    claims = [(_port_spans(s), frozenset(e.path for e in s.endpoints if e.proto == "unix"), False) for s in services]
    deciders = Deciders(claims)
    for i, svc in enumerate(services):
        spans, paths, _ = claims[i]
        earlier = {j for j, _ in deciders.owners(i, spans)} | {deciders.atom_owner[p] for p in paths}
        for j in sorted(earlier - {i}):
            other = services[j]
            clash = next((c for e in svc.endpoints for o in other.endpoints if (c := _clash(e, o))), None)
            if clash is None or other.span is None:
                continue
            yield _warn(svc.span, f"service {svc.name} claims {clash}, which service {other.name} "
                        f"({other.span.file}:{other.span.line}) also claims: a socket there would be guarded "
                        "by whichever service is named for it", ((other.span, f"service {other.name} is declared here"),))


def _port_spans(service: Service) -> Spans:
    """The ports of ``service`` on one number line: TCP at 0, UDP at ``_UDP``."""
    return union((lo + (_UDP if e.proto == "udp" else 0), hi + 1 + (_UDP if e.proto == "udp" else 0))
                 for e in service.endpoints if e.proto != "unix" for lo, hi in e.ports)


def _clash(a: Endpoint, b: Endpoint) -> str | None:
    """The first port (or the path) both endpoints select, or None."""
    if a.proto != b.proto:
        return None
    if a.proto == "unix":
        return str(a) if a.path == b.path else None
    shared = [max(lo, blo) for lo, hi in a.ports for blo, bhi in b.ports if lo <= bhi and blo <= hi]
    return f"{a.proto}/{min(shared)}" if shared else None


def _userspace_only(rules: tuple[Rule, ...]) -> Iterator[Diagnostic]:
    """hosts_access rules that need more than the source address (names, ident, server)."""
    for rule in rules:
        why = rule_reason(rule)
        if why is not None:
            yield _warn(rule.span, f"a kernel filter cannot enforce this rule: it {why}; only `sockgate proxy` "
                        "enforces it, and `sockgate run`/`attach` refuse it")


def _failing_options(rules: tuple[Rule, ...]) -> Iterator[Diagnostic]:
    for rule in rules:
        for o in rule.options:
            if o.fails:
                option = quote(f"{o.name} {o.value}")
                yield _warn(o.span or rule.span, f"libwrap always fails on option {option}, so this rule denies"
                            f" every client it matches: {o.fails}")


def _kinds(service: Service) -> Iterator[Diagnostic]:
    protos = {e.proto for e in service.endpoints}
    ip_only = bool(protos) and "unix" not in protos
    unix_only = protos == {"unix"}
    for rule in service.rules:
        facts = match_facts(rule.match)
        if Need.HOST_NAME in facts.needs:
            yield _warn(rule.span, "host-name rule: a kernel filter cannot match host names (they need a DNS "
                        "lookup); only `sockgate proxy` enforces this rule, and `sockgate run`/`attach` refuse it")
        if ip_only and Need.CREDENTIALS in facts.needs:
            yield _warn(rule.span, f"user/group/uid/gid/exe rules need Unix peer credentials, but service "
                        f"{service.name} has no unix: endpoint; this rule never matches an IP client")
        if unix_only and facts.uses_address:
            yield _warn(rule.span, f"address rules need an IP peer, but service {service.name} listens only "
                        "on Unix sockets; this part of the rule never matches")
