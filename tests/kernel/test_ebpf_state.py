"""The eBPF program with its service state, in the real kernel: bans looked up before the
rules, refused new connections counted per source, refusal events rate-limited per source,
and ``limit rate`` (with ``ban``) enforced by token buckets.

Most cases run the loaded program with BPF_PROG_TEST_RUN on crafted Ethernet frames (no
namespaces, exact control of TCP flags and headers); the last ones attach it to real
loopback sockets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from typing import Iterator

import pytest

from sockgate.decide import decide_service
from sockgate.ebpf import Options, compile_service
from sockgate.ebpf.layout import BAN_VALUE, STAT_VALUE, Ban, Origin, Reason, Stat
from sockgate.ebpf.maps import DEFAULT_RULE, LpmKey
from sockgate.errors import UnsupportedInKernel
from sockgate.linux import bpfsys
from sockgate.peers import Peer
from sockgate.policy.ir import Action, Limits, Rate, Service
from sockgate.proxy.admission import Admission, Admitted, Refused
from sockgate.proxy.limits import source_of
from support.ebpfstate import Loaded, Ring, frame, now_ns
from support.verdicts import boundary_sources, local_sockets, nets, random_service, rule, service, tcp_reach, udp_reach

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF socket filters needs root (CAP_BPF)"),
    pytest.mark.root,
]

SYN, ACK, SYNACK, RST = 0x02, 0x10, 0x12, 0x04
HOUR = 3600 * 10**9


@contextlib.contextmanager
def loaded(svc: Service, **options: object) -> Iterator[Loaded]:
    lo = Loaded(compile_service(svc, options=Options(**options)))  # type: ignore[arg-type]
    try:
        yield lo
    finally:
        lo.close()


@contextlib.contextmanager
def ring(lo: Loaded) -> Iterator[Ring]:
    spec = next(s for s in lo.prog.service_maps if s.name == "sg_events")
    r = Ring(lo.maps["sg_events"], spec.max_entries)
    try:
        yield r
    finally:
        r.close()


def with_limits(svc: Service, limits: Limits, index: int | None = None) -> Service:
    if index is None:
        return replace(svc, limits=limits)
    rules = list(svc.rules)
    rules[index] = replace(rules[index], limits=limits)
    return replace(svc, rules=tuple(rules))


ALLOW_ALL = service("open", [], Action.ALLOW)
LAB = service("lab", [(Action.DENY, nets("10.1.0.0/16", "2001:db8:1::/48")), (Action.ALLOW, nets("10.0.0.0/8", "2001:db8::/32"))],
              Action.DENY)


# ----------------------------------------------------------------------------------- bans


def test_a_ban_denies_until_it_expires_and_an_expired_one_is_ignored() -> None:
    with loaded(ALLOW_ALL) as lo:
        assert lo.run(frame("10.0.0.5")) and lo.run(frame("2001:db8::5"))
        lo.ban("10.0.0.0/24", Ban(0, Origin.MANUAL).pack())  # never expires
        lo.ban("2001:db8::/64", Ban(now_ns() + HOUR, Origin.FAIL2BAN).pack())
        assert not lo.run(frame("10.0.0.5")) and not lo.run(frame("10.0.0.5", tcp_flags=ACK))
        assert not lo.run(frame("2001:db8::5")) and lo.run(frame("2001:db8:0:1::5"))
        assert lo.run(frame("10.0.1.5"))
        lo.ban("10.0.0.0/24", Ban(now_ns() - 1, Origin.MANUAL).pack())  # expired: user space sweeps it
        assert lo.run(frame("10.0.0.5"))
        assert lo.count("2001:db8::5") is not None and lo.count("2001:db8::5").refused == 1  # type: ignore[union-attr]


def test_an_expired_nested_ban_does_not_hide_the_programs_source_ban() -> None:
    """The program bans a source's /64 on its own, after user space last normalised the trie:
    an older, shorter ``/128`` ban inside it (fail2ban's, expired now) is the longest match,
    and must not let that address through while its /64 is banned (the sweep comes later)."""
    with loaded(ALLOW_ALL) as lo:
        lo.ban("2001:db8:1::5/128", Ban(now_ns() - 1, Origin.FAIL2BAN).pack())
        lo.ban("2001:db8:1::/64", Ban(now_ns() + HOUR, Origin.LIMIT).pack())
        lo.ban("2001:db8:2::5/128", Ban(now_ns() - 1, Origin.FAIL2BAN).pack())  # no cover: passed over
        assert not lo.run(frame("2001:db8:1::5")) and not lo.run(frame("2001:db8:1::6"))
        assert lo.run(frame("2001:db8:2::5")) and lo.run(frame("2001:db8:2::6"))
        lo.ban("2001:db8:1::/64", Ban(now_ns() - 1, Origin.LIMIT).pack())  # both expired: allowed again
        assert lo.run(frame("2001:db8:1::5"))


def test_a_ban_comes_before_an_allow_rule() -> None:
    with loaded(LAB) as lo, ring(lo) as r:
        assert lo.run(frame("10.2.0.1"))
        lo.ban("10.2.0.1/32", Ban(0, Origin.CROWDSEC).pack())
        assert not lo.run(frame("10.2.0.1"))
        [ev] = r.events()
        assert (ev.reason, ev.rule, str(ev.address)) == (Reason.BAN, -1, "10.2.0.1")


# ------------------------------------------------------------------------------ counting


def test_refused_syns_are_counted_and_other_tcp_segments_only_dropped() -> None:
    with loaded(LAB) as lo:
        before = now_ns()
        for flags in [SYN] * 5 + [ACK] * 3 + [SYNACK] * 2 + [RST]:
            assert not lo.run(frame("10.1.2.3", tcp_flags=flags))
        for _ in range(4):
            assert not lo.run(frame("10.1.2.3", tcp_flags=SYN, ihl=7))  # IPv4 options: the IHL is read
        c = lo.count("10.1.2.3")
        assert c is not None and c.refused == 9 and before <= c.first_ns <= c.last_ns <= now_ns()
        for _ in range(3):
            assert not lo.run(frame("2001:db8:1::7"))
        assert not lo.run(frame("2001:db8:1::7", tcp_flags=ACK))
        assert not lo.run(frame("2001:db8:1::7", next_header=0))  # hop-by-hop first: not taken for a SYN
        assert lo.count("2001:db8:1::7").refused == 3  # type: ignore[union-attr]
        assert lo.run(frame("10.2.3.4")) and lo.count("10.2.3.4") is None  # allowed: not counted


def test_every_refused_udp_datagram_is_counted_and_first_seen_stays() -> None:
    with loaded(LAB, protocol="udp") as lo:
        assert not lo.run(frame("192.0.2.9", tcp_flags=None))
        first = lo.count("192.0.2.9")
        for _ in range(6):
            assert not lo.run(frame("192.0.2.9", tcp_flags=None))
        c = lo.count("192.0.2.9")
        assert first is not None and c is not None
        assert c.refused == 7 and c.first_ns == first.first_ns and c.last_ns >= first.last_ns


# -------------------------------------------------------------------------------- events


def test_events_are_rate_limited_per_source() -> None:
    """(A deny rule of a deny-by-default service is not stored in the trie: its refusals
    name the default, DEFAULT_RULE.)"""
    with loaded(LAB, event_interval_ns=HOUR) as lo, ring(lo) as r:
        for _ in range(50):
            for src in ("10.1.0.1", "192.0.2.1", "2001:db8:1::1"):
                lo.run(frame(src))
        events = r.events()
        assert sorted((str(e.address), e.family, e.reason, e.rule) for e in events) == [
            ("10.1.0.1", 4, Reason.RULE, DEFAULT_RULE), ("192.0.2.1", 4, Reason.RULE, DEFAULT_RULE),
            ("2001:db8:1::1", 6, Reason.RULE, DEFAULT_RULE)]
        assert lo.count("10.1.0.1").refused == 50 and lo.count("10.1.0.1").event_ns == events[0].ts_ns  # type: ignore[union-attr]


def test_with_no_interval_every_refusal_is_an_event() -> None:
    svc = service("open", [(Action.DENY, nets("10.1.0.0/16"))], Action.ALLOW)  # a stored deny rule
    with loaded(svc, event_interval_ns=0) as lo, ring(lo) as r:
        for _ in range(5):
            lo.run(frame("10.1.0.1"))
        lo.run(frame("::ffff:10.2.0.1"))  # forged
        events = r.events()
        assert [(e.reason, e.rule) for e in events] == [(Reason.RULE, 0)] * 5 + [(Reason.FORGED, -2)]
        assert events[-1].rule == -2 and events[-1].family == 6
        assert [e.ts_ns for e in events] == sorted(e.ts_ns for e in events)


def stat(lo: Loaded, which: Stat) -> int:
    raw = bpfsys.map_lookup(lo.maps["sg_stats"], int(which).to_bytes(4, sys.byteorder), STAT_VALUE.size)
    assert raw is not None
    return int(STAT_VALUE.unpack(raw)[0])


def test_events_the_full_ring_drops_are_counted() -> None:
    """A full ring drops the event, never the verdict — and the loss shows in sg_stats."""
    svc = service("open", [(Action.DENY, nets("10.1.0.0/16"))], Action.ALLOW)
    with loaded(svc, event_interval_ns=0, ring_bytes=4096) as lo, ring(lo) as r:
        sent = 400  # 4 KiB holds ~100 events of 32 bytes and their 8-byte headers
        assert not any(lo.run(frame(f"10.1.{i // 250}.{i % 250 + 1}")) for i in range(sent))
        kept = len(r.events())
        assert 0 < kept < sent and stat(lo, Stat.EVENTS_LOST) == sent - kept
        assert stat(lo, Stat.BANS_FAILED) == 0


def test_a_ban_the_full_trie_refuses_is_counted() -> None:
    svc = with_limits(ALLOW_ALL, Limits(rate_per_source=Rate(1, 3600), ban_seconds=600))
    with loaded(svc, bans=2, tcp_bans=True) as lo:
        for src in ("10.2.0.1", "10.2.0.2", "10.2.0.3"):
            assert [lo.run(frame(src)) for _ in range(2)] == [True, False]
        assert stat(lo, Stat.BANS_FAILED) == 1  # the third ban found the trie full: still rate-refused
        assert not lo.run(frame("10.2.0.3"))


# --------------------------------------------------------------------------- rate limits


@pytest.mark.parametrize("protocol", ["tcp", "any"])
def test_forged_syns_over_a_rate_ban_nobody_unless_opted_in(protocol: str) -> None:
    """Two SYNs "from" an admin, no handshake, must not get the admin banned (F4): over the
    rate they are refused, but the ban follows only a provably UDP datagram, or with
    ``tcp_bans``."""
    svc = with_limits(ALLOW_ALL, Limits(rate_per_source=Rate(1, 3600), ban_seconds=600))
    admin = LpmKey.host(ipaddress.IPv4Address("10.9.0.1")).pack()
    with loaded(svc, protocol=protocol) as lo:
        assert [lo.run(frame("10.9.0.1")) for _ in range(2)] == [True, False]
        assert bpfsys.map_lookup(lo.maps["sg_bans4"], admin, BAN_VALUE.size) is None
        assert lo.run(frame("10.9.0.1", tcp_flags=ACK))  # not banned: its flows go on
        if protocol == "any":  # a datagram over its rate still bans
            assert [lo.run(frame("10.9.0.2", tcp_flags=None)) for _ in range(2)] == [True, False]
            raw = bpfsys.map_lookup(lo.maps["sg_bans4"], LpmKey.host(ipaddress.IPv4Address("10.9.0.2")).pack(), BAN_VALUE.size)
            assert raw is not None and Ban.unpack(raw).origin is Origin.LIMIT
            ext = frame("2001:db8:9::1", next_header=0)  # an extension header: not provably UDP, no ban
            assert [lo.run(ext) for _ in range(2)] == [True, False]
            assert bpfsys.map_lookup(lo.maps["sg_bans6"], LpmKey(6, 64, int(ipaddress.IPv6Address("2001:db8:9::"))).pack(),
                                     BAN_VALUE.size) is None
    with loaded(svc, protocol=protocol, tcp_bans=True) as lo:
        assert [lo.run(frame("10.9.0.1")) for _ in range(2)] == [True, False]
        assert bpfsys.map_lookup(lo.maps["sg_bans4"], admin, BAN_VALUE.size) is not None


def test_a_per_source_rate_then_a_ban() -> None:
    svc = with_limits(LAB, Limits(rate_per_source=Rate(3, 60), ban_seconds=600), index=1)
    with loaded(svc, tcp_bans=True) as lo, ring(lo) as r:
        got = [lo.run(frame("10.2.0.1")) for _ in range(3)]
        assert lo.run(frame("10.2.0.1", tcp_flags=ACK))  # not a new connection: not limited
        assert lo.run(frame("10.3.0.1"))  # another source, its own bucket
        before = now_ns()
        got.append(lo.run(frame("10.2.0.1")))
        assert got == [True, True, True, False]
        raw = bpfsys.map_lookup(lo.maps["sg_bans4"], LpmKey.host(ipaddress.IPv4Address("10.2.0.1")).pack(), BAN_VALUE.size)
        assert raw is not None
        ban = Ban.unpack(raw)
        assert ban.origin is Origin.LIMIT and before + 600 * 10**9 <= ban.expires_ns <= now_ns() + 600 * 10**9
        assert not lo.run(frame("10.2.0.1", tcp_flags=ACK))  # banned: even its open flows
        assert [(e.reason, e.rule) for e in r.events()] == [(Reason.RATE, 1)]
        assert lo.count("10.2.0.1").refused == 1  # type: ignore[union-attr]
        assert lo.run(frame("10.0.0.1"))  # a source in the same /24: IPv4 sources are addresses


def test_an_ipv6_source_is_its_slash_64_except_where_that_is_many_hosts() -> None:
    svc = with_limits(ALLOW_ALL, Limits(rate_per_source=Rate(1, 60), ban_seconds=60))
    with loaded(svc, tcp_bans=True) as lo:
        assert lo.run(frame("2001:db8:5::1")) and not lo.run(frame("2001:db8:5::2"))
        assert bpfsys.map_lookup(lo.maps["sg_bans6"], LpmKey(6, 64, int(ipaddress.IPv6Address("2001:db8:5::"))).pack(),
                                 BAN_VALUE.size) is not None
        assert not lo.run(frame("2001:db8:5::3", tcp_flags=ACK)) and lo.run(frame("2001:db8:6::1"))
        for a, b in (("fe80::1", "fe80::2"), ("::5", "::6"), ("64:ff9b::c000:201", "64:ff9b::c000:202")):
            assert lo.run(frame(a)) and lo.run(frame(b)), (a, b)  # each address its own source
            assert not lo.run(frame(a))


def test_a_service_wide_rate_counts_every_source() -> None:
    svc = with_limits(ALLOW_ALL, Limits(rate_total=Rate(4, 60), ban_seconds=60))
    with loaded(svc, protocol="udp") as lo:
        got = [lo.run(frame(f"10.0.0.{i}", tcp_flags=None)) for i in range(1, 7)]
        assert got == [True] * 4 + [False] * 2
        assert lo.count("10.0.0.5").refused == 1  # type: ignore[union-attr]
        assert bpfsys.map_lookup(lo.maps["sg_bans4"], LpmKey(4, 32, int(ipaddress.IPv4Address("10.0.0.5"))).pack(), 16) is None


def test_rule_limits_apply_to_their_rule_only_and_service_limits_first() -> None:
    svc = with_limits(with_limits(LAB, Limits(rate_per_source=Rate(1, 60)), index=1), Limits(rate_per_source=Rate(2, 60)))
    svc = Service(svc.name, svc.rules + (rule(Action.ALLOW, nets("192.0.2.0/24"), line=3),), Action.DENY, limits=svc.limits)
    with loaded(svc) as lo:
        assert [lo.run(frame("10.2.0.1")) for _ in range(2)] == [True, False]  # rule 1: 1/60s
        assert [lo.run(frame("192.0.2.1")) for _ in range(3)] == [True, True, False]  # the service's 2/60s


def test_a_limited_rule_of_an_allow_by_default_service_is_limited() -> None:
    """Its matches are allowed like the default, yet must reach the trie with their rule."""
    svc = service("open", [(Action.ALLOW, nets("10.2.0.0/16"))], Action.ALLOW)
    svc = with_limits(svc, Limits(rate_per_source=Rate(2, 60)), index=0)
    with loaded(svc, protocol="udp") as lo:
        assert [lo.run(frame("10.2.0.1", tcp_flags=None)) for _ in range(3)] == [True, True, False]
        assert all(lo.run(frame("10.3.0.1", tcp_flags=None)) for _ in range(5))


def test_concurrent_limits_are_refused_with_a_reason() -> None:
    with pytest.raises(UnsupportedInKernel, match="concurrent connection limits.*sockgate proxy"):
        compile_service(with_limits(LAB, Limits(concurrent_per_source=3)), options=Options())


# -------------------------------------------------------------------------- real sockets


def test_real_udp_refusals_are_counted_and_reported() -> None:
    svc = service("dns", [(Action.ALLOW, nets("127.0.0.1/32"))], Action.DENY)
    with loaded(svc, protocol="udp", event_interval_ns=HOUR) as lo, ring(lo) as r, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        bpfsys.attach(u, lo.fd)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.bind(("127.0.0.9", 0))
            for _ in range(7):
                c.sendto(b"x", u.getsockname())
        got = udp_reach(u, {socket.AF_INET: u.getsockname()}, ["127.0.0.1"], local_sockets(socket.SOCK_DGRAM))
        assert got == {"127.0.0.1": True}
        assert lo.count("127.0.0.9").refused == 7  # type: ignore[union-attr]
        assert [(str(e.address), e.reason) for e in r.events()] == [("127.0.0.9", Reason.RULE)]


def test_real_tcp_rate_limit_bans_the_source() -> None:
    svc = with_limits(service("web", [(Action.ALLOW, nets("127.0.0.0/8"))], Action.DENY),
                      Limits(rate_per_source=Rate(2, 60), ban_seconds=60), index=0)
    with loaded(svc, tcp_bans=True) as lo, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(64)
        bpfsys.attach(lst, lo.fd)
        addr = {socket.AF_INET: lst.getsockname()}
        first = tcp_reach(addr, ["127.0.0.7", "127.0.0.8"], local_sockets(), wait=1.0, listener=lst)
        second = tcp_reach(addr, ["127.0.0.7"], local_sockets(), wait=1.0, listener=lst)
        third = tcp_reach(addr, ["127.0.0.7", "127.0.0.8"], local_sockets(), wait=1.0, listener=lst)
        assert first == {"127.0.0.7": True, "127.0.0.8": True} and second == {"127.0.0.7": True}
        assert third == {"127.0.0.7": False, "127.0.0.8": True}
        raw = bpfsys.map_lookup(lo.maps["sg_bans4"], LpmKey.host(ipaddress.IPv4Address("127.0.0.7")).pack(), 16)
        assert raw is not None and Ban.unpack(raw).origin is Origin.LIMIT
        assert lo.count("127.0.0.7").refused >= 1  # type: ignore[union-attr]


IPV6_DSTOPTS = 59  # <linux/in6.h>: the sender's Destination Options header
DSTOPTS = bytes([17, 0, 1, 4, 0, 0, 0, 0])  # next header UDP (the kernel rewrites it), PadN: 8 bytes


@pytest.mark.parametrize("dstopts", [False, True], ids=["plain", "dstopts"])
def test_a_udp_source_over_its_rate_is_banned_whatever_headers_it_adds(dstopts: bool) -> None:
    """A datagram is the ban's trigger on a UDP socket (the backend's ``any`` program): a
    Destination Options header between the IPv6 header and UDP must not make the source
    escape its ``ban`` and keep its rate instead. The program cannot read past the header
    chain, so it asks the socket: an unconnected IPv6 UDP socket's packets are UDP."""
    svc = with_limits(ALLOW_ALL, Limits(rate_per_source=Rate(2, 60), ban_seconds=3600))
    with loaded(svc, protocol="any") as lo, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
        u.bind(("::1", 0))
        u.settimeout(0.3)
        bpfsys.attach(u, lo.fd)
        if dstopts:
            c.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, DSTOPTS)
        got = []
        for i in range(4):
            c.sendto(b"%d" % i, u.getsockname()[:2])
            try:
                got.append(u.recv(16) == b"%d" % i)
            except socket.timeout:
                got.append(False)
        assert got == [True, True, False, False]
        raw = bpfsys.map_lookup(lo.maps["sg_bans6"], LpmKey.host(ipaddress.IPv6Address("::1")).pack(), BAN_VALUE.size)
        assert raw is not None and Ban.unpack(raw).origin is Origin.LIMIT


def test_a_tcp_syn_with_dstopts_over_its_rate_still_bans_nobody() -> None:
    """The other side of the same question: on a TCP listener an extension-header SYN is
    rate-limited (fail closed) but never a ban, since its source is unverified."""
    svc = with_limits(ALLOW_ALL, Limits(rate_per_source=Rate(1, 3600), ban_seconds=3600))
    with loaded(svc, protocol="any") as lo, socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as lst:
        lst.bind(("::1", 0))
        lst.listen(8)
        bpfsys.attach(lst, lo.fd)
        done = []
        for _ in range(2):
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as c:
                c.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, bytes([6]) + DSTOPTS[1:])
                c.settimeout(1.0)
                try:
                    c.connect(lst.getsockname()[:2])
                    done.append(True)
                except OSError:
                    done.append(False)
        assert done == [True, False]
        assert bpfsys.map_lookup(lo.maps["sg_bans6"], LpmKey.host(ipaddress.IPv6Address("::1")).pack(), BAN_VALUE.size) is None


def new_frame(src: str, protocol: str, rng: random.Random) -> bytes:
    """A new connection from ``src``: a datagram, or with ``protocol`` "any" (the backend's
    program, which reads the protocol from the packet) a TCP SYN or a datagram at random."""
    return frame(src, tcp_flags=None if protocol == "udp" or rng.random() < 0.5 else SYN)


@pytest.mark.parametrize("protocol", ["udp", "any"])
@pytest.mark.parametrize("seed", range(6))
def test_random_policies_limit_exactly_the_limited_rules_matches(seed: int, protocol: str) -> None:
    """Random rules, some allow rules limited to one connection per source per hour: from
    every network edge, two datagrams; the engine says which rule decides, and the second
    datagram is refused exactly when that rule is limited (per limits.source_of)."""
    rng = random.Random(seed)
    svc = random_service(rng, "lim", ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"), n_rules=8)
    one = Limits(rate_per_source=Rate(1, 3600))
    svc = replace(svc, rules=tuple(replace(r, limits=one) if r.action is Action.ALLOW and rng.random() < 0.6 else r
                                   for r in svc.rules))
    seen: set[tuple[int, object]] = set()
    bad = []
    with loaded(svc, protocol=protocol) as lo:
        for src in boundary_sources(svc, rng, lambda a: True, extra=30):
            a = ipaddress.ip_address(src)
            d = decide_service(svc, Peer(address=a, header=a.version))
            index = next((i for i, r in enumerate(svc.rules) if r is d.rule), None)
            for n in range(2):
                want = d.allowed
                if want and index is not None and svc.rules[index].limits is not None:
                    key = (index, source_of(a))
                    want = key not in seen
                    seen.add(key)
                if lo.run(new_frame(src, protocol, rng)) != want:
                    bad.append(f"{src} #{n + 1}: engine rule {index}, want {'allow' if want else 'deny'}")
    assert bad == [], f"seed {seed}: {svc}"


def test_real_tcp_a_ban_is_a_map_update_that_drops_the_next_connect() -> None:
    with loaded(ALLOW_ALL) as lo, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(64)
        bpfsys.attach(lst, lo.fd)
        addr = {socket.AF_INET: lst.getsockname()}
        assert tcp_reach(addr, ["127.0.0.5", "127.0.0.6"], local_sockets(), wait=1.0, listener=lst) == {
            "127.0.0.5": True, "127.0.0.6": True}
        lo.ban("127.0.0.5/32", Ban(now_ns() + HOUR, Origin.MANUAL).pack())
        assert tcp_reach(addr, ["127.0.0.5", "127.0.0.6"], local_sockets(), wait=1.0, listener=lst) == {
            "127.0.0.5": False, "127.0.0.6": True}
        assert lo.count("127.0.0.5").refused >= 1 and lo.count("127.0.0.6") is None  # type: ignore[union-attr]


@pytest.mark.parametrize("protocol", ["udp", "any"])
@pytest.mark.parametrize("seed", range(8))
def test_bursts_are_admitted_as_by_the_proxy(seed: int, protocol: str) -> None:
    """Random per-source and service-wide rates (with and without a ban) on the service and
    its allow rules, and a burst of new connections from a few sources (some IPv6 ones
    sharing a /64): well within one connection's share of a rate, so the bucket refills
    nothing, the kernel admits exactly what the proxy's Admission admits (a ban the proxy
    starts is pushed to its kernel filter: service-wide, as the program's)."""
    rng = random.Random(seed)

    def limits() -> Limits | None:
        if rng.random() < 0.3:
            return None
        per = Rate(rng.randint(1, 4), 3600) if rng.random() < 0.8 else None
        total = Rate(rng.randint(2, 12), 3600) if rng.random() < 0.4 else None
        return Limits(rate_per_source=per, rate_total=total, ban_seconds=600 if per and rng.random() < 0.5 else None) \
            if per or total else None

    svc = random_service(rng, "burst", ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"), n_rules=5)
    svc = replace(svc, limits=limits(), rules=tuple(replace(r, limits=limits()) if r.action is Action.ALLOW else r
                                                     for r in svc.rules))
    pool = [s for s in boundary_sources(svc, rng, lambda a: True, extra=10)]
    pool = rng.sample(pool, min(8, len(pool)))
    pool += [str(ipaddress.ip_address(p) + 1) for p in pool if ":" in p][:2]  # same /64
    admission, banned = Admission(svc), set()
    want, got = [], []
    with loaded(svc, protocol=protocol) as lo:
        for _ in range(60):
            src = rng.choice(pool)
            a = ipaddress.ip_address(src)
            key = source_of(a)
            if key in banned:
                want.append(False)
            else:
                v = admission.admit(Peer(address=a, header=a.version), 1000.0)
                want.append(isinstance(v, Admitted))
                if isinstance(v, Refused) and v.ban_started:
                    banned.add(key)
            got.append(lo.run(new_frame(src, protocol, rng)))
    assert got == want, f"seed {seed}: {svc}"


def test_two_cpus_never_take_more_than_the_rate() -> None:
    """Two threads (the two CPUs of a test machine) run the program on one source's
    datagrams at once: with buckets taken by compare-and-exchange, exactly N pass and none is
    lost to a retry. (The race the exchange closes — a read and a store a few nanoseconds
    apart — is too narrow to make this test fail reliably with plain stores.)"""
    svc = with_limits(ALLOW_ALL, Limits(rate_per_source=Rate(300, 3600), rate_total=Rate(400, 3600)))
    with loaded(svc, protocol="udp") as lo:
        passed = [0, 0]
        start = threading.Barrier(2)

        def flood(k: int) -> None:
            start.wait()
            passed[k] = sum(lo.run(frame("10.9.9.9", tcp_flags=None)) for _ in range(600))

        threads = [threading.Thread(target=flood, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sum(passed) == 300, passed
        assert lo.count("10.9.9.9").refused == 900  # type: ignore[union-attr]


def test_two_hundred_limited_rules_share_one_bucket_block() -> None:
    rules = [(Action.ALLOW, nets(f"10.{i}.0.0/16")) for i in range(200)]
    svc = service("many", rules, Action.DENY)
    svc = replace(svc, rules=tuple(replace(r, limits=Limits(rate_per_source=Rate(i % 5 + 1, 3600), ban_seconds=60))
                                   for i, r in enumerate(svc.rules)))
    with loaded(svc, protocol="udp") as lo:
        assert len(lo.prog) < 5000  # about 18 per rule, plus one bucket block
        for i in (0, 7, 123, 199):
            n = i % 5 + 1
            assert [lo.run(frame(f"10.{i}.0.1", tcp_flags=None)) for _ in range(n + 1)] == [True] * n + [False], i
            assert Ban.unpack(bpfsys.map_lookup(lo.maps["sg_bans4"], LpmKey.host(ipaddress.IPv4Address(f"10.{i}.0.1")).pack(),
                                                BAN_VALUE.size) or b"").origin is Origin.LIMIT


LOAD_WITHOUT_PERFMON = """
import sys
from dataclasses import replace
from support.ebpfstate import Loaded, frame
from support.verdicts import nets, service
from sockgate.ebpf import Options, compile_service
from sockgate.policy.ir import Action, Limits, Rate
svc = service("s", [(Action.DENY, nets("10.1.0.0/16")), (Action.ALLOW, nets("10.0.0.0/8", "2001:db8::/32"))], Action.DENY)
svc = replace(svc, limits=Limits(rate_per_source=Rate(3, 60), rate_total=Rate(10, 1), ban_seconds=60))
for proto in sys.argv[1:] or ("tcp", "udp"):
    lo = Loaded(compile_service(svc, options=Options(protocol=proto)))
    flags = 2 if proto == "tcp" else None
    print(proto, [lo.run(frame(s, tcp_flags=flags)) for s in ("10.2.0.1", "10.1.0.1", "2001:db8::1")])
    lo.close()
"""


def test_the_program_loads_with_cap_bpf_alone() -> None:
    """Without CAP_SYS_ADMIN and CAP_PERFMON the verifier refuses reads of uninitialised
    stack and pointer leaks: the program must not need them (a loader may run with CAP_BPF
    and CAP_NET_ADMIN only)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), *sys.path]))
    out = subprocess.run(["capsh", "--drop=cap_sys_admin,cap_perfmon", "--", "-c",
                          f"grep CapEff /proc/self/status; exec {sys.executable} -c '{LOAD_WITHOUT_PERFMON}'"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    cap_eff = int(out.stdout.split()[1], 16)
    assert not cap_eff & (1 << 21) and not cap_eff & (1 << 38)  # CAP_SYS_ADMIN, CAP_PERFMON gone
    assert out.stdout.splitlines()[1:] == ["tcp [True, False, True]", "udp [True, False, True]"]


def test_the_backends_program_asks_its_socket_with_cap_bpf_alone() -> None:
    """The ``any`` program (the backend's) reads ``skb->sk`` to tell a UDP socket behind IPv6
    extension headers: that read needs no CAP_PERFMON either."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), *sys.path]))
    out = subprocess.run(["capsh", "--drop=cap_sys_admin,cap_perfmon", "--", "-c",
                          f"exec {sys.executable} -c '{LOAD_WITHOUT_PERFMON}' any"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["any [True, False, True]"]


def test_a_steady_flood_yields_one_event_per_interval() -> None:
    interval = 50_000_000  # 50 ms
    with loaded(LAB, protocol="udp", event_interval_ns=interval) as lo, ring(lo) as r:
        start = now_ns()
        sent = 0
        while now_ns() - start < 6 * interval:
            lo.run(frame("10.1.0.1", tcp_flags=None))
            sent += 1
        took = now_ns() - start
        events = r.events()
        assert 2 <= len(events) <= took // interval + 1, (len(events), took)  # (fewer when the loop is starved)
        gaps = [b.ts_ns - a.ts_ns for a, b in zip(events, events[1:])]
        assert min(gaps) >= interval
        assert lo.count("10.1.0.1").refused == sent  # type: ignore[union-attr]


# ------------------------------------------------- the protocol read from each packet


def test_protocol_any_counts_like_the_socket_would_and_fails_closed() -> None:
    """The backend's program (``protocol="any"``) on TCP and UDP frames alike: a refused TCP
    flow counts its SYNs only, every datagram counts, and a packet whose kind cannot be read
    (an IPv6 extension header) or another protocol counts as a new connection."""
    with loaded(LAB, protocol="any") as lo:
        for flags in [SYN] * 3 + [ACK, SYNACK, RST]:
            assert not lo.run(frame("10.1.0.1", tcp_flags=flags))
        assert lo.count("10.1.0.1").refused == 3  # type: ignore[union-attr]
        for _ in range(4):
            assert not lo.run(frame("10.1.0.2", tcp_flags=None))
        assert lo.count("10.1.0.2").refused == 4  # type: ignore[union-attr]
        assert not lo.run(frame("2001:db8:1::7", tcp_flags=ACK))
        assert not lo.run(frame("2001:db8:1::7", tcp_flags=None))
        assert not lo.run(frame("2001:db8:1::7", next_header=0))  # hop-by-hop first: new (fail closed)
        assert lo.count("2001:db8:1::7").refused == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("protocol", ["tcp", "any"])
def test_an_extension_header_does_not_skip_a_rate_limit(protocol: str) -> None:
    svc = with_limits(LAB, Limits(rate_per_source=Rate(2, 60)), index=1)
    with loaded(svc, protocol=protocol) as lo:
        got = [lo.run(frame("2001:db8:5::1", next_header=0)) for _ in range(3)]
        assert got == [True, True, False]
        assert lo.run(frame("2001:db8:5::1", tcp_flags=ACK))  # a TCP segment of an open flow: not limited


def test_protocol_any_limits_tcp_syns_and_every_datagram() -> None:
    svc = with_limits(LAB, Limits(rate_per_source=Rate(2, 60)), index=1)
    with loaded(svc, protocol="any") as lo:
        assert [lo.run(frame("10.2.0.1")) for _ in range(3)] == [True, True, False]
        assert lo.run(frame("10.2.0.1", tcp_flags=ACK))
        assert [lo.run(frame("10.2.0.2", tcp_flags=None)) for _ in range(3)] == [True, True, False]
