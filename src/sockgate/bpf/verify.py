"""The kernel's acceptance rules for a classic socket filter, checked before any syscall.

Mirrors ``bpf_check_classic`` and ``check_load_and_stores`` (net/core/filter.c) for the
instructions sockgate emits, so a program that would get EINVAL from ``SO_ATTACH_FILTER`` is
a compiler bug caught in tests (and in ``compile_service``), not an operator's surprise:

* 1..4096 instructions, the last one a ``ret``;
* jumps stay inside the program; ``M[k]`` with k < 16;
* scratch memory is read only after it was stored, on every path. The kernel computes this
  in one linear pass: ``memvalid`` is reset to "all" after a jump and narrowed by the masks
  jumps leave on their targets, but it flows *through* a ``ret`` into the next instruction.
  This pass reproduces that exactly, quirk included.
"""

from __future__ import annotations

from typing import Sequence

from sockgate.bpf.insn import (
    BPF_JA,
    BPF_JMP,
    BPF_LD,
    BPF_LDX,
    BPF_MAXINSNS,
    BPF_MEM,
    BPF_MEMWORDS,
    BPF_RET,
    BPF_ST,
    BPF_STX,
    Insn,
    bpf_class,
    bpf_mode,
    bpf_op,
)

ALL = 0xFFFF


def problems(insns: Sequence[Insn]) -> list[str]:
    """Why the kernel would refuse ``insns`` (empty: it would accept them)."""
    n = len(insns)
    if not 1 <= n <= BPF_MAXINSNS:
        return [f"{n} instructions (the kernel accepts 1..{BPF_MAXINSNS})"]
    out = []
    for pc, i in enumerate(insns):
        cls = bpf_class(i.code)
        if cls == BPF_JMP:
            if bpf_op(i.code) == BPF_JA:
                if i.k >= n - pc - 1:
                    out.append(f"{pc}: ja out of the program")
            elif pc + 1 + max(i.jt, i.jf) >= n:
                out.append(f"{pc}: conditional jump out of the program")
        elif (cls in (BPF_ST, BPF_STX) or (cls in (BPF_LD, BPF_LDX) and bpf_mode(i.code) == BPF_MEM)) \
                and i.k >= BPF_MEMWORDS:
            out.append(f"{pc}: M[{i.k}] out of range")
    if bpf_class(insns[-1].code) != BPF_RET:
        out.append(f"{n - 1}: the last instruction is not a ret")
    return out or _memory(insns)


def _memory(insns: Sequence[Insn]) -> list[str]:
    masks = [ALL] * len(insns)
    valid = 0
    for pc, i in enumerate(insns):
        valid &= masks[pc]
        cls = bpf_class(i.code)
        if cls in (BPF_ST, BPF_STX):
            valid |= 1 << i.k
        elif cls in (BPF_LD, BPF_LDX) and bpf_mode(i.code) == BPF_MEM:
            if not valid & (1 << i.k):
                return [f"{pc}: M[{i.k}] may be read before it is stored"]
        elif cls == BPF_JMP:
            for target in i.targets(pc):
                masks[target] &= valid
            valid = ALL
    return []
