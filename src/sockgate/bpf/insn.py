"""Classic BPF instructions: the kernel ABI as tables, and encoding as a pure function.

An ``Insn`` is one ``struct sock_filter`` (<linux/filter.h>): a 16-bit opcode, two 8-bit
conditional jump offsets and a 32-bit operand. Opcode fields carry the names of
<linux/bpf_common.h> and <linux/filter.h> so a listing can be checked against the headers.
``encode``/``decode`` convert to and from the byte array ``SO_ATTACH_FILTER`` takes and
``SO_GET_FILTER`` returns (native byte order, ``=HBBI``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

# <linux/bpf_common.h>: instruction classes
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_RET = 0x06
BPF_MISC = 0x07

# ld/ldx fields: size
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
# ld/ldx fields: mode
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MEM = 0x60
BPF_LEN = 0x80
BPF_MSH = 0xA0

# alu/jmp fields: operation
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_MUL = 0x20
BPF_DIV = 0x30
BPF_OR = 0x40
BPF_AND = 0x50
BPF_LSH = 0x60
BPF_RSH = 0x70
BPF_NEG = 0x80
BPF_MOD = 0x90
BPF_XOR = 0xA0

BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40

# source operand
BPF_K = 0x00
BPF_X = 0x08

# <linux/filter.h>: ret value source, misc operations
BPF_A = 0x10
BPF_TAX = 0x00
BPF_TXA = 0x80

BPF_MEMWORDS = 16  # scratch memory M[0..15]
BPF_MAXINSNS = 4096  # <linux/bpf_common.h>

# <linux/filter.h>: special load offsets. Negative offsets address the network/link-layer
# headers or ancillary data instead of skb->data (which is the transport header for TCP and
# UDP socket filters).
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8
SKF_AD_NLATTR = 12
SKF_AD_NLATTR_NEST = 16
SKF_AD_MARK = 20
SKF_AD_QUEUE = 24
SKF_AD_HATYPE = 28
SKF_AD_RXHASH = 32
SKF_AD_CPU = 36
SKF_AD_ALU_XOR_X = 40
SKF_AD_VLAN_TAG = 44
SKF_AD_VLAN_TAG_PRESENT = 48
SKF_AD_PAY_OFFSET = 52
SKF_AD_RANDOM = 56
SKF_AD_VLAN_TPID = 60
SKF_AD_MAX = 64
SKF_NET_OFF = -0x100000
SKF_LL_OFF = -0x200000

_STRUCT = struct.Struct("=HBBI")  # struct sock_filter { __u16 code; __u8 jt, jf; __u32 k; }
INSN_SIZE = _STRUCT.size

U32 = 0xFFFFFFFF


def bpf_class(code: int) -> int:
    return code & 0x07


def bpf_size(code: int) -> int:
    return code & 0x18


def bpf_mode(code: int) -> int:
    return code & 0xE0


def bpf_op(code: int) -> int:
    return code & 0xF0


def bpf_src(code: int) -> int:
    return code & 0x08


def bpf_rval(code: int) -> int:
    return code & 0x18


def bpf_miscop(code: int) -> int:
    return code & 0xF8


@dataclass(frozen=True)
class Insn:
    """One ``struct sock_filter``. ``k`` is kept unsigned (0..2**32-1)."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFFFF:
            raise ValueError(f"opcode out of range: {self.code:#x}")
        if not (0 <= self.jt <= 255 and 0 <= self.jf <= 255):
            raise ValueError(f"jump offset out of range: jt={self.jt} jf={self.jf}")
        object.__setattr__(self, "k", self.k & U32)

    @property
    def is_jump(self) -> bool:
        return bpf_class(self.code) == BPF_JMP

    @property
    def is_cond_jump(self) -> bool:
        return self.is_jump and bpf_op(self.code) != BPF_JA

    @property
    def is_ret(self) -> bool:
        return bpf_class(self.code) == BPF_RET

    @property
    def signed_k(self) -> int:
        return self.k - (1 << 32) if self.k & 0x80000000 else self.k

    def targets(self, pc: int) -> tuple[int, ...]:
        """The indices this instruction, at index ``pc``, may jump to (none unless a jump)."""
        if not self.is_jump:
            return ()
        if not self.is_cond_jump:
            return (pc + 1 + self.k,)
        return (pc + 1 + self.jt, pc + 1 + self.jf)


def stmt(code: int, k: int = 0) -> Insn:
    """``BPF_STMT(code, k)``."""
    return Insn(code, 0, 0, k)


def jump(code: int, k: int, jt: int, jf: int) -> Insn:
    """``BPF_JUMP(code, k, jt, jf)``."""
    return Insn(code, jt, jf, k)


def encode(insns: Iterable[Insn]) -> bytes:
    """The ``struct sock_filter`` array for ``insns``."""
    return b"".join(_STRUCT.pack(i.code, i.jt, i.jf, i.k) for i in insns)


def decode(raw: bytes) -> tuple[Insn, ...]:
    """Instructions from a ``struct sock_filter`` array. Raises ``ValueError`` when ``raw`` is
    not a whole number of instructions."""
    if len(raw) % INSN_SIZE:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {INSN_SIZE}-byte instructions")
    return tuple(Insn(c, jt, jf, k) for c, jt, jf, k in _STRUCT.iter_unpack(raw))
