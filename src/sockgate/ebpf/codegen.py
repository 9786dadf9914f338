"""The socket filter (``BPF_PROG_TYPE_SOCKET_FILTER``) that decides a packet by its source.

Layout (``fp`` is R10, the frame pointer; the stack frame and registers are in frame.py)::

    r6 = r1                                   the skb, kept across helper calls
    skb_load_bytes_relative(skb, 0, fp-32, 1, BPF_HDR_START_NET); fail → deny
    r7 = version nibble
    r7 == 4 → v4;  r7 == 6 → v6;  else → other    (the verdict of a peer without an address)
    v4: key = {32, source}        skb_load_bytes_relative(skb, 12, key.data, 4, NET)
    v6: key = {128, source}       skb_load_bytes_relative(skb, 8, key.data, 16, NET)
    [state] source = {family, 0, scope 0, address}                   (layout.SOURCE_KEY)
    v6: source in ::ffff:0:0/96 → forged     (before any lookup, as ranges.py says)
    [state] r0 = map_lookup_elem(bans4/6, key); a ban that has not expired → banned
    lookup: r0 = map_lookup_elem(lpm4/6, key)
    found: r0 == NULL → the default;  r0->action == allow → allowed;  else refused (rule r0->rule)
    deny: w0 = 0;  allow: w0 = 0xffffffff      (a socket filter returns the bytes to keep)

Without service state (``Shape.state`` None) ``refused`` is ``deny`` and ``allowed`` is
``allow``: the program is the rules and nothing else. With it, ``refused`` counts and reports
the refusal (counting.py) and ``allowed`` applies the rate limits (rates.py).

Why ``bpf_skb_load_bytes_relative`` (Linux 4.18) and not the legacy ``LD_ABS`` with
``SKF_NET_OFF`` that the classic compiler uses: the trie key must hold the address bytes in
network order, which is exactly what the helper copies into the stack, 16 bytes in one call;
``LD_ABS`` yields at most 4 bytes at a time, converted to host order (so each word would need
a byte swap back), and its implicit registers (R6 = skb in, R0 out, R1-R5 clobbered, an
implicit ``return 0`` on a short packet) are a special case the verifier only keeps for old
programs. A failed load here is explicit and denies, as a failed ``LD_ABS`` drops.

The mapped check compares 4-, 4-, 2- and 2-byte words of the key, so it does not depend on
the machine's byte order (bytes 10-11 are ``ff ff`` either way); stack accesses stay aligned
to their size, which the verifier requires of the stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from sockgate.resolve.ranges import BANNED, FORGED
from sockgate.ebpf import counting, frame, rates
from sockgate.ebpf.frame import KEY, SRC, VERSION, Emitter
from sockgate.ebpf.insn import (
    BPF_ADD,
    BPF_ARSH,
    BPF_B,
    BPF_DW,
    BPF_H,
    BPF_HDR_START_NET,
    BPF_JEQ,
    BPF_JGT,
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
    BPF_RSH,
    BPF_W,
    Helper,
    Insn,
    alu64,
    call,
    exit_,
    ldx,
    mov32,
    mov64,
    st,
    stx,
)
from sockgate.ebpf.layout import Reason, bans_spec
from sockgate.ebpf.maps import ACTION_CODE, DEFAULT_RULE, PREFIX_BITS
from sockgate.policy.ir import Action

SRC_OFFSET = {4: 12, 6: 8}  # RFC 791, RFC 8200: the source address in the network header
ADDR_LEN = {4: 4, 6: 16}
SOURCE_PREFIX6 = 64  # an IPv6 source's prefix as rates.py bans it (limits.source_of)
RETURN = {Action.DENY: 0, Action.ALLOW: -1}  # as w0: 0 or 0xffffffff
MAP_FD_PLACEHOLDER = frame.MAP_FD_PLACEHOLDER


@dataclass(frozen=True)
class State:
    """What the program does beyond the rules, with the service's maps (layout.py): bans,
    refusal counters and events, rate limits. ``protocol``: the socket's, "tcp" (only a SYN is
    a new connection, counted and rate-limited) or "udp" (every datagram is one); "any" reads
    it from each packet, so one program serves TCP and UDP sockets (counting.syn_check)."""

    protocol: counting.Protocol
    event_interval_ns: int
    limits: tuple[rates.Limit, ...] = ()
    tcp_bans: bool = False  # ``ban`` after a rate excess on TCP SYNs too (rates.allowed: opt-in)


@dataclass(frozen=True)
class Shape:
    """What the program decides without a lookup: the default when no prefix matches, and the
    verdict of a packet that is neither IPv4 nor IPv6; and its service state, if any."""

    default: Action
    other: Action
    state: State | None = None


@dataclass(frozen=True)
class Generated:
    """The program and, per map name, the slots of the ``ld_imm64`` loading that map."""

    insns: tuple[Insn, ...]
    relocations: tuple[tuple[int, str], ...]
    labels: dict[str, int]
    maps: tuple[str, ...] = ()  # every map the program loads, in order of first use


def generate(shape: Shape, map4: str, map6: str) -> Generated:
    """The filter for ``shape``, looking IPv4 sources up in ``map4`` and IPv6 ones in ``map6``."""
    em = Emitter()
    asm = em.asm
    state = shape.state
    em.emit(mov64(BPF_REG_6, BPF_REG_1))
    _load(em, 0, VERSION, 1)
    em.emit(ldx(BPF_B, BPF_REG_7, BPF_REG_10, VERSION), alu64(BPF_RSH, BPF_REG_7, imm=4))
    asm.jump(BPF_JEQ, BPF_REG_7, "v4", imm=4)
    asm.jump(BPF_JEQ, BPF_REG_7, "v6", imm=6)
    asm.ja(shape.other.value)
    maps = {4: map4, 6: map6}
    for fam in (4, 6):
        asm.label(f"v{fam}")
        em.emit(st(BPF_W, BPF_REG_10, KEY, PREFIX_BITS[fam]))
        _load(em, SRC_OFFSET[fam], KEY + 4, ADDR_LEN[fam])
        if state is not None:
            _source(em, fam)
        if fam == 6:
            _check_mapped(em, "forged" if state else Action.DENY.value)
        if state is not None:
            _bans(em, fam)
        asm.label(f"lookup{fam}")
        em.load_map(BPF_REG_1, maps[fam])
        em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=KEY))
        em.emit(call(Helper.map_lookup_elem))
        asm.ja("found")
    asm.label("found")
    if state is None:
        asm.jump(BPF_JEQ, BPF_REG_0, shape.default.value, imm=0)
        em.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_0, 0))
        asm.jump(BPF_JEQ, BPF_REG_1, Action.ALLOW.value, imm=ACTION_CODE[Action.ALLOW])
    else:
        _verdict(em, shape.default)
    for action in (Action.DENY, Action.ALLOW):
        asm.label(action.value)
        em.emit(mov32(BPF_REG_0, RETURN[action]), exit_())
    if state is not None:
        counting.refused(em, state.protocol, state.event_interval_ns)
        rates.allowed(em, state.protocol, state.limits, state.tcp_bans)
        _ban6_cover(em)
    out = asm.assemble()
    relocs = tuple((out.labels[k], name) for k, name in em.relocs)
    return Generated(out.insns, relocs, out.labels, tuple(em.used))


def _load(em: Emitter, offset: int, to: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` in the network header to ``fp + to``; deny when the
    packet is too short."""
    em.emit(
        mov64(BPF_REG_1, BPF_REG_6), mov64(BPF_REG_2, imm=offset), mov64(BPF_REG_3, BPF_REG_10),
        alu64(BPF_ADD, BPF_REG_3, imm=to), mov64(BPF_REG_4, imm=length), mov64(BPF_REG_5, imm=BPF_HDR_START_NET),
        call(Helper.skb_load_bytes_relative),
    )
    em.asm.jump(BPF_JNE, BPF_REG_0, Action.DENY.value, imm=0)


def _check_mapped(em: Emitter, forged: str) -> None:
    """Go to ``forged`` for a source in ::ffff:0:0/96: bytes 0-9 zero, bytes 10-11 ``ff ff``
    (RFC 4291)."""
    addr = KEY + 4
    ok = em.asm.fresh("unmapped")
    for size, off in ((BPF_W, 0), (BPF_W, 4), (BPF_H, 8)):
        em.emit(ldx(size, BPF_REG_1, BPF_REG_10, addr + off))
        em.asm.jump(BPF_JNE, BPF_REG_1, ok, imm=0)
    em.emit(ldx(BPF_H, BPF_REG_1, BPF_REG_10, addr + 10))
    em.asm.jump(BPF_JEQ, BPF_REG_1, forged, imm=0xFFFF)
    em.asm.label(ok)


def _source(em: Emitter, fam: int) -> None:
    """``struct sg_source`` of the packet at ``fp + SRC``: family, zero, scope 0, address."""
    em.emit(st(BPF_B, BPF_REG_10, SRC, fam), st(BPF_B, BPF_REG_10, SRC + 1, 0), st(BPF_H, BPF_REG_10, SRC + 2, 0))
    words = ADDR_LEN[fam] // 4
    for w in range(4):
        if w < words:
            em.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_10, KEY + 4 + 4 * w), stx(BPF_W, BPF_REG_10, SRC + 4 + 4 * w, BPF_REG_1))
        else:
            em.emit(st(BPF_W, BPF_REG_10, SRC + 4 + 4 * w, 0))


def _bans(em: Emitter, fam: int) -> None:
    """A source in ``sg_bans<fam>`` whose ban has not expired (``expires_ns`` 0, or later
    than now) is banned; an expired entry is passed over (user space sweeps it).

    IPv6: an expired longest match is asked once more at /64. User space keeps nested entries
    consistent when it writes (kernel/banmaps.py ``normalise``), but the program bans a
    source's /64 on its own later (rates.py), over an older, shorter-lived ``/128`` that
    fail2ban put there: that expired entry would hide the active /64 until the sweep. (IPv4
    needs no second look: the program's ban is the /32 itself.)"""
    em.load_map(BPF_REG_1, bans_spec(fam).name)
    em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=KEY), call(Helper.map_lookup_elem))
    em.asm.jump(BPF_JEQ, BPF_REG_0, f"lookup{fam}", imm=0)
    _ban_holds(em)
    if fam == 6:
        em.asm.ja("ban6_cover")  # out of line, at the end (``_ban6_cover``): rarely taken


def _ban6_cover(em: Emitter) -> None:
    """The second look of an IPv6 source whose longest ban entry has expired: at /64."""
    em.asm.label("ban6_cover")
    em.emit(st(BPF_W, BPF_REG_10, KEY, SOURCE_PREFIX6))
    em.load_map(BPF_REG_1, bans_spec(6).name)
    em.emit(mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=KEY), call(Helper.map_lookup_elem))
    em.emit(st(BPF_W, BPF_REG_10, KEY, PREFIX_BITS[6]))
    em.asm.jump(BPF_JEQ, BPF_REG_0, "lookup6", imm=0)
    _ban_holds(em)
    em.asm.ja("lookup6")


def _ban_holds(em: Emitter) -> None:
    """To ``banned`` when the ban entry in R0 has not expired; clobbers R0-R5, R9."""
    em.emit(ldx(BPF_DW, BPF_REG_9, BPF_REG_0, 0))
    em.asm.jump(BPF_JEQ, BPF_REG_9, "banned", imm=0)
    em.emit(call(Helper.ktime_get_ns))
    em.asm.jump(BPF_JGT, BPF_REG_9, "banned", src=BPF_REG_0)


def _verdict(em: Emitter, default: Action) -> None:
    """From a rule-trie lookup in R0 to ``allowed`` or ``refused``, with R7 the rule (the
    stored ``s32``, sign-extended) and R8 the reason."""
    asm = em.asm
    asm.jump(BPF_JEQ, BPF_REG_0, "no_rule", imm=0)
    em.emit(ldx(BPF_W, BPF_REG_7, BPF_REG_0, 4), alu64(BPF_LSH, BPF_REG_7, imm=32), alu64(BPF_ARSH, BPF_REG_7, imm=32))
    em.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_0, 0))
    asm.jump(BPF_JEQ, BPF_REG_1, "allowed", imm=ACTION_CODE[Action.ALLOW])
    em.emit(mov64(BPF_REG_8, imm=Reason.RULE))
    asm.jump(BPF_JNE, BPF_REG_7, "reason_forged", imm=BANNED)
    em.emit(mov64(BPF_REG_8, imm=Reason.BAN))
    asm.label("reason_forged")
    asm.jump(BPF_JNE, BPF_REG_7, "refused", imm=FORGED)
    em.emit(mov64(BPF_REG_8, imm=Reason.FORGED))
    asm.ja("refused")
    asm.label("no_rule")
    em.emit(mov64(BPF_REG_7, imm=DEFAULT_RULE), mov64(BPF_REG_8, imm=Reason.RULE))
    asm.ja("allowed" if default is Action.ALLOW else "refused")
    for label, rule, reason in (("banned", BANNED, Reason.BAN), ("forged", FORGED, Reason.FORGED)):
        asm.label(label)
        em.emit(mov64(BPF_REG_7, imm=rule), mov64(BPF_REG_8, imm=reason))
        asm.ja("refused")
