"""A readable listing of an eBPF program, in the notation of the kernel's verifier log and
``bpftool prog dump xlated`` (``r1 = *(u32 *)(r10 -24)``, ``if r7 == 0x4 goto pc+3``), with
the assembler's labels shown at their places and after the jumps that reach them."""

from __future__ import annotations

from typing import Mapping, Sequence

from sockgate.ebpf.insn import (
    BPF_ALU,
    BPF_ALU64,
    BPF_ATOMIC,
    BPF_CALL,
    BPF_CMPXCHG,
    BPF_END,
    BPF_EXIT,
    BPF_JA,
    BPF_JMP,
    BPF_JMP32,
    BPF_LD,
    BPF_LDX,
    BPF_NEG,
    BPF_PSEUDO_MAP_FD,
    BPF_ST,
    BPF_STX,
    BPF_X,
    Helper,
    Insn,
    bpf_class,
    bpf_mode,
    bpf_op,
    bpf_size,
    bpf_src,
)

ALU_OPS = {0x00: "+=", 0x10: "-=", 0x20: "*=", 0x30: "/=", 0x40: "|=", 0x50: "&=", 0x60: "<<=",
           0x70: ">>=", 0x90: "%=", 0xA0: "^=", 0xB0: "=", 0xC0: "s>>="}
JMP_OPS = {0x10: "==", 0x20: ">", 0x30: ">=", 0x40: "&", 0x50: "!=", 0x60: "s>", 0x70: "s>=",
           0xA0: "<", 0xB0: "<=", 0xC0: "s<", 0xD0: "s<="}
SIZES = {0x00: "u32", 0x08: "u16", 0x10: "u8", 0x18: "u64"}
HELPERS = {int(h): h.name for h in Helper}


def listing(insns: Sequence[Insn], labels: Mapping[str, int] | None = None) -> str:
    """One line per slot (the second slot of a 64-bit load is not shown)."""
    at: dict[int, list[str]] = {}
    for name, pos in (labels or {}).items():
        at.setdefault(pos, []).append(name)
    out: list[str] = []
    skip = False
    for pc, i in enumerate(insns):
        if skip:
            skip = False
            continue
        out += [f"{name}:" for name in sorted(at.get(pc, ()))]
        text = _insn(pc, i, insns)
        if bpf_class(i.code) in (BPF_JMP, BPF_JMP32) and bpf_op(i.code) not in (BPF_CALL, BPF_EXIT):
            target = pc + 1 + (i.imm if bpf_class(i.code) == BPF_JMP32 and bpf_op(i.code) == BPF_JA else i.off)
            text += "".join(f" <{n}>" for n in sorted(at.get(target, ())))
        out.append(f"{pc:5d}: {text}")
        skip = i.is_ld_imm64
    return "\n".join(out)


def _insn(pc: int, i: Insn, insns: Sequence[Insn]) -> str:
    cls = bpf_class(i.code)
    if i.is_ld_imm64:
        hi = insns[pc + 1].imm & 0xFFFFFFFF if pc + 1 < len(insns) else 0
        if i.src == BPF_PSEUDO_MAP_FD:
            return f"r{i.dst} = map[fd {i.imm}] ll"
        return f"r{i.dst} = {hi << 32 | i.imm & 0xFFFFFFFF:#x} ll"
    if cls == BPF_LDX:
        return f"r{i.dst} = *({SIZES[bpf_size(i.code)]} *)(r{i.src} {i.off:+d})"
    if cls == BPF_ST:
        return f"*({SIZES[bpf_size(i.code)]} *)(r{i.dst} {i.off:+d}) = {i.imm}"
    if cls == BPF_STX and bpf_mode(i.code) == BPF_ATOMIC:
        return _atomic(i)
    if cls == BPF_STX:
        return f"*({SIZES[bpf_size(i.code)]} *)(r{i.dst} {i.off:+d}) = r{i.src}"
    if cls in (BPF_ALU, BPF_ALU64):
        return _alu(i, "r" if cls == BPF_ALU64 else "w")
    if cls in (BPF_JMP, BPF_JMP32):
        return _jmp(i, "r" if cls == BPF_JMP else "w")
    if cls == BPF_LD:
        return f"(legacy load) code={i.code:#04x} imm={i.imm}"
    return f"(unknown) code={i.code:#04x}"


def _atomic(i: Insn) -> str:
    size = SIZES[bpf_size(i.code)]
    if i.imm == BPF_CMPXCHG:
        return f"r0 = cmpxchg_{size[1:]}(r{i.dst} {i.off:+d}, r0, r{i.src})"
    op = ALU_OPS.get(i.imm & 0xF0, f"op{i.imm:#x}")
    return f"lock *({size} *)(r{i.dst} {i.off:+d}) {op} r{i.src}"


def _alu(i: Insn, r: str) -> str:
    op = bpf_op(i.code)
    if op == BPF_NEG:
        return f"{r}{i.dst} = -{r}{i.dst}"
    if op == BPF_END:
        return f"r{i.dst} = {'be' if bpf_src(i.code) else 'le'}{i.imm} r{i.dst}"
    rhs = f"{r}{i.src}" if bpf_src(i.code) == BPF_X else str(i.imm)
    return f"{r}{i.dst} {ALU_OPS.get(op, f'op{op:#x}')} {rhs}"


def _jmp(i: Insn, r: str) -> str:
    op = bpf_op(i.code)
    if op == BPF_EXIT:
        return "exit"
    if op == BPF_CALL:
        return f"call bpf_{HELPERS.get(i.imm, 'unknown')}#{i.imm}"
    if op == BPF_JA:
        return f"gotol pc{i.imm:+d}" if r == "w" else f"goto pc{i.off:+d}"
    rhs = f"{r}{i.src}" if bpf_src(i.code) == BPF_X else f"{i.imm:#x}"
    return f"if {r}{i.dst} {JMP_OPS.get(op, f'op{op:#x}')} {rhs} goto pc{i.off:+d}"
