"""``Policy`` → canonical native policy text.

The output parses back (``parser.parse_policy``) to an equal policy, positions and rule texts
aside: the file-wide default, then sets, then services, each rule on one line with its
limits, service-wide limits, proxy URLs (quoted, since a URL may hold ``=``), and the default.
Addresses print as written (``AddrMatch.label``) when the label still denotes the same
networks, so ``@office`` stays a set reference; otherwise the networks themselves are printed.
hosts_access rules (global, selected by daemon lists) have no native form and are printed as
comments, so the output is still a valid policy that says what it leaves out.
"""

from __future__ import annotations

import re
from typing import assert_never

from sockgate.policy import literals
from sockgate.policy.ir import (
    AddressSet,
    AddrMatch,
    AnyOf,
    Except,
    HostClass,
    HostPattern,
    IPNetwork,
    Limits,
    Match,
    MatchAll,
    MatchNone,
    Policy,
    Principal,
    Rule,
    Service,
    UserAt,
)

_BARE = re.compile(r'[^\s{},=<"#]+')
INDENT = "    "


def format_policy(policy: Policy) -> str:
    sets = {s.name: s for s in policy.sets}
    blocks: list[str] = []
    if policy.default is not None:
        blocks.append(f"default {policy.default}")
    if policy.sets:
        blocks.append("\n".join(format_set(s) for s in policy.sets))
    for service in policy.services:
        blocks.append(format_service(service, sets))
    if policy.rules:
        lines = ["# hosts_access rules (no native form):"]
        lines += [f"#   {r.span.file}:{r.span.line}: {r.text}" for r in policy.rules]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def format_set(s: AddressSet) -> str:
    if s.path is not None:
        return f"set {s.name} < {quote(s.path)}"
    return f"set {s.name} = {{ {', '.join(format_net(n) for n in s.nets)} }}".replace("{  }", "{ }")


def format_service(s: Service, sets: dict[str, AddressSet]) -> str:
    head = " ".join(["service", s.name, *(str(e) for e in s.endpoints)])
    body = [format_rule(r, sets) for r in s.rules]
    body += format_limits(s.limits, sep="\n")
    body += [f"listen {quote(u)}" for u in s.listen]
    if s.forward is not None:
        body.append(f"forward {quote(s.forward)}")
    if s.default is not None:
        body.append(f"default {s.default}")
    if not body:
        return head + " {\n}"
    return head + " {\n" + "\n".join(INDENT + line for line in "\n".join(body).split("\n")) + "\n}"


def format_rule(r: Rule, sets: dict[str, AddressSet] | None = None) -> str:
    return " ".join([str(r.action), format_match(r.match, sets or {}), *format_limits(r.limits)])


def format_limits(limits: Limits | None, sep: str = " ") -> list[str]:
    if limits is None:
        return []
    out: list[str] = []
    if limits.concurrent_per_source is not None:
        out.append(f"limit concurrent {limits.concurrent_per_source} per source")
    if limits.rate_per_source is not None:
        out.append(f"limit rate {literals.format_rate(limits.rate_per_source)} per source")
    if limits.concurrent_total is not None:
        out.append(f"limit concurrent {limits.concurrent_total}")
    if limits.rate_total is not None:
        out.append(f"limit rate {literals.format_rate(limits.rate_total)}")
    if limits.ban_seconds is not None:
        out.append(f"ban {literals.format_duration(limits.ban_seconds)}")
    return out


def format_match(m: Match, sets: dict[str, AddressSet]) -> str:
    match m:
        case MatchAll():
            return "all"
        case MatchNone():
            return "{ }"
        case AddrMatch():
            return _format_addr(m, sets)
        case AnyOf(items=items):
            return "{ " + ", ".join(format_match(i, sets) for i in items) + " }" if items else "{ }"
        case Except(include=include, exclude=exclude):
            inc = format_match(include, sets)
            if isinstance(include, Except):
                inc = "{ " + inc + " }"
            return f"{inc} except {format_match(exclude, sets)}"
        case HostPattern(pattern=pattern):
            return f"host {pattern}"
        case Principal(kind=kind, value=value):
            text = quote(str(value)) if kind == "exe" and not _BARE.fullmatch(str(value)) else str(value)
            return f"{kind} {text}"
        case HostClass(kind=kind):
            return f"host {kind}"
        case UserAt(user=user):
            return f"user {user}"
        case _:
            assert_never(m)


def _format_addr(m: AddrMatch, sets: dict[str, AddressSet]) -> str:
    label = m.label
    if label.startswith("@") and label[1:] in sets and sets[label[1:]].nets == m.nets:
        return label
    if len(m.nets) == 1 and label and _label_net(label) == m.nets[0]:
        return label
    if len(m.nets) == 1:
        return format_net(m.nets[0])
    return "{ " + ", ".join(format_net(n) for n in m.nets) + " }"


def _label_net(label: str) -> IPNetwork | None:
    try:
        return literals.network(label)
    except literals.LiteralError:
        return None


def format_net(n: IPNetwork) -> str:
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
