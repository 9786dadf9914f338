"""proxy.limits (the sans-IO limiter) and resolve.kernelpart (what the kernel may drop)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.decide import decide_service
from sockgate.peers import Peer
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    Except,
    HostClass,
    HostPattern,
    Limits,
    Match,
    MatchAll,
    Principal,
    Rate,
    Rule,
    Service,
    UserAt,
)
from sockgate.policy.needs import rule_reason
from sockgate.policy.source import Span
from sockgate.decide import decide_unnamed
from sockgate.resolve.kernelpart import kernel_service, over, surely_allowed_service, under
from sockgate.proxy.limits import FlowTable, Limiter, as_network, source_of

# -- UDP flow table ---------------------------------------------------------------------------


def test_a_source_at_its_cap_recycles_its_own_oldest_flow() -> None:
    t: FlowTable[tuple[str, int], str] = FlowTable(total=10, per_source=3)
    for port in (1, 2, 3):
        assert t.make_room("a") == []
        t.add(("a", port), "a")
    t.touch(("a", 1))
    assert t.make_room("a") == [("a", 2)]  # least recently used, not first added
    assert t.make_room("b") == []


def test_a_full_table_evicts_from_the_largest_holder_not_from_a_newcomer() -> None:
    t: FlowTable[tuple[str, int], str] = FlowTable(total=4, per_source=3)
    for key in (("a", 1), ("a", 2), ("a", 3), ("b", 1)):
        t.add(key, key[0])
    assert t.make_room("c") == [("a", 1)]
    assert t.make_room("b") == [("a", 1)]
    assert t.make_room("a") == [("a", 1)]  # nobody holds more than "a": it pays itself


def test_ties_evict_the_least_recently_active_source() -> None:
    t: FlowTable[tuple[str, int], str] = FlowTable(total=3, per_source=3)
    for key in (("a", 1), ("b", 1), ("c", 1)):
        t.add(key, key[0])
    t.touch(("a", 1))
    assert t.make_room("d") == [("b", 1)]
    t.remove(("b", 1))
    t.add(("d", 1), "d")
    assert t.make_room("e") == [("c", 1)]


def test_flow_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FlowTable(total=0, per_source=1)


_ops = st.lists(
    st.tuples(st.sampled_from(["add", "touch", "remove"]), st.integers(0, 4), st.integers(0, 5)),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(1, 8), per_source=st.integers(1, 4), ops=_ops)
def test_flow_table_against_a_naive_model(total: int, per_source: int, ops: list[tuple[str, int, int]]) -> None:
    """Adding through ``make_room`` never exceeds either cap, and every victim is what the
    naive rule (scan everything) picks."""
    t: FlowTable[tuple[int, int], int] = FlowTable(total=total, per_source=per_source)
    used: list[tuple[int, int]] = []  # keys, least recently used first
    stirred: dict[int, int] = {}  # source -> when it last added, used or lost a flow

    def naive(source: int) -> list[tuple[int, int]]:
        mine = [k for k in used if k[0] == source]
        if len(mine) >= per_source:
            return mine[: len(mine) - per_source + 1]
        if len(used) < total:
            return []
        counts = {k[0]: sum(1 for u in used if u[0] == k[0]) for k in used}
        top = max(counts.values())
        if len(mine) >= top:
            return [mine[0]]
        victim = min((s for s in counts if counts[s] == top), key=stirred.__getitem__)
        return [next(k for k in used if k[0] == victim)]

    for now, (op, source, port) in enumerate(ops):
        key = (source, port)
        if op == "add" and key not in t:
            victims = t.make_room(source)
            assert victims == naive(source)
            for v in victims:
                t.remove(v)
                used.remove(v)
                stirred[v[0]] = now
            t.add(key, source)
            used.append(key)
        elif op == "touch" and key in t:
            t.touch(key)
            used.remove(key)
            used.append(key)
        elif op == "remove" and key in t:
            t.remove(key)
            used.remove(key)
        else:
            continue
        stirred[source] = now
        assert len(t) == len(used) <= total
        assert all(t.count(s) <= per_source for s in range(5))


# -- limits -----------------------------------------------------------------------------------


def test_rate_is_a_sliding_window() -> None:
    lim: Limiter[str] = Limiter(Limits(rate_per_source=Rate(3, 3.0)))
    assert [lim.admit("a", t).ok for t in (0.0, 1.0, 2.0, 2.5)] == [True, True, True, False]
    assert not lim.admit("a", 2.9).ok
    assert lim.admit("a", 3.0).ok  # the admission at 0.0 left the window
    assert not lim.admit("a", 3.5).ok
    assert lim.admit("b", 3.5).ok  # sources are counted apart


def test_rate_refusal_without_ban_does_not_ban() -> None:
    lim: Limiter[str] = Limiter(Limits(rate_per_source=Rate(1, 10.0)))
    assert lim.admit("a", 0.0).ok
    v = lim.admit("a", 0.0)
    assert not v.ok and v.banned_until is None and "rate of 1/10s" in v.reason
    assert lim.bans == {}


def test_over_rate_bans_for_the_configured_time_and_the_ban_lifts() -> None:
    lim: Limiter[str] = Limiter(Limits(rate_per_source=Rate(2, 10.0), ban_seconds=30.0))
    assert lim.admit("a", 0.0).ok and lim.admit("a", 0.0).ok
    v = lim.admit("a", 1.0)
    assert not v.ok and v.banned_until == 31.0 and "banned for 30s" in v.reason
    assert lim.banned("a", 20.0) and lim.active_bans(20.0) == ["a"]
    assert lim.next_expiry() == 31.0
    # while banned: refused, and the ban is not extended
    v2 = lim.admit("a", 30.0)
    assert not v2.ok and v2.banned_until is None and lim.bans["a"] == 31.0
    assert lim.expire(30.9) == []
    assert lim.expire(31.0) == ["a"]
    assert not lim.banned("a", 31.0) and lim.next_expiry() is None
    assert lim.admit("a", 31.0).ok


def test_concurrency_per_source_and_release() -> None:
    lim: Limiter[str] = Limiter(Limits(concurrent_per_source=2))
    assert lim.admit("a", 0).ok and lim.admit("a", 0).ok
    v = lim.admit("a", 0)
    assert not v.ok and "per-source limit of 2" in v.reason and v.banned_until is None
    assert lim.admit("b", 0).ok
    lim.release("a")
    assert lim.admit("a", 0).ok
    lim.release("zzz")  # unknown sources are ignored
    assert lim.active_total == 3


def test_service_totals() -> None:
    lim: Limiter[str] = Limiter(Limits(concurrent_total=2, rate_total=Rate(3, 1.0)))
    assert lim.admit("a", 0).ok and lim.admit("b", 0).ok
    assert "service limit of 2" in lim.admit("c", 0).reason
    lim.release("a")
    assert lim.admit("c", 0).ok
    lim.release("b")
    v = lim.admit("d", 0)
    assert not v.ok and "service rate" in v.reason and v.banned_until is None


def test_expire_forgets_idle_sources_only() -> None:
    lim: Limiter[str] = Limiter(Limits(rate_per_source=Rate(10, 10.0)))
    lim.admit("idle", 0)
    lim.admit("busy", 0)
    lim.release("idle")
    lim.expire(100.0)
    assert list(lim.sources) == ["busy"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 5), st.booleans()), max_size=60))
def test_rate_never_exceeds_count_per_window(events: list[tuple[str, float, bool]]) -> None:
    """In any window of `seconds`, a source gets at most `count` admissions (burst + refill)."""
    rate = Rate(3, 2.0)
    lim: Limiter[str] = Limiter(Limits(rate_per_source=rate))
    t = 0.0
    admitted: dict[str, list[float]] = {}
    for src, dt, release in events:
        t += dt
        if lim.admit(src, t).ok:
            admitted.setdefault(src, []).append(t)
            if release:
                lim.release(src)
    for times in admitted.values():
        for i, start in enumerate(times):
            in_window = [x for x in times[i:] if x < start + rate.seconds - 1e-6]
            assert len(in_window) <= rate.count


# -- kernelpart -------------------------------------------------------------------------------

SPAN = Span("t.conf", 1, 1, 1)
NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "2001:db8::/32", "0.0.0.0/0")]
ADDRS = ["10.1.2.3", "10.9.9.9", "192.0.2.7", "198.51.100.1", "2001:db8::5", "2001:db9::1"]

addr_match = st.sampled_from(NETS).map(lambda n: AddrMatch((n,), str(n)))
leaf = st.one_of(
    addr_match,
    st.just(MatchAll()),
    st.sampled_from([HostPattern(".example.com"), HostClass("PARANOID"), HostClass("KNOWN")]),
    st.sampled_from([Principal("uid", 0), Principal("group", "g", 5)]),
)
matches = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: AnyOf(tuple(xs))),
        st.tuples(inner, inner).map(lambda t: Except(*t)),
        inner.map(lambda h: UserAt("root", h)),
    ),
    max_leaves=6,
)
rules = st.lists(st.tuples(st.sampled_from([Action.ALLOW, Action.DENY]), matches), max_size=5)
facts = st.tuples(
    st.sampled_from([None, "a.example.com", "evil.org", "localhost"]),
    st.booleans(),
    st.sampled_from([None, "root"]),
    st.sampled_from([None, 0, 1000]),
)


def _service(rs: list[tuple[Action, Match]], default: Action) -> Service:
    return Service("s", tuple(Rule(a, m, SPAN, "r") for a, m in rs), default)


@settings(max_examples=300, deadline=None)
@given(rules, st.sampled_from([Action.ALLOW, Action.DENY]), st.sampled_from(ADDRS), facts)
def test_kernel_drops_only_what_the_engine_surely_denies(
    rs: list[tuple[Action, Match]], default: Action, addr: str, fact: tuple[str | None, bool, str | None, int | None]
) -> None:
    svc = _service(rs, default)
    k = kernel_service(svc)
    assert all(rule_reason(r) is None for r in k.rules)
    a = ipaddress.ip_address(addr)
    if decide_service(k, Peer(address=a)).action is Action.DENY:
        name, verified, user, uid = fact
        peer = Peer(address=a, name=name, name_verified=verified, user=user, uid=uid, gid=uid)
        assert decide_service(svc, peer).action is Action.DENY


def test_address_only_services_go_to_the_kernel_unchanged() -> None:
    rs = [(Action.DENY, AddrMatch((NETS[1],))), (Action.ALLOW, AddrMatch((NETS[0],)))]
    svc = _service(rs, Action.DENY)
    assert kernel_service(svc).rules == svc.rules


def test_a_userspace_allow_opens_what_it_may_match_and_stops_the_rest() -> None:
    host = HostPattern(".example.com")
    svc = _service(
        [
            (Action.DENY, AddrMatch((NETS[1],))),
            (Action.DENY, host),  # surely matches nothing by address: dropped
            (Action.ALLOW, Except(AddrMatch((NETS[0],)), host)),  # may allow all of 10/8
            (Action.ALLOW, host),  # may allow anyone: everything after is user space
            (Action.DENY, AddrMatch((NETS[2],))),
        ],
        Action.DENY,
    )
    k = kernel_service(svc)
    assert [(r.action, r.match) for r in k.rules] == [
        (Action.DENY, AddrMatch((NETS[1],))),
        (Action.ALLOW, AddrMatch((NETS[0],))),
        (Action.ALLOW, MatchAll()),
    ]


def test_over_and_under_of_except() -> None:
    m = Except(AddrMatch((NETS[0],)), Principal("uid", 0))
    assert over(m) == AddrMatch((NETS[0],))
    from sockgate.policy.ir import MatchNone

    assert under(m) == MatchNone()
    assert under(Except(AddrMatch((NETS[0],)), AddrMatch((NETS[1],)))) == Except(AddrMatch((NETS[0],)), AddrMatch((NETS[1],)))


# -- what one source is --------------------------------------------------------------------

v6_addresses = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


def _many_hosts_per_64(a: ipaddress.IPv6Address) -> bool:
    """link-local, ::/64 (loopback, IPv4-compatible), NAT64's 64:ff9b::/96"""
    return a.is_link_local or int(a) >> 64 == 0 or a in ipaddress.IPv6Network("64:ff9b::/96")


v6_special = st.one_of(
    st.integers(0, 2**64 - 1).map(lambda v: ipaddress.IPv6Address((0xFE80 << 112) | v)),
    st.integers(0, 2**64 - 1).map(ipaddress.IPv6Address),
    st.integers(0, 2**32 - 1).map(lambda v: ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | v)),
)


@given(st.one_of(v6_addresses, v6_special), st.one_of(v6_addresses, v6_special))
def test_ipv6_addresses_are_one_source_exactly_when_they_share_a_64(a: ipaddress.IPv6Address, b: ipaddress.IPv6Address) -> None:
    """... a host's /64, except where a /64 holds many hosts: there each address is its own."""
    if a.ipv4_mapped is None and b.ipv4_mapped is None:
        if _many_hosts_per_64(a) or _many_hosts_per_64(b):
            assert (source_of(a) == source_of(b)) == (a == b)
        else:
            assert (source_of(a) == source_of(b)) == (int(a) >> 64 == int(b) >> 64)


def test_one_link_local_neighbours_ban_is_not_every_neighbours() -> None:
    one, other = ipaddress.IPv6Address("fe80::1"), ipaddress.IPv6Address("fe80::dead:beef")
    assert source_of(one) != source_of(other)
    assert as_network(source_of(one)) == ipaddress.IPv6Network("fe80::1/128")
    assert source_of(ipaddress.IPv6Address("::1")) != source_of(ipaddress.IPv6Address("::a00:1"))


@given(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address))
def test_an_ipv4_source_is_its_address_however_written(a: ipaddress.IPv4Address) -> None:
    assert source_of(a) == a == source_of(ipaddress.IPv6Address(f"::ffff:{a}"))


@given(v6_addresses, st.integers(0, 2**64 - 1))
def test_a_banned_ipv6_source_is_dropped_in_the_kernel_across_its_64(a: ipaddress.IPv6Address, iid: int) -> None:
    """The ban list the proxy compiles (``as_network(source_of(...))``) drops every address of
    the banned host's /64, and keeps the rest of the policy."""
    from sockgate.bpf import Packet, compile_service, interp

    if a.ipv4_mapped is not None or _many_hosts_per_64(a):
        return
    svc = Service("s", (Rule(Action.ALLOW, MatchAll(), Span("t", 1, 1), "allow all"),), Action.DENY)
    net = as_network(source_of(a))
    assert net is not None and net.prefixlen == 64
    prog = compile_service(svc, banned=[net]).insns
    sibling = ipaddress.IPv6Address((int(a) >> 64 << 64) | iid)
    neighbour = ipaddress.IPv6Address(int(a) ^ (1 << 64))
    assert not interp.run(prog, Packet.from_address(sibling))
    assert neighbour.ipv4_mapped is not None or interp.run(prog, Packet.from_address(neighbour))


def test_a_unix_peer_is_not_a_network() -> None:
    assert as_network(("uid", 1000)) is None


# -- a peer whose host-name lookup was cut short -------------------------------------------

name_leaf = st.one_of(
    addr_match,
    st.just(MatchAll()),
    st.sampled_from([HostPattern(".evil.com"), HostPattern("attacker.evil.com"), HostPattern(".example.com"),
                     HostClass("KNOWN"), HostClass("UNKNOWN"), HostClass("PARANOID"), HostClass("LOCAL")]),
)
name_matches = st.recursive(
    name_leaf,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: AnyOf(tuple(xs))),
        st.tuples(inner, inner).map(lambda t: Except(*t)),
    ),
    max_leaves=6,
)
name_rules = st.lists(st.tuples(st.sampled_from([Action.ALLOW, Action.DENY]), name_matches), max_size=5)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
names = st.one_of(
    st.none(),  # unknown
    st.sampled_from(["attacker.evil.com", "evil.com", "a.example.com", "localhost", "10.1.2.3"]),
    st.lists(label, min_size=1, max_size=4).map(".".join),
)


@settings(max_examples=400, deadline=None)
@given(name_rules, st.sampled_from([Action.ALLOW, Action.DENY]), st.sampled_from(ADDRS),
       st.lists(st.tuples(names, st.booleans()), min_size=1, max_size=8))
def test_surely_allowed_means_allowed_under_every_name(
    rs: list[tuple[Action, Match]], default: Action, addr: str, named: list[tuple[str | None, bool]]
) -> None:
    """What the proxy and ``check`` let in after a cut-short lookup, libwrap lets in whatever
    name its resolver would have returned (unknown and paranoid included)."""
    svc = _service(rs, default)
    a = ipaddress.ip_address(addr)
    d = decide_unnamed(svc, surely_allowed_service(svc), Peer(address=a), "cut short")
    if d.allowed:
        for name, verified in named:
            assert decide_service(svc, Peer(address=a, name=name, name_verified=verified)).allowed


def test_a_name_deny_refuses_a_client_whose_lookup_was_cut_short() -> None:
    """The reported hole: ``deny .evil.com`` then allow-by-default; a peer whose PTR came too
    late was let in as nameless. Now it is refused; an address-only deny still decides."""
    a = ipaddress.ip_address("10.1.2.3")
    svc = _service([(Action.DENY, HostPattern(".evil.com"))], Action.ALLOW)
    assert decide_service(svc, Peer(address=a)).allowed  # what a nameless peer got before
    d = decide_unnamed(svc, surely_allowed_service(svc), Peer(address=a), "timed out")
    assert not d.allowed and d.reason == "timed out"
    trusted = _service([(Action.ALLOW, AddrMatch((NETS[0],), "10.0.0.0/8")), (Action.DENY, HostPattern(".evil.com"))], Action.ALLOW)
    assert decide_unnamed(trusted, surely_allowed_service(trusted), Peer(address=a), "x").allowed
