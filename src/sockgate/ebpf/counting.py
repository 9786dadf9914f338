"""The program's refused path: count the refusal per source and report it, rate-limited.

TCP Wrappers logged every refused connection, and the tools that ban attackers (fail2ban,
sshguard, CrowdSec) are built on such logs; a filter that drops silently loses that. So a
refused *new connection* — a TCP SYN (SYN set, ACK clear), or any UDP datagram — is counted
in ``sg_counts`` under its source (layout.SourceKey, scope 0)::

    refused:      [TCP] not a SYN → deny        (the rest of a refused flow: dropped, not counted)
                  (the protocol: the socket's, or with "any" the packet's own; there an
                  IPv6 extension header or another protocol counts as new)
    refused_new:  r9 = ktime_get_ns()
                  r0 = lookup(counts, source)
                  NULL → update(counts, source, {0, now, now, 0}, BPF_NOEXIST); r0 = lookup again
                  NULL → deny                  (cannot happen with an LRU map; fail closed)
                  lock r0->refused += 1;  r0->last_ns = now      (first_ns was set by the insert)
                  r0->event_ns == 0 or now - r0->event_ns >= interval:
                      cmpxchg(r0->event_ns, old, now) won → ringbuf_output(events, sg_event)
                  deny

The count is an atomic add (``BPF_ATOMIC | BPF_ADD``, ``lock xadd``), so refusals counted on
several CPUs at once are all counted; two CPUs inserting the same new source race only on
the insert, whose loser finds the winner's entry. The event is claimed by a compare-and-
exchange on ``event_ns``, so a flood from one source on every CPU still yields at most one
event per interval. ``bpf_ringbuf_output`` (Linux 5.8) is in ``bpf_base_func_proto``
(kernel/bpf/helpers.c), offered to socket filters; a full ring drops the event, never the
verdict — and counts it (``stat``: ``sg_stats[Stat.EVENTS_LOST]`` += 1), so the refusal log
can say events were lost and recover the sources from the counters.
"""

from __future__ import annotations

from typing import Literal

from sockgate.ebpf.frame import SRC, STAT_KEY, TCP_FLAGS, VALUE, VERSION, Emitter
from sockgate.ebpf.insn import (
    BPF_ADD,
    BPF_AND,
    BPF_B,
    BPF_CMPXCHG,
    BPF_DW,
    BPF_H,
    BPF_HDR_START_NET,
    BPF_JEQ,
    BPF_JLT,
    BPF_JNE,
    BPF_LSH,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_3,
    BPF_REG_4,
    BPF_REG_5,
    BPF_REG_6,
    BPF_REG_7,
    BPF_REG_8,
    BPF_REG_9,
    BPF_REG_10,
    BPF_SUB,
    BPF_W,
    Helper,
    alu64,
    atomic,
    call,
    ld_imm64,
    ldx,
    mov64,
    st,
    stx,
)
from sockgate.ebpf.layout import COUNT_VALUE, EVENT, Stat, counts_spec, events_spec, stats_spec

Protocol = Literal["tcp", "udp", "any"]  # the socket's protocol; "any": read from each packet
BPF_NOEXIST = 1  # <linux/bpf.h> map update flags
IPPROTO_TCP, IPPROTO_UDP = 6, 17
TCP_SYN, TCP_ACK = 0x02, 0x10  # RFC 9293 control bits, in the 14th byte of the header
TCP_FLAGS_AT = 13
IPV6_NEXT_HEADER = 6
IPV4_PROTOCOL = 9  # RFC 791: the protocol byte of the IPv4 header
IPV6_HEADER = 40

# struct sg_count and struct sg_event field offsets (layout.COUNT_VALUE, layout.EVENT)
REFUSED, FIRST_NS, LAST_NS, EVENT_NS = 0, 8, 16, 24
EV_TS, EV_FAMILY, EV_REASON, EV_ZERO, EV_RULE, EV_ADDR = 0, 8, 9, 10, 12, 16
assert COUNT_VALUE.size == 32 and EVENT.size == 32


def refused(em: Emitter, protocol: Protocol, interval_ns: int) -> None:
    """The ``refused`` path (R7 rule, R8 reason), ending at ``deny``."""
    asm = em.asm
    counts = counts_spec().name
    asm.label("refused")
    if protocol != "udp":
        syn_check(em, "deny", protocol, unsure_new=protocol == "any")
    asm.label("refused_new")
    em.emit(call(Helper.ktime_get_ns), mov64(BPF_REG_9, BPF_REG_0))
    _lookup_source(em, counts)
    asm.jump(BPF_JNE, BPF_REG_0, "count", imm=0)
    em.emit(st(BPF_DW, BPF_REG_10, VALUE + REFUSED, 0), stx(BPF_DW, BPF_REG_10, VALUE + FIRST_NS, BPF_REG_9),
            stx(BPF_DW, BPF_REG_10, VALUE + LAST_NS, BPF_REG_9), st(BPF_DW, BPF_REG_10, VALUE + EVENT_NS, 0))
    em.load_map(BPF_REG_1, counts)
    em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=SRC), mov64(BPF_REG_3, BPF_REG_10),
            alu64(BPF_ADD, BPF_REG_3, imm=VALUE), mov64(BPF_REG_4, imm=BPF_NOEXIST), call(Helper.map_update_elem))
    _lookup_source(em, counts)
    asm.jump(BPF_JEQ, BPF_REG_0, "deny", imm=0)
    asm.label("count")
    em.emit(mov64(BPF_REG_1, imm=1), atomic(BPF_DW, BPF_REG_0, REFUSED, BPF_REG_1, BPF_ADD),
            stx(BPF_DW, BPF_REG_0, LAST_NS, BPF_REG_9), ldx(BPF_DW, BPF_REG_1, BPF_REG_0, EVENT_NS))
    asm.jump(BPF_JEQ, BPF_REG_1, "claim_event", imm=0)
    em.emit(mov64(BPF_REG_2, BPF_REG_9), alu64(BPF_SUB, BPF_REG_2, BPF_REG_1), *ld_imm64(BPF_REG_3, interval_ns))
    asm.jump(BPF_JLT, BPF_REG_2, "deny", src=BPF_REG_3)
    asm.label("claim_event")
    em.emit(mov64(BPF_REG_3, BPF_REG_0), mov64(BPF_REG_0, BPF_REG_1), mov64(BPF_REG_2, BPF_REG_9),
            atomic(BPF_DW, BPF_REG_3, EVENT_NS, BPF_REG_2, BPF_CMPXCHG))
    asm.jump(BPF_JNE, BPF_REG_0, "deny", src=BPF_REG_1)
    _event(em)
    asm.ja("deny")


def _lookup_source(em: Emitter, name: str) -> None:
    em.load_map(BPF_REG_1, name)
    em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=SRC), call(Helper.map_lookup_elem))


def _event(em: Emitter) -> None:
    """``struct sg_event {now, family, reason, 0, rule, address}`` at ``fp + VALUE``, out to
    the ring (flags 0: the kernel decides when to wake the reader)."""
    em.emit(stx(BPF_DW, BPF_REG_10, VALUE + EV_TS, BPF_REG_9), ldx(BPF_B, BPF_REG_1, BPF_REG_10, SRC),
            stx(BPF_B, BPF_REG_10, VALUE + EV_FAMILY, BPF_REG_1), stx(BPF_B, BPF_REG_10, VALUE + EV_REASON, BPF_REG_8),
            st(BPF_H, BPF_REG_10, VALUE + EV_ZERO, 0), stx(BPF_W, BPF_REG_10, VALUE + EV_RULE, BPF_REG_7))
    for w in range(4):
        em.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_10, SRC + 4 + 4 * w), stx(BPF_W, BPF_REG_10, VALUE + EV_ADDR + 4 * w, BPF_REG_1))
    em.load_map(BPF_REG_1, events_spec().name)
    em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=VALUE), mov64(BPF_REG_3, imm=EVENT.size),
            mov64(BPF_REG_4, imm=0), call(Helper.ringbuf_output))
    sent = em.asm.fresh("event_sent_")
    em.asm.jump(BPF_JEQ, BPF_REG_0, sent, imm=0)
    stat(em, Stat.EVENTS_LOST)
    em.asm.label(sent)


def stat(em: Emitter, which: Stat) -> None:
    """``sg_stats[which]`` += 1, atomically (layout.Stat). Clobbers R0-R5."""
    done = em.asm.fresh("stat_done_")
    em.emit(st(BPF_W, BPF_REG_10, STAT_KEY, int(which)))
    em.load_map(BPF_REG_1, stats_spec().name)
    em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=STAT_KEY), call(Helper.map_lookup_elem))
    em.asm.jump(BPF_JEQ, BPF_REG_0, done, imm=0)
    em.emit(mov64(BPF_REG_1, imm=1), atomic(BPF_DW, BPF_REG_0, 0, BPF_REG_1, BPF_ADD))
    em.asm.label(done)


def syn_check(em: Emitter, not_syn: str, protocol: Protocol = "tcp", unsure_new: bool = True) -> None:
    """Go to ``not_syn`` when the packet is a TCP segment that opens nothing (not a SYN
    without ACK); fall through for a new connection. For IPv4 the flags byte is at IHL * 4 +
    13; for IPv6 at 40 + 13 when the fixed header's next header is TCP. With ``protocol``
    "tcp" the socket is a TCP socket, so an IPv4 packet is TCP; with "any" the IPv4 protocol
    byte must say TCP, and any other protocol (UDP) is new. A packet whose kind cannot be
    read — an IPv6 packet with extension headers (its next header is not TCP or, with "any",
    UDP), a header too short — is new when ``unsure_new`` (rate limits: fail closed, so no
    header trick skips a limit; with "any" it may be a datagram), else taken as not a SYN (a
    refused TCP socket's: dropped either way, only not counted). Needs the source key's
    family (``fp + SRC``) and the first header byte (``fp + VERSION``)."""
    asm = em.asm
    v6, load, new = asm.fresh("syn_v6_"), asm.fresh("syn_load_"), asm.fresh("syn_new_")
    unsure = new if unsure_new else not_syn
    em.emit(ldx(BPF_B, BPF_REG_1, BPF_REG_10, SRC))
    asm.jump(BPF_JEQ, BPF_REG_1, v6, imm=6)
    if protocol == "any":
        load_byte(em, IPV4_PROTOCOL, unsure)
        em.emit(ldx(BPF_B, BPF_REG_1, BPF_REG_10, TCP_FLAGS))
        asm.jump(BPF_JNE, BPF_REG_1, new, imm=IPPROTO_TCP)
    em.emit(ldx(BPF_B, BPF_REG_2, BPF_REG_10, VERSION), alu64(BPF_AND, BPF_REG_2, imm=0x0F),
            alu64(BPF_LSH, BPF_REG_2, imm=2), alu64(BPF_ADD, BPF_REG_2, imm=TCP_FLAGS_AT))
    asm.ja(load)
    asm.label(v6)
    load_byte(em, IPV6_NEXT_HEADER, unsure)
    em.emit(ldx(BPF_B, BPF_REG_1, BPF_REG_10, TCP_FLAGS))
    if protocol == "any":
        asm.jump(BPF_JEQ, BPF_REG_1, new, imm=IPPROTO_UDP)
    asm.jump(BPF_JNE, BPF_REG_1, unsure, imm=IPPROTO_TCP)
    em.emit(mov64(BPF_REG_2, imm=IPV6_HEADER + TCP_FLAGS_AT))
    asm.label(load)
    load_byte(em, None, unsure)
    em.emit(ldx(BPF_B, BPF_REG_1, BPF_REG_10, TCP_FLAGS), alu64(BPF_AND, BPF_REG_1, imm=TCP_SYN | TCP_ACK))
    asm.jump(BPF_JNE, BPF_REG_1, not_syn, imm=TCP_SYN)
    asm.label(new)


def load_byte(em: Emitter, offset: int | None, fail: str) -> None:
    """One byte of the network header at ``offset`` (None: at R2) to ``fp + TCP_FLAGS``."""
    if offset is not None:
        em.emit(mov64(BPF_REG_2, imm=offset))
    em.emit(mov64(BPF_REG_1, BPF_REG_6), mov64(BPF_REG_3, BPF_REG_10), alu64(BPF_ADD, BPF_REG_3, imm=TCP_FLAGS),
            mov64(BPF_REG_4, imm=1), mov64(BPF_REG_5, imm=BPF_HDR_START_NET), call(Helper.skb_load_bytes_relative))
    em.asm.jump(BPF_JNE, BPF_REG_0, fail, imm=0)

