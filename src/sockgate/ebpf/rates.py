"""``limit rate`` in the program: the generic cell rate algorithm on ``sg_buckets``, and the
``ban`` that follows a source over its rate.

A rate ``N/UNIT`` lets a source open N new connections at once and then one every UNIT/N,
as the proxy's limiter does for a burst and in the long run (proxy/limits.py). The state is
one word per bucket (layout.BUCKET_VALUE): GCRA's theoretical arrival time ``tat``. A new
connection at ``now`` conforms when ``tat <= now + burst``; then ``tat = max(tat, now) +
interval``, with ``interval = UNIT/N`` (rounded up: never more than N per UNIT in the long
run) and ``burst = (N - 1) * interval``. ``Gcra.admit`` is the same rule in Python, for tests.

Where the two limiters differ: the proxy keeps a sliding window of the last N admission
times, the program one word. After a full burst the proxy admits nothing for a whole UNIT,
while the bucket refills one connection per UNIT/N: across that first UNIT a source gets up
to 2N - 1 connections through the kernel, N through the proxy. A window of N times per
source in a preallocated LRU map would cost 8N bytes per source, whatever the traffic (a
rate of 1000/s: 8 KB for each of 65,536 sources); the bucket is 8. tests/core/test_ebpf_state.py
states both facts against ``Limiter``.

What a *source* is matches ``limits.source_of``: an IPv4 address; an IPv6 address's /64,
except in fe80::/10, ::/64 and 64:ff9b::/96, where it is the /128. A service-wide rate
(``limit rate N/UNIT`` without ``per source``) keys its bucket with family 0. Buckets of the
service's limits use scope 0, those of rule i scope i + 1; the service's limits are checked
first, then the matched rule's (proxy/admission.py does the same). Within one set of limits, a
source over its own rate is refused without touching the service-wide bucket, and only a
connection both allow advances both. A source over its per-source rate, when the limits say
``ban DURATION``, is put in ``sg_bans4``/``sg_bans6`` (its source prefix, origin LIMIT,
expiring DURATION later): from the next packet on it is refused as banned, before any rule.
Only for a packet that is provably UDP, unless ``tcp_bans``: a TCP SYN's source is not
verified (no handshake yet), and two forged SYNs must not ban an address of the forger's
choosing; over its rate a SYN is refused, never a ban (docs/ebpf.md).

A bucket is taken with a compare-and-exchange (``BPF_CMPXCHG``) of ``tat``, re-checked
against the value another CPU left when it lost (at most ``CLAIMS`` tries, then refused: fail
closed), so two CPUs never both take a bucket's last connection. The service-wide bucket is
taken before the per-source one; a per-source bucket lost to another CPU in between refuses
the connection with the service-wide one already taken (stricter, never looser).

Concurrent limits (``limit concurrent``) count open connections, which a socket filter
cannot see end: they stay with the proxy, and ``limits_of`` refuses a service that has them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from sockgate.ebpf.frame import (
    BAN_PLEN,
    BUCKET_KEY,
    BUCKET_PTR,
    KEY,
    P_BAN,
    P_PER_BURST,
    P_PER_INTERVAL,
    P_SCOPE,
    P_TOTAL_BURST,
    P_TOTAL_INTERVAL,
    SRC,
    TCP_FLAGS,
    TOTAL_KEY,
    VALUE,
    Emitter,
)
from sockgate.ebpf.insn import (
    BPF_ADD,
    BPF_AND,
    BPF_B,
    BPF_CMPXCHG,
    BPF_DW,
    BPF_H,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JNE,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_3,
    BPF_REG_4,
    BPF_REG_6,
    BPF_REG_7,
    BPF_REG_8,
    BPF_REG_9,
    BPF_REG_10,
    BPF_W,
    S32,
    Helper,
    alu64,
    atomic,
    call,
    ld_imm64,
    ldx,
    mov64,
    s32,
    st,
    stx,
)
from sockgate.ebpf.layout import Origin, Reason, Stat, bans_spec, buckets_spec
from sockgate.ebpf.counting import (
    BPF_NOEXIST, IPPROTO_TCP, IPPROTO_UDP, IPV4_PROTOCOL, IPV6_NEXT_HEADER, Protocol, load_byte, stat, syn_check,
)
from sockgate.errors import UnsupportedInKernel
from sockgate.policy.ir import Action, Limits, Rate
from sockgate.resolve import ResolvedService

NS = 1_000_000_000
CLAIMS = 3  # compare-and-exchange tries on one bucket before refusing
# <linux/bpf.h>: offsetof(struct __sk_buff, sk); offsetof(struct bpf_sock, family, src_port, state)
SKB_SK, SOCK_FAMILY, SOCK_SRC_PORT, SOCK_STATE = 168, 4, 44, 72
AF_INET6 = 10  # <linux/socket.h>
TCP_CLOSE = 7  # include/net/tcp_states.h (UDP sockets use the TCP states: unconnected is TCP_CLOSE)
_NAT64_WORD = int.from_bytes(bytes([0x00, 0x64, 0xFF, 0x9B]), sys.byteorder)  # 64:ff9b::/96, first word


@dataclass(frozen=True)
class Gcra:
    """One rate as the program enforces it (nanoseconds)."""

    interval_ns: int
    burst_ns: int

    @classmethod
    def of(cls, rate: Rate) -> Gcra:
        interval = -(-math.ceil(rate.seconds * NS) // rate.count)
        return cls(interval, interval * (rate.count - 1))

    def admit(self, tat: int, now: int) -> tuple[bool, int]:
        """Does a connection at ``now`` conform, and the bucket's ``tat`` after it."""
        if tat > now + self.burst_ns:
            return False, tat
        return True, max(tat, now) + self.interval_ns


@dataclass(frozen=True)
class Limit:
    """The rate limits of the service (``rule`` None, scope 0) or of rule ``rule``."""

    scope: int
    rule: int | None
    per_source: Gcra | None
    total: Gcra | None
    ban_ns: int | None


def limits_of(service: ResolvedService) -> tuple[Limit, ...]:
    """The rate limits of ``service`` and of its allow rules, the service's first. Raises
    ``UnsupportedInKernel`` for concurrent limits, which only the proxy can count."""
    out, where = [], []
    sets = [(None, service.limits)] + [(r.index, r.limits) for r in service.rules if r.rule.action is Action.ALLOW]
    for index, lim in sets:
        if lim is None or lim.is_empty():
            continue
        if lim.concurrent_per_source is not None or lim.concurrent_total is not None:
            where.append("the service" if index is None else f"rule {index + 1} ({service.service.rules[index].text})")
            continue
        out.append(_limit(index, lim))
    if where:
        raise UnsupportedInKernel(
            f"service {service.name!r}: concurrent connection limits ({', '.join(where)}) count open connections, "
            "which an eBPF socket filter cannot see end; enforce this service with `sockgate proxy` instead"
        )
    return tuple(out)


def _limit(index: int | None, lim: Limits) -> Limit:
    per = Gcra.of(lim.rate_per_source) if lim.rate_per_source is not None else None
    total = Gcra.of(lim.rate_total) if lim.rate_total is not None else None
    ban = math.ceil(lim.ban_seconds * NS) if lim.ban_seconds and per is not None else None
    return Limit(0 if index is None else index + 1, index, per, total, ban)


@dataclass(frozen=True)
class _Slots:
    """Where a rate's interval and burst are on the stack (frame.py)."""

    interval: int
    burst: int


PER, TOTAL = _Slots(P_PER_INTERVAL, P_PER_BURST), _Slots(P_TOTAL_INTERVAL, P_TOTAL_BURST)


def allowed(em: Emitter, protocol: Protocol, limits: tuple[Limit, ...], tcp_bans: bool = False) -> None:
    """The ``allowed`` path (R7 the rule), ending at ``allow`` or, over a rate, at
    ``refused_new`` with reason RATE. ``ban`` follows an excess only of a packet that is
    provably UDP, unless ``tcp_bans`` (module docstring: a SYN's source is unverified). One copy of the bucket code serves every set of limits:
    each set writes its numbers to the stack and jumps to ``limit_block``, with R8 saying
    where to go after it (1: the matched rule's limits, 0: allow), so a rule's limits cost a
    dozen instructions, not a block of their own."""
    asm = em.asm
    asm.label("allowed")
    if not limits:
        asm.ja("allow")
        return
    if protocol != "udp":
        syn_check(em, "allow", protocol)
    em.emit(call(Helper.ktime_get_ns), mov64(BPF_REG_9, BPF_REG_0))
    _source_key(em)
    em.emit(*[st(BPF_W, BPF_REG_10, TOTAL_KEY + 4 * w, 0) for w in range(5)])
    rules = [lim for lim in limits if lim.rule is not None]
    for lim in limits:
        if lim.rule is None:
            _params(em, lim)
            em.emit(mov64(BPF_REG_8, imm=1 if rules else 0))
            asm.ja("limit_block")
    asm.label("limit_rules")
    for lim in rules:
        skip = asm.fresh("limit_skip")
        asm.jump(BPF_JNE, BPF_REG_7, skip, imm=lim.rule or 0)
        _params(em, lim)
        em.emit(mov64(BPF_REG_8, imm=0))
        asm.ja("limit_block")
        asm.label(skip)
    asm.ja("allow")
    _block(em, protocol, tcp_bans)


def _params(em: Emitter, lim: Limit) -> None:
    """The numbers of ``lim`` to the stack (a register each, so the verifier knows them)."""
    per, total = lim.per_source or Gcra(0, 0), lim.total or Gcra(0, 0)
    for slot, value in ((P_SCOPE, lim.scope), (P_PER_INTERVAL, per.interval_ns), (P_PER_BURST, per.burst_ns),
                        (P_TOTAL_INTERVAL, total.interval_ns), (P_TOTAL_BURST, total.burst_ns), (P_BAN, lim.ban_ns or 0)):
        em.emit(*ld_imm64(BPF_REG_1, value) if value > S32[1] else (mov64(BPF_REG_1, imm=value),),
                stx(BPF_DW, BPF_REG_10, slot, BPF_REG_1))


def _source_key(em: Emitter) -> None:
    """``struct sg_source`` of ``limits.source_of(address)`` at ``fp + BUCKET_KEY``, and its
    prefix length at ``fp + BAN_PLEN``."""
    asm = em.asm
    for w in range(5):
        em.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_10, SRC + 4 * w), stx(BPF_W, BPF_REG_10, BUCKET_KEY + 4 * w, BPF_REG_1))
    em.emit(st(BPF_W, BPF_REG_10, BAN_PLEN, 32), ldx(BPF_B, BPF_REG_1, BPF_REG_10, SRC))
    asm.jump(BPF_JNE, BPF_REG_1, "source_done", imm=6)
    addr = BUCKET_KEY + 4
    em.emit(st(BPF_W, BPF_REG_10, BAN_PLEN, 128), ldx(BPF_B, BPF_REG_1, BPF_REG_10, addr))
    asm.jump(BPF_JNE, BPF_REG_1, "source_not_ll", imm=0xFE)
    em.emit(ldx(BPF_B, BPF_REG_1, BPF_REG_10, addr + 1), alu64(BPF_AND, BPF_REG_1, imm=0xC0))
    asm.jump(BPF_JEQ, BPF_REG_1, "source_done", imm=0x80)  # fe80::/10: the address itself
    asm.label("source_not_ll")
    em.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_10, addr), ldx(BPF_W, BPF_REG_2, BPF_REG_10, addr + 4))
    asm.jump(BPF_JNE, BPF_REG_1, "source_not_zero", imm=0)
    asm.jump(BPF_JEQ, BPF_REG_2, "source_done", imm=0)  # ::/64
    asm.label("source_not_zero")
    asm.jump(BPF_JNE, BPF_REG_1, "source_mask", imm=s32(_NAT64_WORD), jmp32=True)
    asm.jump(BPF_JNE, BPF_REG_2, "source_mask", imm=0)
    em.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_10, addr + 8))
    asm.jump(BPF_JEQ, BPF_REG_1, "source_done", imm=0)  # 64:ff9b::/96
    asm.label("source_mask")
    em.emit(st(BPF_W, BPF_REG_10, addr + 8, 0), st(BPF_W, BPF_REG_10, addr + 12, 0), st(BPF_W, BPF_REG_10, BAN_PLEN, 64))
    asm.label("source_done")


def _block(em: Emitter, protocol: Protocol, tcp_bans: bool) -> None:
    """The limits on the stack: check the per-source bucket, then the service-wide one, then
    take the service-wide one and the per-source one (a rate absent has interval 0). Three
    paths, so that no path reads a bucket pointer it did not store."""
    asm = em.asm
    asm.label("limit_block")
    em.emit(ldx(BPF_DW, BPF_REG_1, BPF_REG_10, P_SCOPE), stx(BPF_H, BPF_REG_10, BUCKET_KEY + 2, BPF_REG_1),
            stx(BPF_H, BPF_REG_10, TOTAL_KEY + 2, BPF_REG_1), ldx(BPF_DW, BPF_REG_1, BPF_REG_10, P_PER_INTERVAL))
    asm.jump(BPF_JEQ, BPF_REG_1, "limit_total_only", imm=0)
    _bucket(em, BUCKET_KEY, "limit_over_source", PER)
    em.emit(ldx(BPF_DW, BPF_REG_2, BPF_REG_10, P_TOTAL_INTERVAL))
    asm.jump(BPF_JNE, BPF_REG_2, "limit_both", imm=0)
    _claim(em, PER, "limit_over_source")
    asm.ja("limit_passed")
    asm.label("limit_both")
    em.emit(stx(BPF_DW, BPF_REG_10, BUCKET_PTR, BPF_REG_0))
    _bucket(em, TOTAL_KEY, "limit_over_total", TOTAL)
    _claim(em, TOTAL, "limit_over_total")
    em.emit(ldx(BPF_DW, BPF_REG_0, BPF_REG_10, BUCKET_PTR), ldx(BPF_DW, BPF_REG_1, BPF_REG_0, 0))
    _claim(em, PER, "limit_over_source", check_first=True)
    asm.ja("limit_passed")
    asm.label("limit_total_only")
    _bucket(em, TOTAL_KEY, "limit_over_total", TOTAL)
    _claim(em, TOTAL, "limit_over_total")
    asm.label("limit_passed")
    asm.jump(BPF_JEQ, BPF_REG_8, "limit_rules", imm=1)
    asm.ja("allow")
    asm.label("limit_over_source")
    em.emit(ldx(BPF_DW, BPF_REG_1, BPF_REG_10, P_BAN))
    asm.jump(BPF_JEQ, BPF_REG_1, "limit_over_total", imm=0)
    if tcp_bans or protocol == "udp":
        _ban(em)
    elif protocol == "any":
        _only_udp(em, "limit_over_total")
        _ban(em)
    asm.label("limit_over_total")
    em.emit(mov64(BPF_REG_8, imm=Reason.RATE))
    asm.ja("refused_new")


def _bucket(em: Emitter, key: int, over: str, rate: _Slots) -> None:
    """R0 = the bucket under ``fp + key`` (created empty), R1 its ``tat``; to ``over`` when
    a connection now does not conform (or no bucket could be had: fail closed)."""
    asm, name = em.asm, buckets_spec().name
    have = asm.fresh("bucket")
    _lookup(em, name, key)
    asm.jump(BPF_JNE, BPF_REG_0, have, imm=0)
    em.emit(st(BPF_DW, BPF_REG_10, VALUE, 0))
    em.load_map(BPF_REG_1, name)
    em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=key), mov64(BPF_REG_3, BPF_REG_10),
            alu64(BPF_ADD, BPF_REG_3, imm=VALUE), mov64(BPF_REG_4, imm=BPF_NOEXIST), call(Helper.map_update_elem))
    _lookup(em, name, key)
    asm.jump(BPF_JEQ, BPF_REG_0, over, imm=0)
    asm.label(have)
    em.emit(ldx(BPF_DW, BPF_REG_1, BPF_REG_0, 0))
    _conforms(em, rate, over)


def _claim(em: Emitter, rate: _Slots, over: str, check_first: bool = False) -> None:
    """Take the bucket at R0 whose ``tat`` was read into R1: ``tat = max(tat, now) +
    interval`` by compare-and-exchange, re-checked on the value another CPU wrote; to
    ``over`` when it no longer conforms or after ``CLAIMS`` lost exchanges."""
    asm = em.asm
    done = asm.fresh("claimed")
    for attempt in range(CLAIMS):
        if attempt or check_first:
            _conforms(em, rate, over)
        keep = asm.fresh("tat")
        em.emit(mov64(BPF_REG_2, BPF_REG_1))
        asm.jump(BPF_JGE, BPF_REG_2, keep, src=BPF_REG_9)
        em.emit(mov64(BPF_REG_2, BPF_REG_9))
        asm.label(keep)
        em.emit(ldx(BPF_DW, BPF_REG_3, BPF_REG_10, rate.interval), alu64(BPF_ADD, BPF_REG_2, BPF_REG_3),
                mov64(BPF_REG_3, BPF_REG_0), mov64(BPF_REG_0, BPF_REG_1), atomic(BPF_DW, BPF_REG_3, 0, BPF_REG_2, BPF_CMPXCHG))
        asm.jump(BPF_JEQ, BPF_REG_0, done, src=BPF_REG_1)
        em.emit(mov64(BPF_REG_1, BPF_REG_0), mov64(BPF_REG_0, BPF_REG_3))  # lost: the new tat, the bucket
    asm.ja(over)
    asm.label(done)


def _conforms(em: Emitter, rate: _Slots, over: str) -> None:
    """To ``over`` unless ``R1 <= now + burst`` (R2, R3 clobbered)."""
    em.emit(mov64(BPF_REG_2, BPF_REG_9), ldx(BPF_DW, BPF_REG_3, BPF_REG_10, rate.burst), alu64(BPF_ADD, BPF_REG_2, BPF_REG_3))
    em.asm.jump(BPF_JGT, BPF_REG_1, over, src=BPF_REG_2)


def _lookup(em: Emitter, name: str, key: int) -> None:
    em.load_map(BPF_REG_1, name)
    em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=key), call(Helper.map_lookup_elem))


def _only_udp(em: Emitter, otherwise: str) -> None:
    """Go on only when the packet is provably UDP: the IPv4 protocol byte is 17; or the IPv6
    fixed header's next header is 17; or, behind IPv6 extension headers (which the program
    does not walk), the socket is an unconnected IPv6 UDP socket (``_udp_socket``). TCP, an
    unreadable header or any other socket go to ``otherwise`` — failing towards no ban, the
    safe side of a spoofable trigger. Without the socket's word a datagram carrying a
    Destination Options header would escape its ``ban`` and keep its rate."""
    asm = em.asm
    v6, check, done = asm.fresh("udp6_"), asm.fresh("udp_check_"), asm.fresh("udp_sure_")
    em.emit(ldx(BPF_B, BPF_REG_1, BPF_REG_10, SRC))
    asm.jump(BPF_JEQ, BPF_REG_1, v6, imm=6)
    load_byte(em, IPV4_PROTOCOL, otherwise)
    asm.ja(check)
    asm.label(v6)
    load_byte(em, IPV6_NEXT_HEADER, otherwise)
    em.emit(ldx(BPF_B, BPF_REG_1, BPF_REG_10, TCP_FLAGS))
    asm.jump(BPF_JEQ, BPF_REG_1, done, imm=IPPROTO_UDP)
    asm.jump(BPF_JEQ, BPF_REG_1, otherwise, imm=IPPROTO_TCP)
    _udp_socket(em, otherwise)
    asm.ja(done)
    asm.label(check)
    em.emit(ldx(BPF_B, BPF_REG_1, BPF_REG_10, TCP_FLAGS))
    asm.jump(BPF_JNE, BPF_REG_1, otherwise, imm=IPPROTO_UDP)
    asm.label(done)


def _udp_socket(em: Emitter, otherwise: str) -> None:
    """Go on only when the socket the filter runs on (``skb->sk``, a ``struct bpf_sock`` whose
    common fields a socket filter may read without CAP_PERFMON) is a bound IPv6 socket in
    ``TCP_CLOSE``: an unconnected UDP socket, whose packets are UDP whatever headers precede
    the datagram. A TCP socket that receives is listening or connected, not closed (only a
    packet racing the socket's own close could see it so, and would cost at worst one ban); a
    connected UDP socket (``TCP_ESTABLISHED``) goes to ``otherwise`` (no ban: the safe side);
    ``BPF_PROG_TEST_RUN``'s stand-in socket is bound to no port. (``bpf_skc_to_udp6_sock``
    would say it outright, but needs CAP_PERFMON, which the loader may not have.)"""
    asm = em.asm
    em.emit(ldx(BPF_DW, BPF_REG_1, BPF_REG_6, SKB_SK))
    asm.jump(BPF_JEQ, BPF_REG_1, otherwise, imm=0)
    em.emit(ldx(BPF_W, BPF_REG_2, BPF_REG_1, SOCK_FAMILY))
    asm.jump(BPF_JNE, BPF_REG_2, otherwise, imm=AF_INET6)
    em.emit(ldx(BPF_W, BPF_REG_2, BPF_REG_1, SOCK_STATE))
    asm.jump(BPF_JNE, BPF_REG_2, otherwise, imm=TCP_CLOSE)
    em.emit(ldx(BPF_W, BPF_REG_2, BPF_REG_1, SOCK_SRC_PORT))
    asm.jump(BPF_JEQ, BPF_REG_2, otherwise, imm=0)


def _ban(em: Emitter) -> None:
    """Put the source's prefix in its family's ban trie: expires the limits' ban (ns) from
    now, origin LIMIT. A failed insert (the trie full) is counted in ``sg_stats``
    (``Stat.BANS_FAILED``), which ``sockgate refused`` reports."""
    asm = em.asm
    v6, update = asm.fresh("ban6_"), asm.fresh("ban_update")
    em.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_10, BAN_PLEN), stx(BPF_W, BPF_REG_10, KEY, BPF_REG_1))
    for w in range(4):
        em.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_10, BUCKET_KEY + 4 + 4 * w), stx(BPF_W, BPF_REG_10, KEY + 4 + 4 * w, BPF_REG_1))
    em.emit(mov64(BPF_REG_1, BPF_REG_9), ldx(BPF_DW, BPF_REG_2, BPF_REG_10, P_BAN), alu64(BPF_ADD, BPF_REG_1, BPF_REG_2),
            stx(BPF_DW, BPF_REG_10, VALUE, BPF_REG_1), st(BPF_W, BPF_REG_10, VALUE + 8, int(Origin.LIMIT)),
            st(BPF_W, BPF_REG_10, VALUE + 12, 0), ldx(BPF_B, BPF_REG_1, BPF_REG_10, SRC))
    asm.jump(BPF_JEQ, BPF_REG_1, v6, imm=6)
    em.load_map(BPF_REG_1, bans_spec(4).name)
    asm.ja(update)
    asm.label(v6)
    em.load_map(BPF_REG_1, bans_spec(6).name)
    asm.label(update)
    em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=KEY), mov64(BPF_REG_3, BPF_REG_10),
            alu64(BPF_ADD, BPF_REG_3, imm=VALUE), mov64(BPF_REG_4, imm=0), call(Helper.map_update_elem))
    done = asm.fresh("ban_done_")
    asm.jump(BPF_JEQ, BPF_REG_0, done, imm=0)
    stat(em, Stat.BANS_FAILED)  # the trie full: the source is still rate-refused, and it shows
    asm.label(done)
