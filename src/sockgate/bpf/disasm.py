"""A bpf_asm-style listing of a classic BPF program.

One instruction per line: its index, a label (``lN:``) where some jump lands, the mnemonic
and operands in bpf_asm(8) syntax (``ld [12]``, ``ldb [x + 4]``, ``jge #0xa000000, l7, l8``,
``ret #0``, ``st M[1]``). Loads relative to the network header are written ``[net + k]``
(``SKF_NET_OFF + k``) and ancillary loads by name, which bpf_asm spells differently but
which a reader needs. The data words of a sockgate marker are annotated.
"""

from __future__ import annotations

from typing import Sequence

from sockgate.bpf import marker as _marker
from sockgate.bpf.insn import (
    BPF_A,
    BPF_ABS,
    BPF_ALU,
    BPF_B,
    BPF_H,
    BPF_IMM,
    BPF_IND,
    BPF_JA,
    BPF_JMP,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_MEM,
    BPF_MISC,
    BPF_MSH,
    BPF_NEG,
    BPF_RET,
    BPF_ST,
    BPF_STX,
    BPF_TAX,
    BPF_X,
    SKF_AD_OFF,
    SKF_LL_OFF,
    SKF_NET_OFF,
    Insn,
    bpf_class,
    bpf_miscop,
    bpf_mode,
    bpf_op,
    bpf_rval,
    bpf_size,
    bpf_src,
)

_ALU = {0x00: "add", 0x10: "sub", 0x20: "mul", 0x30: "div", 0x40: "or", 0x50: "and", 0x60: "lsh",
        0x70: "rsh", 0x80: "neg", 0x90: "mod", 0xA0: "xor"}
_JMP = {0x10: "jeq", 0x20: "jgt", 0x30: "jge", 0x40: "jset"}
_SIZE = {0: "", BPF_H: "h", BPF_B: "b"}
_AD = {0: "proto", 4: "type", 8: "ifidx", 12: "nla", 16: "nlan", 20: "mark", 24: "queue",
       28: "hatype", 32: "rxhash", 36: "cpu", 40: "xor_x", 44: "vlan_tci", 48: "vlan_avail",
       52: "poff", 56: "rand", 60: "vlan_tpid"}


def targets(insns: Sequence[Insn]) -> set[int]:
    """Indices some jump lands on."""
    return {t for pc, i in enumerate(insns) for t in i.targets(pc)}


def listing(insns: Sequence[Insn]) -> str:
    """The program as text, one numbered instruction per line."""
    labels = targets(insns)
    mark = _marker.read(insns)
    data = range(1, 1 + insns[0].k) if mark is not None else range(0)
    width = len(str(max(len(insns) - 1, 0)))
    lines = []
    for pc, i in enumerate(insns):
        label = f"l{pc}:" if pc in labels else ""
        text = insn_text(i, pc)
        if mark is not None and pc == 0:
            text += f"  ; sockgate marker v{mark.version}: service {mark.service!r}, digest {mark.digest}"
            if not mark.intact:
                text += " (modified: the code below is not the code of that digest)"
        elif pc in data:
            text += "  ; marker data"
        lines.append(f"{pc:>{width}}  {label:<{width + 3}}{text}")
    return "\n".join(lines) + "\n"


def insn_text(i: Insn, pc: int = 0) -> str:
    """One instruction in bpf_asm syntax; jump targets as labels ``l<index>`` from ``pc``."""
    cls = bpf_class(i.code)
    if cls in (BPF_LD, BPF_LDX):
        return _load_text(i)
    if cls == BPF_ST:
        return f"st M[{i.k}]"
    if cls == BPF_STX:
        return f"stx M[{i.k}]"
    if cls == BPF_ALU:
        op = _ALU.get(bpf_op(i.code), f"alu{bpf_op(i.code):#x}")
        if bpf_op(i.code) == BPF_NEG:
            return "neg"
        return f"{op} x" if bpf_src(i.code) == BPF_X else f"{op} #{_num(i.k)}"
    if cls == BPF_JMP:
        if bpf_op(i.code) == BPF_JA:
            return f"ja l{pc + 1 + i.k}"
        op = _JMP.get(bpf_op(i.code), f"j{bpf_op(i.code):#x}")
        src = "x" if bpf_src(i.code) == BPF_X else f"#{_num(i.k)}"
        return f"{op} {src}, l{pc + 1 + i.jt}, l{pc + 1 + i.jf}"
    if cls == BPF_RET:
        rv = bpf_rval(i.code)
        return "ret a" if rv == BPF_A else "ret x" if rv == BPF_X else f"ret #{_num(i.k)}"
    if cls == BPF_MISC:
        return "tax" if bpf_miscop(i.code) == BPF_TAX else "txa"
    return f".word {i.code:#06x}, {i.jt}, {i.jf}, {i.k:#x}"  # pragma: no cover - all 8 classes above


def _load_text(i: Insn) -> str:
    name = ("ld" if bpf_class(i.code) == BPF_LD else "ldx") + _SIZE.get(bpf_size(i.code), "?")
    mode = bpf_mode(i.code)
    if mode == BPF_IMM:
        return f"{name} #{_num(i.k)}"
    if mode == BPF_MEM:
        return f"{name} M[{i.k}]"
    if mode == BPF_LEN:
        return f"{name} len"
    if mode == BPF_MSH:
        return f"{name} 4*([{i.k}]&0xf)"
    if mode == BPF_IND:
        return f"{name} [x + {i.signed_k}]"
    if mode == BPF_ABS:
        return f"{name} {_where(i.signed_k)}"
    return f".word {i.code:#06x}, {i.jt}, {i.jf}, {i.k:#x}"


def _where(k: int) -> str:
    if k >= 0:
        return f"[{k}]"
    if k >= SKF_AD_OFF:
        return f"#{_AD.get(k - SKF_AD_OFF, f'ad{k - SKF_AD_OFF}')}"
    if k >= SKF_NET_OFF:
        return f"[net + {k - SKF_NET_OFF}]"
    if k >= SKF_LL_OFF:
        return f"[ll + {k - SKF_LL_OFF}]"
    return f"[{k}]"


def _num(k: int) -> str:
    return str(k) if k < 10 else f"{k:#x}"
