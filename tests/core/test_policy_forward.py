"""Exact host names replaced by address sets (``policy/forward.py``): which names count, the
sets by polarity, failures, and the property that the substituted policy never admits an
address the engine would refuse under the same DNS answers (a fake resolver)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.decide import decide_service
from sockgate.peers import Peer
from sockgate.policy.forward import Lookup, Reverse, admitted, exact_name, forward_names, matched, rule_names, substitute
from sockgate.policy.hostsaccess import parse_hosts_access
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    Except,
    HostClass,
    HostPattern,
    IPAddress,
    Match,
    MatchAll,
    Policy,
    Rule,
    Service,
    UserAt,
)
from sockgate.policy.parser import parse_policy
from sockgate.policy.source import Span

A = ipaddress.ip_address
N = ipaddress.ip_network
SPAN = Span("p", 1, 1, 1)


def lookup(name: str, *pairs: tuple[str, tuple[str, ...] | None], canonical: str | None = None) -> Lookup:
    return Lookup(name, canonical or name, tuple(Reverse(A(a), names) for a, names in pairs))


def test_exact_names_are_plain_dns_names_only() -> None:
    yes = [HostPattern("web.example.com"), HostPattern("Web.Example.COM", hosts_access=True), HostPattern("gw", True)]
    no = [HostPattern(".example.com"), HostPattern("web*.example.com", True), HostPattern("web.", True),
          HostPattern("ALL", True), HostPattern("known", True), HostPattern("unknown", True),
          HostPattern("Paranoid", True), HostPattern("10.0.0.1", True), HostPattern("[::1]", True),
          HostPattern("a" * 64 + ".example", True), HostPattern("x/y", True)]
    assert [exact_name(p) for p in yes] == ["web.example.com", "web.example.com", "gw"]
    assert [exact_name(p) for p in no] == [None] * len(no)


def test_forward_names_by_polarity_through_except() -> None:
    p = parse_policy("service s tcp/1 {\n allow host a.test\n deny host b.test\n"
                     " allow all except host c.test\n deny host .suffix.test\n default deny\n}\n")
    assert forward_names(p) == {"a.test": {Action.ALLOW}, "b.test": {Action.DENY}, "c.test": {Action.DENY}}
    h = parse_hosts_access("a", "d", read={"a": "sshd: web.test EXCEPT Bad.Test\n", "d": "ALL: web.test\n"}.__getitem__)
    assert forward_names(h) == {"web.test": {Action.ALLOW, Action.DENY}, "bad.test": {Action.DENY}}
    assert rule_names(h.service("sshd").rules) == forward_names(h)
    assert rule_names(parse_policy("service s tcp/1 {\n allow 10.0.0.1\n}\n").service("s").rules) == {}


def test_admitted_needs_every_ptr_to_name_it_and_no_cname() -> None:
    lk = lookup("web.test", ("10.0.0.1", ("web.test.",)), ("10.0.0.2", ("web.test", "other.test")),
                ("10.0.0.3", ()), ("10.0.0.4", None), ("::ffff:10.0.0.5", ("WEB.test",)), ("2001:db8::1", ("web.test",)))
    assert admitted(lk) == (A("10.0.0.1"), A("10.0.0.5"), A("2001:db8::1"))
    assert matched(lk) == (A("10.0.0.1"), A("10.0.0.2"), A("10.0.0.4"), A("10.0.0.5"), A("2001:db8::1"))
    aliased = lookup("web.test", ("10.0.0.1", ("web.test",)), canonical="real.test")
    assert admitted(aliased) == () and matched(aliased) == (A("10.0.0.1"),)


def test_substitute_keeps_spans_and_labels_and_fails_closed_by_polarity() -> None:
    p = parse_policy("service s tcp/1 {\n allow host a.test\n deny host b.test\n deny host c.test\n"
                     " allow host .x.test\n default allow\n}\n")
    out = substitute(p, {"a.test": lookup("a.test", ("10.0.0.1", ("a.test",))),
                         "b.test": lookup("b.test", ("10.0.0.2", ("b.test",)))})
    rules = out.services[0].rules
    assert rules[0].match == AddrMatch((N("10.0.0.1/32"),), "a.test")
    assert rules[1].match == AddrMatch((N("10.0.0.2/32"),), "b.test")
    assert rules[2].match == HostPattern("c.test")  # a deny without answers stays a name (user space)
    assert rules[3].match == HostPattern(".x.test")
    assert [r.span for r in rules] == [r.span for r in p.services[0].rules]
    assert out.services[0].policy_digest == out.digest() != p.digest()
    failed = substitute(p, {})
    assert failed.services[0].rules[0].match == AddrMatch((), "a.test")  # an allow without answers: nobody


def test_the_last_answer_of_a_name_without_one_in_force_refuses_and_never_admits() -> None:
    """``last``: a deny by a name whose lookups now fail keeps refusing its last addresses (the
    service stays compilable); an allow by it still admits nobody; a name answered now uses
    that answer, not the last one."""
    p = parse_policy("service s tcp/1 {\n allow host a.test\n deny host b.test\n"
                     " allow 10.0.0.0/8 except host c.test\n deny host d.test\n}\n")
    last = {n: lookup(n, ("10.0.0.9", (n,))) for n in ("a.test", "b.test", "c.test", "d.test")}
    now = {"d.test": lookup("d.test", ("10.0.0.4", ("d.test",)))}
    rules = substitute(p, now, last).services[0].rules
    assert rules[0].match == AddrMatch((), "a.test")
    assert rules[1].match == AddrMatch((N("10.0.0.9/32"),), "b.test")
    assert rules[2].match == Except(AddrMatch((N("10.0.0.0/8"),), "10.0.0.0/8"), AddrMatch((N("10.0.0.9/32"),), "c.test"))
    assert rules[3].match == AddrMatch((N("10.0.0.4/32"),), "d.test")


def test_substitute_a_hosts_access_policy_and_its_except() -> None:
    h = parse_hosts_access("a", "d", read={"a": "sshd: ALL EXCEPT bad.test\n", "d": ""}.__getitem__)
    out = substitute(h, {"bad.test": lookup("bad.test", ("10.0.0.9", None))})
    assert out.rules[0].match == Except(MatchAll(), AddrMatch((N("10.0.0.9/32"),), "bad.test"))


# ---------------------------------------------------------------------------------------------
# The property: substituted-allows ⇒ engine-allows under every name libwrap could see


NAMES = ("a.test", "b.test", "c.test")
ADDRS = (A("10.0.0.1"), A("10.0.0.2"), A("10.0.0.3"), A("2001:db8::1"), A("2001:db8::2"))


@dataclass(frozen=True)
class World:
    forward: dict[str, tuple[IPAddress, ...]]
    canonical: dict[str, str]
    reverse: dict[IPAddress, tuple[str, ...] | None]  # None: the reverse lookup fails
    failed: frozenset[str]  # forward lookups that fail

    def lookups(self) -> dict[str, Lookup]:
        return {n: Lookup(n, self.canonical[n], tuple(Reverse(a, self.reverse[a]) for a in self.forward[n]))
                for n in NAMES if n not in self.failed}

    def peers(self, a: IPAddress) -> list[Peer]:
        """Every peer libwrap could make of ``a``: each PTR name, verified or paranoid; a
        failing reverse lookup may yet answer any name."""
        ptrs = self.reverse[a]
        names = NAMES if ptrs is None else ptrs
        out = [Peer(address=a)] if not ptrs else []
        for h in names:
            ok = a in self.forward[h] and self.canonical[h] == h
            out.append(Peer(address=a, name=h, name_verified=ok))
        return out


worlds = st.builds(
    World,
    forward=st.fixed_dictionaries({n: st.lists(st.sampled_from(ADDRS), max_size=3, unique=True).map(tuple) for n in NAMES}),
    canonical=st.fixed_dictionaries({n: st.sampled_from((n, n, n, "alias.test")) for n in NAMES}),
    reverse=st.fixed_dictionaries({a: st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=2, unique=True).map(tuple))
                                   for a in ADDRS}),
    failed=st.frozensets(st.sampled_from(NAMES), max_size=1),
)
leaf = st.one_of(
    st.sampled_from(NAMES).map(HostPattern),
    st.sampled_from(NAMES).map(lambda n: HostPattern(n, hosts_access=True)),
    st.sampled_from([AddrMatch((N("10.0.0.0/30"),)), AddrMatch((N("2001:db8::/126"),)), MatchAll()]),
)
matches: st.SearchStrategy[Match] = st.recursive(
    leaf,
    lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=3).map(lambda i: AnyOf(tuple(i))),
                            st.tuples(inner, inner).map(lambda t: Except(*t))),
    max_leaves=5,
)
services = st.builds(
    lambda rules, default: Service("s", tuple(Rule(a, m, SPAN, "r") for a, m in rules), default),
    st.lists(st.tuples(st.sampled_from(Action), matches), min_size=1, max_size=4),
    st.sampled_from(Action),
)


def _has_names(m: Match) -> bool:
    if isinstance(m, (HostPattern, HostClass, UserAt)):
        return True
    if isinstance(m, AnyOf):
        return any(_has_names(i) for i in m.items)
    if isinstance(m, Except):
        return _has_names(m.include) or _has_names(m.exclude)
    return False


@settings(max_examples=400, deadline=None)
@given(worlds, services)
def test_the_substituted_policy_never_admits_what_the_engine_refuses(world: World, service: Service) -> None:
    sub = substitute(Policy(services=(service,)), world.lookups()).services[0]
    if any(_has_names(r.match) for r in sub.rules):
        return  # a refusing name without answers: the kernel refuses this service (user space)
    for a in ADDRS:
        if decide_service(sub, Peer(address=a)).allowed:
            for peer in world.peers(a):
                assert decide_service(service, peer).allowed, (a, peer)


@settings(max_examples=300, deadline=None)
@given(worlds, services)
def test_with_one_ptr_each_and_no_failures_it_decides_as_the_engine(world: World, service: Service) -> None:
    world = World(world.forward, {n: n for n in NAMES},
                  {a: ((r or ("a.test",))[0],) for a, r in world.reverse.items()}, frozenset())
    sub = substitute(Policy(services=(service,)), world.lookups()).services[0]
    for a in ADDRS:
        (peer,) = world.peers(a)
        assert decide_service(sub, Peer(address=a)).action is decide_service(service, peer).action
