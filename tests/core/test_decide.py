"""The decision engine: first match wins, else the default — checked against a simple model."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Union

from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.decide import FORGED_REASON, decide, decide_resolved, decide_service, server_matches
from sockgate.peers import Peer
from sockgate.policy.accounts import StaticAccounts
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    DaemonMatch,
    DaemonPattern,
    Except,
    HostPattern,
    Match,
    MatchAll,
    MatchNone,
    Principal,
    Rule,
    Service,
)
from sockgate.policy.parser import parse_policy
from sockgate.policy.source import Span
from sockgate.resolve import resolve_service

SPAN = Span("gen.conf", 1, 1)

# A small address universe so generated rules and peers meet often: 10.0.0.0/24 and 2001:db8::/120.
V4_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))


# -- an independent model: addresses as (version, int), networks as (version, base, prefix) ---


@dataclass(frozen=True)
class MPeer:
    version: int | None  # None: a Unix peer
    addr: int
    uid: int | None
    gid: int | None


MNet = tuple[int, int, int]
MMatch = Union[tuple[str], tuple[str, tuple[MNet, ...]], tuple[str, int], tuple[str, tuple["MMatch", ...]], tuple[str, "MMatch", "MMatch"]]


def m_holds(m: tuple, p: MPeer) -> bool:  # type: ignore[type-arg]
    tag = m[0]
    if tag == "all":
        return True
    if tag == "none":
        return False
    if tag == "nets":
        width = 32 if p.version == 4 else 128
        return p.version is not None and any(
            v == p.version and (p.addr >> (width - pre)) == (base >> (width - pre)) for v, base, pre in m[1]
        )
    if tag == "uid":
        return p.uid == m[1]
    if tag == "gid":
        return p.gid == m[1]
    if tag == "any":
        return any(m_holds(i, p) for i in m[1])
    if tag == "except":
        return m_holds(m[1], p) and not m_holds(m[2], p)
    raise AssertionError(tag)


def m_decide(rules: list[tuple[str, tuple]], default: str, p: MPeer) -> tuple[str, int | None]:  # type: ignore[type-arg]
    for i, (action, m) in enumerate(rules):
        if m_holds(m, p):
            return action, i
    return default, None


# -- the same matches as IR ------------------------------------------------------------------


def to_ir(m: tuple) -> Match:  # type: ignore[type-arg]
    tag = m[0]
    if tag == "all":
        return MatchAll()
    if tag == "none":
        return MatchNone()
    if tag == "nets":
        return AddrMatch(tuple(ipaddress.ip_network((base, pre)) for v, base, pre in m[1]))
    if tag in ("uid", "gid"):
        return Principal(tag, m[1])
    if tag == "any":
        return AnyOf(tuple(to_ir(i) for i in m[1]))
    return Except(to_ir(m[1]), to_ir(m[2]))


def _net(version: int, offset: int, prefix: int) -> MNet:
    width, base = (32, V4_BASE) if version == 4 else (128, V6_BASE)
    addr = (base + offset) >> (width - prefix) << (width - prefix)
    return (version, addr, prefix)


mnet = st.one_of(
    st.builds(_net, st.just(4), st.integers(0, 255), st.integers(22, 32)),
    st.builds(_net, st.just(6), st.integers(0, 255), st.integers(118, 128)),
)
leaf = st.one_of(
    st.just(("all",)),
    st.builds(lambda ns: ("nets", tuple(ns)), st.lists(mnet, min_size=1, max_size=3)),
    st.builds(lambda k, n: (k, n), st.sampled_from(["uid", "gid"]), st.integers(0, 3)),
)
mmatch = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(lambda xs: ("any", tuple(xs)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda a, b: ("except", a, b), inner, inner),
    ),
    max_leaves=6,
)
mrules = st.lists(st.tuples(st.sampled_from(["allow", "deny"]), mmatch), max_size=8)
mpeer = st.one_of(
    st.builds(lambda o: MPeer(4, V4_BASE + o, None, None), st.integers(0, 300)),
    st.builds(lambda o: MPeer(6, V6_BASE + o, None, None), st.integers(0, 300)),
    st.builds(lambda u, g: MPeer(None, 0, u, g), st.integers(0, 3), st.integers(0, 3)),
)


def to_peer(p: MPeer, mapped: bool = False) -> Peer:
    if p.version is None:
        return Peer(uid=p.uid, gid=p.gid)
    if p.version == 4:
        a4 = ipaddress.IPv4Address(p.addr)
        return Peer(address=ipaddress.IPv6Address(f"::ffff:{a4}") if mapped else a4)
    return Peer(address=ipaddress.IPv6Address(p.addr))


@settings(max_examples=400, deadline=None)
@given(mrules, st.sampled_from(["allow", "deny"]), mpeer)
def test_first_match_wins_else_default(rules: list, default: str, peer: MPeer) -> None:  # type: ignore[type-arg]
    service = Service(
        "svc",
        tuple(Rule(Action(a), to_ir(m), Span("gen.conf", i + 1, 1), f"rule {i}") for i, (a, m) in enumerate(rules)),
        Action(default),
    )
    want_action, want_index = m_decide(rules, default, peer)
    got = decide_service(service, to_peer(peer))
    assert str(got.action) == want_action
    assert got.rule is (None if want_index is None else service.rules[want_index])
    if peer.version == 4:  # an IPv4-mapped IPv6 peer is decided as the IPv4 address
        mapped = decide_service(service, to_peer(peer, mapped=True))
        assert (mapped.action, mapped.rule) == (got.action, got.rule)
        # ... when it came with an IPv4 header (or the edge did not say); in an IPv6 header it is forged
        genuine = decide_service(service, replace(to_peer(peer, mapped=True), header=4))
        assert (genuine.action, genuine.rule) == (got.action, got.rule)
        forged = decide_service(service, replace(to_peer(peer, mapped=True), header=6))
        assert (forged.action, forged.rule, forged.reason) == (Action.DENY, None, FORGED_REASON)
    elif peer.version == 6:
        six = decide_service(service, replace(to_peer(peer), header=6))
        assert (six.action, six.rule) == (got.action, got.rule)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["allow", "deny"]), mnet), max_size=6, unique_by=lambda r: r[1]), mpeer)
def test_parsed_policies_decide_like_the_model(rules: list, peer: MPeer) -> None:  # type: ignore[type-arg]
    lines = [f"  {a} {ipaddress.ip_network((base, pre))}" for a, (v, base, pre) in rules]
    policy = parse_policy("service s tcp/1 {\n" + "\n".join(lines) + "\n  default deny\n}\n", "gen.conf")
    want_action, want_index = m_decide([(a, ("nets", (n,))) for a, n in rules], "deny", peer)
    got = decide(policy, "s", to_peer(peer))
    assert str(got.action) == want_action
    assert (got.rule.span.line - 2 if got.rule else None) == want_index  # rules start on line 2


# -- examples ---------------------------------------------------------------------------------

POLICY = parse_policy(
    """
    set office = { 192.0.2.0/24, 2001:db8:1::/48 }
    service ssh tcp/22 {
        deny 192.0.2.66
        allow @office
        allow 10.0.0.0/8 except 10.66.0.0/16
        default deny
    }
    service admin unix:/run/a.sock {
        allow user alice
        allow group docker
        allow exe /usr/lib/x/*
        allow exe "/opt/[v1]/run?"
        default deny
    }
    service web tcp/80 { allow host .example.com  allow host www.example.org  default deny }
    default allow
    """,
    "t.conf",
    accounts=StaticAccounts(users={"alice": 1000}, groups={"docker": 999}),
)


def test_address_decisions_and_reasons() -> None:
    d = decide(POLICY, "ssh", Peer.parse("192.0.2.66"))
    assert (d.action, d.rule.text if d.rule else None) == (Action.DENY, "deny 192.0.2.66")
    assert d.reason == "matched t.conf:4: deny 192.0.2.66"
    assert decide(POLICY, "ssh", Peer.parse("::ffff:192.0.2.7")).action is Action.ALLOW
    assert decide(POLICY, "ssh", Peer.parse("[2001:db8:1::5]")).action is Action.ALLOW
    assert decide(POLICY, "ssh", Peer.parse("10.66.1.1")).action is Action.DENY
    assert decide(POLICY, "ssh", Peer.parse("10.65.1.1")).action is Action.ALLOW
    d = decide(POLICY, "ssh", Peer.parse("203.0.113.1"))
    assert (d.action, d.rule, d.reason) == (Action.DENY, None, "no rule matched; default deny")


def test_principals() -> None:
    assert decide(POLICY, "admin", Peer(uid=1000, gid=5)).action is Action.ALLOW
    assert decide(POLICY, "admin", Peer(uid=1001, gid=5)).action is Action.DENY
    assert decide(POLICY, "admin", Peer(uid=1001, gid=5, groups=frozenset({999}))).action is Action.ALLOW
    assert decide(POLICY, "admin", Peer(uid=1, exe="/usr/lib/x/bin/tool")).action is Action.ALLOW
    assert decide(POLICY, "admin", Peer(uid=1, exe="/usr/lib/y/tool")).action is Action.DENY
    # only '*' is a wildcard in exe paths: '[' and '?' are literal characters
    assert decide(POLICY, "admin", Peer(uid=1, exe="/opt/[v1]/run?")).action is Action.ALLOW
    assert decide(POLICY, "admin", Peer(uid=1, exe="/opt/v/runx")).action is Action.DENY
    assert decide(POLICY, "admin", Peer.parse("192.0.2.7")).action is Action.DENY


def test_host_names_need_a_verified_name() -> None:
    assert decide(POLICY, "web", Peer.parse("192.0.2.7", name="a.b.example.com")).action is Action.ALLOW
    assert decide(POLICY, "web", Peer.parse("192.0.2.7", name="WWW.Example.ORG")).action is Action.ALLOW
    assert decide(POLICY, "web", Peer.parse("192.0.2.7", name="example.com")).action is Action.DENY
    assert decide(POLICY, "web", Peer.parse("192.0.2.7", name="x.example.com", name_verified=False)).action is Action.DENY
    assert decide(POLICY, "web", Peer.parse("192.0.2.7")).action is Action.DENY


def test_host_pattern_is_not_hosts_access_flavour() -> None:
    svc = Service("s", (Rule(Action.ALLOW, HostPattern("192.0.2."), SPAN, "x"),), Action.DENY)
    assert decide_service(svc, Peer.parse("192.0.2.7")).action is Action.DENY


def test_shipped_example_decides_as_its_comments_say() -> None:
    from pathlib import Path

    from sockgate.loading import load

    example = load(Path(__file__).parents[2] / "src" / "sockgate" / "examples" / "example.conf")
    cases = [
        ("ssh", "192.0.2.10", Action.ALLOW),
        ("ssh", "192.0.2.66", Action.DENY),  # blocklist.txt
        ("ssh", "10.66.0.1", Action.DENY),  # the hole in 10.0.0.0/8
        ("ssh", "10.65.0.1", Action.ALLOW),
        ("ssh", "203.0.113.200", Action.DENY),  # excepted /25
        ("ssh", "::ffff:203.0.113.5", Action.ALLOW),
        ("web", "198.51.100.200", Action.DENY),  # blocklist.txt
        ("web", "2001:db8:ffff::1", Action.ALLOW),
        ("dns", "127.0.0.1", Action.ALLOW),
        ("dns", "203.0.113.5", Action.DENY),
        ("metrics", "::1", Action.ALLOW),  # the drop-in example-metrics.conf
        ("metrics", "192.0.2.10", Action.DENY),
        ("unlisted", "192.0.2.10", Action.DENY),  # the file-wide default
    ]
    got = [(s, c, decide(example, s, Peer.parse(c)).action) for s, c, _ in cases]
    assert got == cases
    assert decide(example, "admin", Peer(uid=0)).action is Action.ALLOW
    assert decide(example, "admin", Peer(uid=4242, gid=4242, exe="/usr/lib/example/helper")).action is Action.ALLOW
    assert decide(example, "admin", Peer(uid=4242, gid=4242, exe="/usr/bin/python3")).action is Action.DENY
    assert "blocklist.txt" in example.sources[1] and example.sources[-1].endswith("example-metrics.conf")


def test_forged_peer_is_denied_before_any_rule_and_shown_as_it_came() -> None:
    svc = Service("dns", (Rule(Action.ALLOW, MatchAll(), SPAN, "allow all"),), Action.ALLOW)
    forged = Peer.parse("::ffff:127.0.0.1", port=53, header=6)
    assert forged.address == ipaddress.IPv4Address("127.0.0.1") and forged.forged
    assert forged.address_text() == "::ffff:127.0.0.1" and forged.describe() == "::ffff:127.0.0.1"
    d = decide_service(svc, forged)
    assert (d.action, d.rule, d.reason) == (Action.DENY, None, FORGED_REASON)
    assert FORGED_REASON.startswith("forged: an IPv6 packet from an IPv4-mapped address")
    for genuine in (Peer.parse("::ffff:127.0.0.1", header=4), Peer.parse("::ffff:127.0.0.1"), Peer.parse("::1", header=6)):
        assert not genuine.forged and decide_service(svc, genuine).allowed
        assert genuine.describe() == str(genuine.address)
    # an IPv6 source in an IPv4 header cannot happen; if an edge ever said so, it is denied too
    assert decide_service(svc, Peer.parse("2001:db8::1", header=4)).reason == FORGED_REASON


# -- daemon lists: the resolved service decides as the rules' daemon lists, tested per connection -

SERVERS = [ipaddress.ip_address(a) for a in ("192.0.2.1", "192.0.2.2")]
daemon_leaf = st.one_of(
    st.just(MatchAll()),
    st.builds(
        DaemonPattern,
        st.sampled_from(["sshd", "ftpd", "ALL", "ssh*", "KNOWN"]),
        st.one_of(st.none(), st.sampled_from([AddrMatch((ipaddress.ip_network("192.0.2.1/32"),)), MatchAll()])),
    ),
)
daemon_lists: st.SearchStrategy[DaemonMatch] = st.recursive(
    daemon_leaf,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: AnyOf(tuple(xs))), st.builds(Except, inner, inner)
    ),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Action)), daemon_lists), max_size=5), st.sampled_from(SERVERS),
       st.sampled_from(list(Action)))
def test_resolved_daemon_lists_decide_per_connection(
    rules: list[tuple[Action, DaemonMatch]], server: ipaddress.IPv4Address, default: Action
) -> None:
    service = Service("sshd", tuple(Rule(a, MatchAll(), SPAN, f"r{i}", d) for i, (a, d) in enumerate(rules)), default)
    peer = Peer(address=ipaddress.ip_address("10.0.0.1"), server_address=server)
    first = next((r for r in service.rules if r.daemons is None or server_matches(r.daemons, "sshd", peer)), None)
    got = decide_resolved(resolve_service(service), peer)
    assert got.rule is first and got.action is (default if first is None else first.action)
    assert decide_service(service, peer) == got
