"""eBPF instructions: the kernel ABI as tables, and encoding as a pure function.

An ``Insn`` is one ``struct bpf_insn`` (<linux/bpf.h>): an 8-bit opcode, a 4-bit destination
and a 4-bit source register, a signed 16-bit offset and a signed 32-bit immediate, 8 bytes in
native byte order with ``dst_reg`` in the low nibble of the second byte on a little-endian
machine (a C bitfield; the high nibble on a big-endian one). A 64-bit immediate load
(``BPF_LD | BPF_IMM | BPF_DW``) takes two slots: the second holds only the upper 32 bits. With
``src_reg = BPF_PSEUDO_MAP_FD`` its immediate is a map's file descriptor, which the verifier
replaces by the map's address at load time.

Names are those of <linux/bpf_common.h> (classes, sizes, modes, operations shared with classic
BPF) and <linux/bpf.h> (the eBPF additions, registers, helper ids, map and program types).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable

# <linux/bpf_common.h>: the fields eBPF shares with classic BPF (sockgate.bpf.insn names them)
from sockgate.bpf.insn import (  # re-exported: `X as X`
    BPF_ABS as BPF_ABS,
    BPF_ADD as BPF_ADD,
    BPF_ALU as BPF_ALU,
    BPF_AND as BPF_AND,
    BPF_B as BPF_B,
    BPF_DIV as BPF_DIV,
    BPF_H as BPF_H,
    BPF_IMM as BPF_IMM,
    BPF_IND as BPF_IND,
    BPF_JA as BPF_JA,
    BPF_JEQ as BPF_JEQ,
    BPF_JGE as BPF_JGE,
    BPF_JGT as BPF_JGT,
    BPF_JMP as BPF_JMP,
    BPF_JSET as BPF_JSET,
    BPF_K as BPF_K,
    BPF_LD as BPF_LD,
    BPF_LDX as BPF_LDX,
    BPF_LSH as BPF_LSH,
    BPF_MEM as BPF_MEM,
    BPF_MOD as BPF_MOD,
    BPF_MUL as BPF_MUL,
    BPF_NEG as BPF_NEG,
    BPF_OR as BPF_OR,
    BPF_RSH as BPF_RSH,
    BPF_ST as BPF_ST,
    BPF_STX as BPF_STX,
    BPF_SUB as BPF_SUB,
    BPF_W as BPF_W,
    BPF_X as BPF_X,
    BPF_XOR as BPF_XOR,
    bpf_class as bpf_class,
    bpf_mode as bpf_mode,
    bpf_op as bpf_op,
    bpf_size as bpf_size,
    bpf_src as bpf_src,
)

BPF_JMP32 = 0x06  # <linux/bpf.h>, Linux 5.1: jumps comparing the low 32 bits
BPF_ALU64 = 0x07  # <linux/bpf.h>

# size
BPF_DW = 0x18  # <linux/bpf.h>
# mode
BPF_ATOMIC = 0xC0  # <linux/bpf.h> (was BPF_XADD)
BPF_FETCH = 0x01  # <linux/bpf.h>: an atomic operation that also returns the old value
BPF_CMPXCHG = 0xF0 | BPF_FETCH  # <linux/bpf.h>, Linux 5.12: R0 = cmpxchg(dst + off, R0, src)

# alu operations
BPF_MOV = 0xB0  # <linux/bpf.h>
BPF_ARSH = 0xC0
BPF_END = 0xD0

# jump operations
BPF_JNE = 0x50  # <linux/bpf.h> from here
BPF_JSGT = 0x60
BPF_JSGE = 0x70
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_JLT = 0xA0
BPF_JLE = 0xB0
BPF_JSLT = 0xC0
BPF_JSLE = 0xD0

# source operand
BPF_TO_LE = 0x00  # BPF_END: the source bit chooses the byte order
BPF_TO_BE = 0x08

# <linux/bpf.h>: registers. R0 return value, R1-R5 arguments (clobbered by calls), R6-R9
# callee-saved, R10 the read-only frame pointer.
BPF_REG_0, BPF_REG_1, BPF_REG_2, BPF_REG_3, BPF_REG_4, BPF_REG_5 = range(6)
BPF_REG_6, BPF_REG_7, BPF_REG_8, BPF_REG_9, BPF_REG_10 = range(6, 11)
MAX_BPF_REG = 11
BPF_REG_FP = BPF_REG_10
MAX_BPF_STACK = 512  # <linux/filter.h>

BPF_PSEUDO_MAP_FD = 1  # <linux/bpf.h>: ld_imm64 src_reg: imm is a map fd


class Helper(IntEnum):
    """``enum bpf_func_id`` (<linux/bpf.h>, ``__BPF_FUNC_MAPPER``): the helpers sockgate calls
    or will call, by their id in the ``imm`` of a ``BPF_CALL``."""

    map_lookup_elem = 1
    map_update_elem = 2
    map_delete_elem = 3
    ktime_get_ns = 5
    get_current_pid_tgid = 14
    get_current_comm = 16
    get_prandom_u32 = 7
    perf_event_output = 25
    skb_load_bytes = 26
    get_socket_cookie = 46
    get_socket_uid = 47
    skb_load_bytes_relative = 68  # Linux 4.18
    get_netns_cookie = 122  # Linux 5.7 (cgroup sock), 5.8 (sock_ops)
    ringbuf_output = 130  # Linux 5.8


BPF_HDR_START_MAC = 0  # <linux/bpf.h> enum bpf_hdr_start_off (skb_load_bytes_relative)
BPF_HDR_START_NET = 1


class MapType(IntEnum):
    """``enum bpf_map_type`` (<linux/bpf.h>)."""

    HASH = 1
    ARRAY = 2
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11  # Linux 4.11
    SK_STORAGE = 24  # Linux 5.2
    RINGBUF = 27  # Linux 5.8


class ProgType(IntEnum):
    """``enum bpf_prog_type`` (<linux/bpf.h>)."""

    SOCKET_FILTER = 1
    CGROUP_SOCK = 9
    SOCK_OPS = 13


class AttachType(IntEnum):
    """``enum bpf_attach_type`` (<linux/bpf.h>): where a cgroup program runs."""

    CGROUP_SOCK_OPS = 3
    CGROUP_INET4_POST_BIND = 12  # Linux 4.17
    CGROUP_INET6_POST_BIND = 13
    CGROUP_INET_SOCK_RELEASE = 34  # Linux 5.9


BPF_F_NO_PREALLOC = 1 << 0  # <linux/bpf.h> map_flags: required for LPM tries
BPF_OBJ_NAME_LEN = 16

S16 = (-(1 << 15), (1 << 15) - 1)
S32 = (-(1 << 31), (1 << 31) - 1)

_STRUCT = struct.Struct("=BBhi")  # struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; }
INSN_SIZE = _STRUCT.size
_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True)
class Insn:
    """One ``struct bpf_insn``; ``off`` and ``imm`` are signed."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFF:
            raise ValueError(f"opcode out of range: {self.code:#x}")
        if not (0 <= self.dst < 16 and 0 <= self.src < 16):
            raise ValueError(f"register out of range: dst={self.dst} src={self.src}")
        if not S16[0] <= self.off <= S16[1]:
            raise ValueError(f"offset out of the signed 16-bit range: {self.off}")
        if not S32[0] <= self.imm <= S32[1]:
            raise ValueError(f"immediate out of the signed 32-bit range: {self.imm}")

    @property
    def is_ld_imm64(self) -> bool:
        """The first slot of a two-slot 64-bit immediate load."""
        return self.code == BPF_LD | BPF_IMM | BPF_DW


def ld_imm64(dst: int, value: int, src: int = 0) -> tuple[Insn, Insn]:
    """``BPF_LD_IMM64_RAW``: ``dst = value`` in two slots (the upper half in the second)."""
    value &= (1 << 64) - 1
    lo, hi = value & 0xFFFFFFFF, value >> 32
    return (Insn(BPF_LD | BPF_IMM | BPF_DW, dst, src, 0, s32(lo)), Insn(0, 0, 0, 0, s32(hi)))


def ld_map_fd(dst: int, fd: int) -> tuple[Insn, Insn]:
    """``BPF_LD_MAP_FD``: ``dst = map`` for the map open as ``fd``."""
    return ld_imm64(dst, fd, BPF_PSEUDO_MAP_FD)


def s32(v: int) -> int:
    """A 32-bit pattern as the signed ``imm`` that holds it."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _regs(i: Insn) -> int:
    return (i.src << 4 | i.dst) if _LITTLE else (i.dst << 4 | i.src)


def encode(insns: Iterable[Insn]) -> bytes:
    """The ``struct bpf_insn`` array ``BPF_PROG_LOAD`` takes."""
    return b"".join(_STRUCT.pack(i.code, _regs(i), i.off, i.imm) for i in insns)


def decode(raw: bytes) -> tuple[Insn, ...]:
    """Instructions from a ``struct bpf_insn`` array (e.g. ``xlated_prog_insns``)."""
    if len(raw) % INSN_SIZE:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {INSN_SIZE}-byte instructions")
    out = []
    for code, regs, off, imm in _STRUCT.iter_unpack(raw):
        dst, src = (regs & 0xF, regs >> 4) if _LITTLE else (regs >> 4, regs & 0xF)
        out.append(Insn(code, dst, src, off, imm))
    return tuple(out)


# Instruction builders, named after the macros of <linux/filter.h> (BPF_MOV64_IMM & co.).


def mov64(dst: int, src: int | None = None, imm: int = 0) -> Insn:
    """``BPF_MOV64_REG`` / ``BPF_MOV64_IMM``: ``dst = src`` or ``dst = imm`` (sign-extended)."""
    return alu64(BPF_MOV, dst, src, imm)


def mov32(dst: int, imm: int) -> Insn:
    """``BPF_MOV32_IMM``: ``wdst = imm``, the upper half cleared."""
    return Insn(BPF_ALU | BPF_MOV | BPF_K, dst, 0, 0, imm)


def alu64(op: int, dst: int, src: int | None = None, imm: int = 0) -> Insn:
    """``BPF_ALU64_REG`` / ``BPF_ALU64_IMM``."""
    return Insn(BPF_ALU64 | op | (BPF_K if src is None else BPF_X), dst, src or 0, 0, imm)


def ldx(size: int, dst: int, src: int, off: int) -> Insn:
    """``BPF_LDX_MEM``: ``dst = *(size *)(src + off)``."""
    return Insn(BPF_LDX | size | BPF_MEM, dst, src, off, 0)


def st(size: int, dst: int, off: int, imm: int) -> Insn:
    """``BPF_ST_MEM``: ``*(size *)(dst + off) = imm``."""
    return Insn(BPF_ST | size | BPF_MEM, dst, 0, off, imm)


def stx(size: int, dst: int, off: int, src: int) -> Insn:
    """``BPF_STX_MEM``: ``*(size *)(dst + off) = src``."""
    return Insn(BPF_STX | size | BPF_MEM, dst, src, off, 0)


def atomic(size: int, dst: int, off: int, src: int, op: int) -> Insn:
    """``BPF_ATOMIC_OP``: ``op`` (``BPF_ADD``: ``lock *(size *)(dst + off) += src``;
    ``BPF_CMPXCHG``) on memory, atomically across CPUs."""
    return Insn(BPF_STX | size | BPF_ATOMIC, dst, src, off, op)


def call(helper: Helper) -> Insn:
    """``BPF_EMIT_CALL``: call a helper; R1-R5 are its arguments, R0 its result."""
    return Insn(BPF_JMP | BPF_CALL, 0, 0, 0, int(helper))


def exit_() -> Insn:
    """``BPF_EXIT_INSN``: return R0."""
    return Insn(BPF_JMP | BPF_EXIT)
