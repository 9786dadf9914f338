"""The socket filter (``BPF_PROG_TYPE_SOCKET_FILTER``) that decides a packet by its source.

Layout (``fp`` is R10, the frame pointer; ``key`` a ``struct bpf_lpm_trie_key`` at fp-24)::

    r6 = r1                                   the skb, kept across helper calls
    skb_load_bytes_relative(skb, 0, fp-32, 1, BPF_HDR_START_NET); fail → deny
    r7 = version nibble
    r7 == 4 → v4;  r7 == 6 → v6;  else → other    (the verdict of a peer without an address)
    v4: key = {32, source}        skb_load_bytes_relative(skb, 12, key.data, 4, NET)
        r0 = map_lookup_elem(lpm4, key) → found
    v6: key = {128, source}       skb_load_bytes_relative(skb, 8, key.data, 16, NET)
        source in ::ffff:0:0/96 → deny           (forged: before any lookup, as ranges.py says)
        r0 = map_lookup_elem(lpm6, key)
    found: r0 == NULL → default;  r0->action == allow → allow
    deny: w0 = 0;  allow: w0 = 0xffffffff      (a socket filter returns the bytes to keep)

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

from sockgate.ebpf.asm import Assembler
from sockgate.ebpf.insn import (
    BPF_B,
    BPF_H,
    BPF_HDR_START_NET,
    BPF_JEQ,
    BPF_JNE,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_3,
    BPF_REG_4,
    BPF_REG_5,
    BPF_REG_6,
    BPF_REG_7,
    BPF_REG_10,
    BPF_RSH,
    BPF_ADD,
    BPF_W,
    Insn,
    Helper,
    alu64,
    call,
    exit_,
    ld_map_fd,
    ldx,
    mov32,
    mov64,
    st,
)
from sockgate.ebpf.maps import ACTION_CODE, PREFIX_BITS
from sockgate.policy.ir import Action

KEY = -24  # struct bpf_lpm_trie_key: prefixlen at fp-24, address at fp-20 .. fp-5
VERSION = -32  # the first byte of the network header
SRC_OFFSET = {4: 12, 6: 8}  # RFC 791, RFC 8200: the source address in the network header
ADDR_LEN = {4: 4, 6: 16}
RETURN = {Action.DENY: 0, Action.ALLOW: -1}  # as w0: 0 or 0xffffffff
MAP_FD_PLACEHOLDER = 0  # replaced by each map's fd at load time (program.link)


@dataclass(frozen=True)
class Shape:
    """What the program decides without a lookup: the default when no prefix matches, and the
    verdict of a packet that is neither IPv4 nor IPv6."""

    default: Action
    other: Action


@dataclass(frozen=True)
class Generated:
    """The program and, per map name, the slots of the ``ld_imm64`` loading that map."""

    insns: tuple[Insn, ...]
    relocations: tuple[tuple[int, str], ...]
    labels: dict[str, int]


def generate(shape: Shape, map4: str, map6: str) -> Generated:
    """The filter for ``shape``, looking IPv4 sources up in ``map4`` and IPv6 ones in ``map6``."""
    asm = Assembler()
    asm.emit(mov64(BPF_REG_6, BPF_REG_1))
    _load(asm, 0, VERSION, 1)
    asm.emit(ldx(BPF_B, BPF_REG_7, BPF_REG_10, VERSION), alu64(BPF_RSH, BPF_REG_7, imm=4))
    asm.jump(BPF_JEQ, BPF_REG_7, "v4", imm=4)
    asm.jump(BPF_JEQ, BPF_REG_7, "v6", imm=6)
    asm.ja(shape.other.value)
    maps = {4: map4, 6: map6}
    relocs: dict[str, str] = {}
    for fam in (4, 6):
        asm.label(f"v{fam}")
        asm.emit(st(BPF_W, BPF_REG_10, KEY, PREFIX_BITS[fam]))
        _load(asm, SRC_OFFSET[fam], KEY + 4, ADDR_LEN[fam])
        if fam == 6:
            _deny_mapped(asm)
        relocs[f"lookup{fam}"] = maps[fam]
        asm.label(f"lookup{fam}")
        asm.emit(*ld_map_fd(BPF_REG_1, MAP_FD_PLACEHOLDER), mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=KEY))
        asm.emit(call(Helper.map_lookup_elem))
        asm.ja("found")
    asm.label("found")
    asm.jump(BPF_JEQ, BPF_REG_0, shape.default.value, imm=0)
    asm.emit(ldx(BPF_W, BPF_REG_1, BPF_REG_0, 0))
    asm.jump(BPF_JEQ, BPF_REG_1, Action.ALLOW.value, imm=ACTION_CODE[Action.ALLOW])
    for action in (Action.DENY, Action.ALLOW):
        asm.label(action.value)
        asm.emit(mov32(BPF_REG_0, RETURN[action]), exit_())
    out = asm.assemble()
    return Generated(out.insns, tuple((out.labels[k], name) for k, name in relocs.items()), out.labels)


def _load(asm: Assembler, offset: int, to: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` in the network header to ``fp + to``; deny when the
    packet is too short."""
    asm.emit(
        mov64(BPF_REG_1, BPF_REG_6), mov64(BPF_REG_2, imm=offset), mov64(BPF_REG_3, BPF_REG_10),
        alu64(BPF_ADD, BPF_REG_3, imm=to), mov64(BPF_REG_4, imm=length), mov64(BPF_REG_5, imm=BPF_HDR_START_NET),
        call(Helper.skb_load_bytes_relative),
    )
    asm.jump(BPF_JNE, BPF_REG_0, Action.DENY.value, imm=0)


def _deny_mapped(asm: Assembler) -> None:
    """Deny a source in ::ffff:0:0/96: bytes 0-9 zero, bytes 10-11 ``ff ff`` (RFC 4291)."""
    addr = KEY + 4
    for size, off in ((BPF_W, 0), (BPF_W, 4), (BPF_H, 8)):
        asm.emit(ldx(size, BPF_REG_1, BPF_REG_10, addr + off))
        asm.jump(BPF_JNE, BPF_REG_1, "lookup6", imm=0)
    asm.emit(ldx(BPF_H, BPF_REG_1, BPF_REG_10, addr + 10))
    asm.jump(BPF_JEQ, BPF_REG_1, Action.DENY.value, imm=0xFFFF)
