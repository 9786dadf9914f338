"""The compiler tested by behaviour: the interpreter's verdict on the compiled program equals
the decision engine's, for random services and packets: IPv4 and IPv6 headers from any
address (boundaries, v4-mapped), the peer the engine is asked being the packet's own
(``Packet.peer``: header version and source), so an IPv6 header with a v4-mapped source is a
forged peer, denied whatever the policy says."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.bpf import BPF_ABS, BPF_B, BPF_LD, Packet, compile_service, identify, interp, program_digest, verify
from sockgate.decide import decide_service
from sockgate.errors import UnsupportedInKernel
from sockgate.peers import Peer
from sockgate.policy.ir import (
    Action,
    AnyOf,
    DaemonPattern,
    Except,
    HostPattern,
    Limits,
    MatchAll,
    Principal,
    Service,
)
from sockgate.policy.source import Span

from support.bpfcases import (
    Net,
    rule,
    nets,
    verdict,
    run_on,
    reference,
    packets,
    services,
    _edges,
    addresses,
    banned_lists,
)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECONDARY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ properties


@PROPERTY
@given(services(), banned_lists, st.lists(addresses, max_size=8))
def test_program_decides_like_the_engine(svc: Service, banned: list[Net], extra: list[object]) -> None:
    prog = compile_service(svc, banned=banned)
    assert verify.problems(prog.insns) == []
    assert identify(prog.insns) is not None
    for a in _edges(svc, banned) + extra:  # type: ignore[operator]
        for packet in packets(a):  # type: ignore[arg-type]
            got = interp.run(prog.insns, packet)
            want = reference(svc, packet, banned)
            assert (Action.ALLOW if got else Action.DENY) is want, f"{a} ({packet.peer()}): program {got:#x}, engine {want}"


@SECONDARY
@given(services(), banned_lists, st.integers(0, 2**32 - 1))
def test_ipv6_header_with_mapped_source_is_denied(svc: Service, banned: list[Net], v: int) -> None:
    """Forged: a real IPv4 client arrives with an IPv4 header. Denied by the engine and by the
    program whatever the rules, while the same address in an IPv4 header is decided by them."""
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | v)
    forged, genuine = Packet.ipv6(mapped), Packet.from_address(mapped)
    assert forged.peer() == Peer(address=mapped, header=6) and forged.peer().forged  # type: ignore[union-attr]
    assert reference(svc, forged, banned) is Action.DENY
    assert run_on(svc, forged, banned) is Action.DENY
    assert run_on(svc, genuine, banned) is reference(svc, genuine, banned)


@SECONDARY
@given(services(), st.sampled_from([0x00, 0x50, 0x70, 0xF0]))
def test_other_versions_decide_as_a_peer_without_address(svc: Service, first: int) -> None:
    packet = Packet(bytes([first]) + bytes(39), b"\0" * 8, protocol=0)
    assert packet.peer() == Peer()
    assert run_on(svc, packet) is reference(svc, packet)


@SECONDARY
@given(services())
def test_packet_without_network_header_is_dropped(svc: Service) -> None:
    """...by any program that reads the packet; one with a single verdict for every packet
    (no load at all) gives that verdict."""
    prog = compile_service(svc)
    reads = any(i.code == BPF_LD | BPF_B | BPF_ABS for i in prog.insns)
    got = interp.run(prog.insns, Packet(b"", b""))
    assert got == 0 if reads else bool(got) == (decide_service(svc, Peer()).action is Action.ALLOW)


# ------------------------------------------------------------------------------ examples


def test_first_match_with_except_and_default() -> None:
    svc = Service("ssh", (
        rule("deny", nets("10.66.0.0/16", "2001:db8:1:2::/64")),
        rule("allow", Except(nets("10.0.0.0/8", "2001:db8::/32"), nets("10.1.2.3/32"))),
    ), Action.DENY)
    cases = {
        "10.0.0.0": "allow", "9.255.255.255": "deny", "10.65.255.255": "allow", "10.66.0.0": "deny",
        "10.66.255.255": "deny", "10.67.0.0": "allow", "10.1.2.3": "deny", "10.1.2.4": "allow",
        "10.255.255.255": "allow", "11.0.0.0": "deny", "2001:db8::": "allow", "2001:db8:1:2::": "deny",
        "2001:db8:1:3::": "allow", "2001:db9::": "deny", "::ffff:10.1.2.4": "allow", "::1": "deny",
    }
    for addr, want in cases.items():
        assert verdict(svc, addr) is Action(want), addr


def test_word_values_at_the_top_of_the_space() -> None:
    svc = Service("top", (rule("deny", nets("ffff:fffe::1/128", "ffff:ffff:ffff:fffe::8/126", "255.255.255.254/32")),
                          rule("allow", nets("ffff:fffe::/31", "255.255.255.0/24"))), Action.DENY)
    cases = {"ffff:fffe::": "allow", "ffff:fffe::1": "deny", "ffff:fffe::2": "allow", "ffff:ffff::": "allow", "ffff:ffff::1": "allow",
             "ffff:ffff:ffff:fffe::7": "allow", "ffff:ffff:ffff:fffe::8": "deny", "ffff:ffff:ffff:fffe::b": "deny",
             "ffff:ffff:ffff:fffe::c": "allow", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff": "allow",
             "ffff:fffd:ffff::": "deny", "255.255.255.254": "deny", "255.255.255.255": "allow"}
    for addr, want in cases.items():
        assert verdict(svc, addr) is Action(want), addr
    below_top = Service("t2", (rule("deny", nets("ffff:fffe::1/128")), rule("allow", nets("ffff:fffe::/32"))), None)
    for addr, want in {"ffff:fffe::2": "allow", "ffff:fffe::1": "deny", "ffff:ffff::": "deny"}.items():
        assert verdict(below_top, addr) is Action(want), addr
    to_top = Service("t3", (rule("deny", nets("ffff:fffe::1/128")), rule("allow", nets("ffff:fffe::/31"))), None)
    for addr, want in {"ffff:fffe::1": "deny", "ffff:ffff::1": "allow", "ffff:fffd::": "deny"}.items():
        assert verdict(to_top, addr) is Action(want), addr


def test_banned_sources_are_denied_before_any_rule() -> None:
    svc = Service("web", (rule("allow", MatchAll()),), Action.DENY)
    ban = [ipaddress.ip_network("198.51.100.7/32"), ipaddress.ip_network("2001:db8::/126")]
    assert verdict(svc, "198.51.100.7", ban) is Action.DENY
    assert verdict(svc, "198.51.100.8", ban) is Action.ALLOW
    assert verdict(svc, "2001:db8::3", ban) is Action.DENY
    assert verdict(svc, "2001:db8::4", ban) is Action.ALLOW


def test_digest_is_the_programs_and_covers_bans() -> None:
    svc = Service("web", (rule("allow", nets("10.0.0.0/8")),), Action.DENY)
    plain = compile_service(svc)
    banned = compile_service(svc, banned=[ipaddress.ip_address("10.0.0.1")])
    same = compile_service(svc, banned=[ipaddress.ip_network("10.0.0.1/32")])
    assert plain.digest == program_digest("web", plain.insns[plain.insns[0].k + 1 :])
    assert banned.digest != plain.digest and banned.digest == same.digest
    assert identify(banned.insns) is not None and identify(banned.insns).digest == banned.digest  # type: ignore[union-attr]


def test_merged_ranges_are_counted() -> None:
    svc = Service("x", (rule("allow", nets("10.0.0.0/9", "10.128.0.0/9", "192.0.2.0/24")),), Action.DENY)
    prog = compile_service(svc)
    assert (prog.ranges4, prog.ranges6, prog.ranges) == (5, 1, 6)  # 10/8 merged; deny, allow, deny, allow, deny


@pytest.mark.parametrize(
    "match, why",
    [
        (HostPattern(".example.com"), "needs the client's host name (a DNS lookup)"),
        (Principal("uid", 0), "needs Unix peer credentials (uid)"),
        (AnyOf((nets("10.0.0.0/8"), Principal("group", "wheel", 10))), "needs Unix peer credentials (group)"),
    ],
)
def test_rules_needing_user_space_are_refused(match: object, why: str) -> None:
    svc = Service("ssh", (rule("allow", nets("10.0.0.0/8"), 3), rule("allow", match, 4)), Action.DENY)
    with pytest.raises(UnsupportedInKernel) as e:
        compile_service(svc)
    assert str(e.value) == (
        "service 'ssh': a kernel filter sees only the source address, and this rule needs more:\n"
        f"  t.conf:4: allow {match}: {why}\n"
        "enforce this service with `sockgate proxy` instead"
    )


def test_limits_and_server_parts_are_refused_with_every_rule_named() -> None:
    svc = Service("ssh", (
        rule("allow", nets("10.0.0.0/8"), 2, limits=Limits(concurrent_per_source=3)),
        rule("deny", MatchAll(), 5, daemons=DaemonPattern("ssh", server=nets("127.0.0.1/32"))),
    ), Action.DENY)
    with pytest.raises(UnsupportedInKernel) as e:
        compile_service(svc)
    msg = str(e.value)
    assert "these 2 rules" in msg and "t.conf:2:" in msg and "has connection limits" in msg
    assert "t.conf:5:" in msg and "needs the server address (daemon@host)" in msg
    assert msg.endswith("enforce this service with `sockgate proxy` instead")


def test_service_wide_limits_are_refused_not_ignored() -> None:
    svc = Service("web", (rule("allow", nets("127.0.0.0/8"), 2),), Action.DENY,
                  span=Span("t.conf", 1, 1), limits=Limits(concurrent_total=5, ban_seconds=600))
    with pytest.raises(UnsupportedInKernel) as e:
        compile_service(svc)
    assert str(e.value) == (
        "service 'web': a kernel filter sees only the source address, and the service-wide limits"
        " need more:\n"
        "  t.conf:1: service web: limit concurrent 5, ban 10m: service-wide connection limits\n"
        "enforce this service with `sockgate proxy` instead"
    )


def test_a_rule_and_service_wide_limits_are_both_named() -> None:
    svc = Service("web", (rule("allow", HostPattern(".example.com"), 2),), Action.DENY,
                  span=Span("t.conf", 1, 1), limits=Limits(concurrent_total=5))
    with pytest.raises(UnsupportedInKernel) as e:
        compile_service(svc)
    msg = str(e.value)
    assert "and this rule and the service-wide limits need more:" in msg
    assert "t.conf:2: allow " in msg and "host name" in msg and "t.conf:1: service web: limit concurrent 5" in msg


def test_compiling_is_deterministic() -> None:
    svc = Service("x", (rule("deny", nets("10.66.0.0/16")), rule("allow", nets("10.0.0.0/8", "fd00::/8"))), None)
    assert compile_service(svc).encode() == compile_service(svc).encode()


@pytest.mark.parametrize("allow", [MatchAll(), nets("127.0.0.0/8", "198.18.0.0/15"), nets("::/0", "0.0.0.0/0")])
def test_forged_mapped_sources_are_denied_whatever_the_rules(allow: object) -> None:
    for default in (Action.ALLOW, Action.DENY, None):
        svc = Service("dns", (rule("allow", allow),), default)
        for src in ("::ffff:127.0.0.1", "::ffff:198.18.0.2", "::ffff:0.0.0.0", "::ffff:255.255.255.255"):
            assert run_on(svc, Packet.ipv6(src)) is Action.DENY, (allow, default, src)
            genuine = Packet.from_address(src)
            assert run_on(svc, genuine) is reference(svc, genuine), (allow, default, src)
        assert run_on(svc, Packet.from_address("::ffff:127.0.0.1")) is Action.ALLOW
        # the /96's neighbours are ordinary IPv6 addresses
        for src in ("::fffe:ffff:ffff", "::1:0:0:0"):
            assert run_on(svc, Packet.ipv6(src)) is reference(svc, Packet.ipv6(src))
