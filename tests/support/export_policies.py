"""Random policies for the exporter tests (hypothesis strategies), built as IR directly.

Networks are drawn around a fixed list of probe addresses inside the netns lab's ranges
(198.18.0.0/15, fd5b:5347::/64) with prefix lengths from host routes to ``/0``, so the
rules of one policy overlap each other and the probes land on every kind of boundary.
Services use a fixed port layout (``PORTS``), with one deliberate overlap (the last service
shares the first one's port: the first in order must judge it).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from hypothesis import strategies as st

from sockgate.export import ExportFormat as Format, Exported, export
from sockgate.export.ports import parse_map, parse_services
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    Endpoint,
    Except,
    HostPattern,
    Limits,
    Match,
    MatchAll,
    MatchNone,
    Policy,
    Principal,
    Rule,
    Service,
)
from sockgate.policy.accounts import StaticAccounts
from sockgate.policy.ir import IPAddress
from sockgate.policy.parser import parse_policy
from sockgate.policy.source import Span

PROBES_V4 = ("198.18.0.2", "198.18.1.1", "198.18.1.2", "198.18.1.130", "198.18.2.7", "198.18.3.9", "198.19.0.5", "198.19.200.1")
PROBES_V6 = ("fd5b:5347::2", "fd5b:5347::1:1", "fd5b:5347::1:2", "fd5b:5347::1:8001", "fd5b:5347::2:7", "fd5b:5347::a:1", "fd5b:5347::a:ffff")
PREFIX_V4 = (32, 31, 30, 25, 24, 23, 16, 15, 8, 0)
PREFIX_V6 = (128, 127, 120, 112, 96, 64, 48, 0)

TCP_A, UDP_B, TCP_C, UNCOVERED = 2201, 2253, 2280, 2299
PORTS = {
    "alpha": (Endpoint("tcp", ((TCP_A, TCP_A),)),),
    "bravo": (Endpoint("udp", ((UDP_B, UDP_B),)),),
    "charlie": (Endpoint("tcp", ((TCP_C, TCP_C + 1),)), Endpoint("udp", ((TCP_C, TCP_C),))),
    "delta": (Endpoint("tcp", ((TCP_A, TCP_A),)),),  # shadowed by alpha
}


def _span(line: int) -> Span:
    return Span("gen.policy", line, 5)


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if draw(st.booleans()):
        addr, plen = draw(st.sampled_from(PROBES_V4)), draw(st.sampled_from(PREFIX_V4))
    else:
        addr, plen = draw(st.sampled_from(PROBES_V6)), draw(st.sampled_from(PREFIX_V6))
    return ipaddress.ip_network(f"{addr}/{plen}", strict=False)


def addr_match() -> st.SearchStrategy[Match]:
    return st.builds(
        lambda nets, label: AddrMatch(tuple(nets), label),
        st.lists(networks(), min_size=1, max_size=3),
        st.sampled_from(["", "@office", "@lab"]),
    )


def matches(userspace: bool = False) -> st.SearchStrategy[Match]:
    leaves: list[st.SearchStrategy[Match]] = [addr_match(), addr_match(), st.just(MatchAll())]
    if userspace:
        leaves += [st.just(HostPattern(".example.com")), st.just(Principal("uid", 0))]
    base = st.one_of(*leaves)
    return st.recursive(
        base,
        lambda inner: st.one_of(
            st.builds(lambda items: AnyOf(tuple(items)), st.lists(inner, min_size=1, max_size=3)),
            st.builds(Except, inner, inner),
        ),
        max_leaves=5,
    )


@st.composite
def rules(draw: st.DrawFn, line: int, userspace: bool = False) -> Rule:
    action = draw(st.sampled_from([Action.ALLOW, Action.DENY]))
    match = draw(st.one_of(matches(userspace), st.just(MatchNone())) if draw(st.integers(0, 9)) == 0 else matches(userspace))
    limits = Limits(concurrent_per_source=3) if userspace and draw(st.integers(0, 9)) == 0 else None
    return Rule(action, match, _span(line), f"{action} <rule {line}>", limits=limits)


@st.composite
def policies(draw: st.DrawFn, userspace: bool = False) -> Policy:
    """A native policy over the ``PORTS`` layout; with ``userspace`` some rules and a Unix
    service need user space (export them with ``skip_userspace``)."""
    names = draw(st.sampled_from([("alpha", "bravo", "charlie", "delta"), ("alpha", "bravo", "charlie")]))
    services = []
    line = 1
    for name in names:
        rs = []
        for _ in range(draw(st.integers(0, 4))):
            rs.append(draw(rules(line, userspace)))
            line += 1
        default = draw(st.sampled_from([Action.ALLOW, Action.DENY, None]))
        services.append(Service(name, tuple(rs), default, PORTS[name], default_span=_span(line) if default else None))
        line += 1
    if userspace:
        services.append(Service("sock", (Rule(Action.ALLOW, Principal("uid", 0), _span(line), "allow uid 0"),), Action.DENY, (Endpoint("unix", path="/run/x.sock"),)))
    return Policy(services=tuple(services), sources=("gen.policy",))


# --- hostile strings: what a policy's author or its file's name can put in the output ------------

# What could end a comment line or confuse a reader: line ends of every kind, NUL and other
# controls, pf's line continuation, quoting and nft/pf syntax, an undecodable byte
# (surrogate-escaped), a bidirectional override, and rule words to inject.
HOSTILE_CHARS = "\n\r\t\x00\x0b\x0c\x1b\x7f\x85\u2028\u2029\u202e\udcff\\\"';#{}$@<>/ é"
_pieces = st.one_of(
    st.sampled_from(list(HOSTILE_CHARS)),
    st.sampled_from(["\naccept\n", "\\\npass in quick from any\n", "}\n", "\r\ndrop", "\ttable inet x {}"]),
    st.characters(),
)
hostile = st.lists(_pieces, min_size=1, max_size=12).map("".join)


def identifier(name: str) -> str:
    """What the exporters make of a name in an identifier (``common.IdentifierPool``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


@dataclass(frozen=True)
class Dress:
    """The strings a policy carries: ``names``/``labels`` per service/rule, the rest shared."""

    file: str
    text: str
    path: str
    names: tuple[str, ...]
    labels: tuple[str, ...]

    def plain(self) -> Dress:
        return Dress("x", "x", "/x", tuple(map(identifier, self.names)), tuple(map(identifier, self.labels)))


def dress(policy: Policy, d: Dress) -> Policy:
    labels = iter(d.labels * 100)
    services = []
    for svc, name in zip(policy.services, d.names):
        rules = tuple(_dress_rule(r, d, next(labels)) for r in svc.rules)
        eps = tuple(replace(e, path=d.path) if e.proto == "unix" else e for e in svc.endpoints)
        span = svc.default_span and replace(svc.default_span, file=d.file)
        services.append(replace(svc, name=name, rules=rules, endpoints=eps, default_span=span))
    return replace(policy, services=tuple(services), sources=(d.file, d.text))


def _dress_rule(rule: Rule, d: Dress, label: str) -> Rule:
    match: Match = rule.match
    if isinstance(match, AddrMatch) and match.label:
        match = replace(match, label="@" + label)
    return replace(rule, match=match, span=replace(rule.span, file=d.file), text=d.text)


def _no_surrogates(text: str) -> str:
    return "".join("?" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


@st.composite
def dresses(draw: st.DrawFn) -> Dress:
    # no surrogates in service names: no reader yields one (the native parser takes
    # identifiers), and Policy.digest encodes names as UTF-8
    names = draw(st.lists(hostile.map(_no_surrogates), min_size=5, max_size=5, unique_by=identifier))
    return Dress(draw(hostile), draw(hostile), draw(hostile), tuple(names), tuple(draw(st.lists(hostile, min_size=1, max_size=3))))



DATA = Path(__file__).parent.parent / "data" / "export"
ACCOUNTS = StaticAccounts(users={"root": 0}, groups={"docker": 998})


def load_native(name: str) -> Policy:
    def read(path: str) -> str:
        return (DATA / path).read_text()

    return parse_policy((DATA / name).read_text(), name, read=read, accounts=ACCOUNTS)


def load_hosts(allow: str, deny: str) -> Policy:
    from sockgate.policy.hostsaccess import parse_hosts_access

    return parse_hosts_access(allow, deny, read=lambda path: (DATA / path).read_text())


HOSTS_MAP = ("sshd=tcp/22", "in.ftpd=tcp/21", "portmap=tcp/111", "portmap=udp/111", "in.telnetd=tcp/23")
SERVICES = "ntp\t\t123/udp\t\t\t# Network Time Protocol\nssh\t\t22/tcp\n"


def export_hosts_access(fmt: Format) -> Exported:
    """tests/data/export/hosts.{allow,deny} exported as ``fmt`` with ``HOSTS_MAP``, ``SERVICES``
    and ``skip_userspace``."""
    policy = load_hosts("hosts.allow", "hosts.deny")
    return export(policy, fmt, mapped=parse_map(HOSTS_MAP), services_db=parse_services(SERVICES), skip_userspace=True)


def golden_cases(fmt: Format) -> list[tuple[str, str, dict[str, object]]]:
    """``(policy, golden, export options)`` for the native example policies in format ``fmt``."""
    return [
        ("office.policy", f"office.{fmt}.golden", {"skip_userspace": True}),
        ("ranges.policy", f"ranges.{fmt}.golden", {"skip_userspace": True, "action": "reject", "table": "edge"}),
    ]


def check_golden(name: str, text: str) -> None:
    """Compare with ``tests/data/export/NAME``; SOCKGATE_UPDATE_GOLDEN=1 rewrites it."""
    path = DATA / name
    if os.environ.get("SOCKGATE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def addresses(policy: Policy) -> list[IPAddress]:
    """The probes plus the edges of every network the policy names."""
    out: set[IPAddress] = {ipaddress.ip_address(a) for a in PROBES_V4 + PROBES_V6}
    stack: list[object] = [r.match for s in policy.services for r in s.rules]
    while stack:
        m = stack.pop()
        for n in getattr(m, "nets", ()):
            lo, hi = int(n.network_address), int(n.broadcast_address)
            top = (1 << n.max_prefixlen) - 1
            for v in (lo - 1, lo, hi, hi + 1):
                if 0 <= v <= top:
                    out.add(ipaddress.IPv4Address(v) if n.version == 4 else ipaddress.IPv6Address(v))
        stack += list(getattr(m, "items", ())) + [x for x in (getattr(m, "include", None), getattr(m, "exclude", None)) if x]
    return sorted(out, key=lambda a: (a.version, int(a)))


def owner(policy: Policy, proto: str, port: int) -> str | None:
    """The service that must judge ``proto``/``port``: the first in policy order listening
    there (computed from the policy, not from the exporter's plan)."""
    for s in policy.services:
        for ep in s.endpoints:
            if ep.proto == proto and any(lo <= port <= hi for lo, hi in ep.ports):
                return s.name
    return None
