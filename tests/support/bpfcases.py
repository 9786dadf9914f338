"""Policies, packets and hypothesis strategies shared by the compilers' tests (classic BPF in
tests/core/test_bpf_compile.py, eBPF in tests/core/test_ebpf_prefixes.py): random services
over address rules, and the interval boundaries where verdicts change."""

from __future__ import annotations

import ipaddress
from typing import Sequence

from hypothesis import strategies as st

from sockgate.bpf import Packet, compile_service, interp
from sockgate.decide import decide_service
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    DaemonPattern,
    Except,
    MatchAll,
    MatchNone,
    Rule,
    Service,
)
from sockgate.policy.source import Span

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def rule(action: str, match: object, line: int = 1, **kw: object) -> Rule:
    return Rule(Action(action), match, Span("t.conf", line, 1), f"{action} {match}", **kw)  # type: ignore[arg-type]


def nets(*texts: str) -> AddrMatch:
    return AddrMatch(tuple(ipaddress.ip_network(t) for t in texts))


def verdict(svc: Service, addr: str, banned: Sequence[Net] = ()) -> Action:
    a = ipaddress.ip_address(addr)
    return run_on(svc, Packet.from_address(a), banned)


def run_on(svc: Service, packet: Packet, banned: Sequence[Net] = ()) -> Action:
    prog = compile_service(svc, banned=banned)
    return Action.ALLOW if interp.run(prog.insns, packet) else Action.DENY


def reference(svc: Service, packet: Packet, banned: Sequence[Net] = ()) -> Action:
    """The engine's verdict on the packet's peer, with ``banned`` denied first."""
    peer = packet.peer()
    assert peer is not None
    a = peer.address
    if a is not None and not peer.forged and any(a.version == b.version and a in b for b in banned):
        return Action.DENY
    return decide_service(svc, peer).action


def packets(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Packet]:
    """A genuine client's packet from ``a``, and for an IPv6 address the same source in an
    IPv6 header (for a v4-mapped one, a forged packet)."""
    return [Packet.from_address(a)] + ([Packet.ipv6(a)] if a.version == 6 else [])


# ------------------------------------------------------------------------------ strategies

# Few bases so that networks overlap, nest and touch, and boundaries sit near 2**31.
V4_BASES = [0x0A000000, 0x0A420000, 0x7F000000, 0x80000000, 0xC0A80100, 0xFFFFFF00, 0]
V6_BASES = [0x20010DB8 << 96, (0x20010DB8 << 96) | (1 << 80), 0xFD5B5347 << 96, 0xFFFF << 32, 1, 0,
            0xFFFFFFFE << 96, (1 << 128) - (1 << 64)]


@st.composite
def v4_nets(draw: st.DrawFn) -> ipaddress.IPv4Network:
    base = draw(st.sampled_from(V4_BASES)) + draw(st.integers(0, 255)) * draw(st.sampled_from([1, 256, 65536]))
    plen = draw(st.integers(0, 32))
    return ipaddress.IPv4Network((base & 0xFFFFFFFF, plen), strict=False)


@st.composite
def v6_nets(draw: st.DrawFn) -> ipaddress.IPv6Network:
    base = draw(st.sampled_from(V6_BASES))
    base += draw(st.integers(0, 255)) << draw(st.sampled_from([0, 16, 32, 64, 80, 96]))
    plen = draw(st.sampled_from([0, 16, 32, 48, 64, 80, 96, 100, 112, 120, 127, 128]))
    return ipaddress.IPv6Network((base % (1 << 128), plen), strict=False)


any_net = st.one_of(v4_nets(), v6_nets())
addr_match = st.lists(any_net, min_size=0, max_size=4).map(lambda ns: AddrMatch(tuple(ns)))
leaf_match = st.one_of(addr_match, addr_match, st.just(MatchAll()), st.just(MatchNone()))
matches = st.recursive(
    leaf_match,
    lambda inner: st.one_of(
        st.builds(Except, inner, inner),
        st.lists(inner, min_size=1, max_size=3).map(lambda ms: AnyOf(tuple(ms))),
    ),
    max_leaves=6,
)
daemons = st.sampled_from([None, None, None, MatchAll(), DaemonPattern("svc"), DaemonPattern("other")])


@st.composite
def services(draw: st.DrawFn) -> Service:
    rules = []
    for line in range(draw(st.integers(0, 6))):
        act = draw(st.sampled_from(["allow", "deny"]))
        rules.append(rule(act, draw(matches), line + 1, daemons=draw(daemons)))
    default = draw(st.sampled_from([None, Action.ALLOW, Action.DENY]))
    return Service("svc", tuple(rules), default)


def _edges(svc: Service, banned: Sequence[Net]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every network's first and last address and their neighbours (interval boundaries)."""
    found: list[Net] = list(banned)

    def walk(m: object) -> None:
        if isinstance(m, AddrMatch):
            found.extend(m.nets)
        elif isinstance(m, Except):
            walk(m.include), walk(m.exclude)
        elif isinstance(m, AnyOf):
            for i in m.items:
                walk(i)

    for r in svc.rules:
        walk(r.match)
    out = []
    for n in found:
        space = 1 << n.max_prefixlen
        lo, hi = int(n.network_address), int(n.broadcast_address)
        for v in (lo - 1, lo, hi, hi + 1):
            if 0 <= v < space:
                out.append(ipaddress.ip_address(v) if n.version == 4 else ipaddress.IPv6Address(v))
    return out


addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    st.integers(0, 2**32 - 1).map(lambda v: ipaddress.IPv6Address((0xFFFF << 32) | v)),
    any_net.map(lambda n: n.network_address),
)
banned_lists = st.lists(st.one_of(v4_nets(), v6_nets()), max_size=3)
