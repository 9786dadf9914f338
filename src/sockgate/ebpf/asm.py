"""An eBPF assembler: instructions and jumps to named labels → a flat, resolved program.

Jumps are written to labels (``jump(BPF_JEQ, r7, "v4", imm=4)``) and resolved once every
label has a place. A jump offset is a signed 16-bit count of instructions after the jump;
a target farther away than that needs a long form, and a long form is longer, which moves
other targets: so resolution relaxes — every jump starts short, any jump whose offset does
not fit becomes long, and the layout is recomputed until nothing changes (jumps only grow, so
this ends). Long forms use ``gotol`` (``BPF_JMP32 | BPF_JA``, a 32-bit ``imm`` offset, Linux
6.4, kernel/bpf/core.c):

* ``ja L``              → ``gotol L``
* ``if r op x goto L``  → ``if r !op x goto +1; gotol L`` (the inverse condition), or for
  ``jset``, which has no inverse, ``if r & x goto +1; ja +1; gotol L``.

A 64-bit immediate load (``ld_imm64``) counts as its two slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sockgate.ebpf.insn import (
    BPF_CALL,
    BPF_EXIT,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JLE,
    BPF_JLT,
    BPF_JMP,
    BPF_JMP32,
    BPF_JNE,
    BPF_JSET,
    BPF_JSGE,
    BPF_JSGT,
    BPF_JSLE,
    BPF_JSLT,
    BPF_K,
    BPF_X,
    S16,
    Insn,
)

INVERSE = {
    BPF_JEQ: BPF_JNE, BPF_JNE: BPF_JEQ, BPF_JGT: BPF_JLE, BPF_JLE: BPF_JGT, BPF_JGE: BPF_JLT,
    BPF_JLT: BPF_JGE, BPF_JSGT: BPF_JSLE, BPF_JSLE: BPF_JSGT, BPF_JSGE: BPF_JSLT, BPF_JSLT: BPF_JSGE,
}


@dataclass(frozen=True)
class _Jump:
    """A jump to ``target``; ``op`` is ``BPF_JA`` or a condition, ``src`` a register or None
    for the immediate ``imm``; ``cls`` is ``BPF_JMP`` (64-bit compare) or ``BPF_JMP32``."""

    op: int
    target: str
    dst: int = 0
    src: int | None = None
    imm: int = 0
    cls: int = BPF_JMP

    def short(self, off: int) -> Insn:
        return Insn(self.cls | self.op | (BPF_K if self.src is None else BPF_X), self.dst, self.src or 0, off, self.imm)

    def slots(self, long: bool) -> int:
        if not long or self.op == BPF_JA:
            return 1
        return 2 if self.op in INVERSE else 3


@dataclass(frozen=True)
class Assembled:
    """A resolved program and where each label landed (for listings)."""

    insns: tuple[Insn, ...]
    labels: dict[str, int]


class Assembler:
    def __init__(self) -> None:
        self._items: list[Insn | _Jump] = []
        self._labels: dict[str, int] = {}  # label -> index into _items
        self._fresh = 0

    def fresh(self, prefix: str) -> str:
        self._fresh += 1
        return f"{prefix}{self._fresh}"

    def label(self, name: str) -> str:
        """Name the place of the next instruction."""
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._items)
        return name

    def emit(self, *insns: Insn) -> None:
        for i in insns:
            if i.code & 0x07 in (BPF_JMP, BPF_JMP32) and i.code & 0xF0 not in (BPF_CALL, BPF_EXIT):
                raise ValueError("use jump()/ja() for jumps, so their offsets are resolved")
            self._items.append(i)

    def ja(self, target: str) -> None:
        self._items.append(_Jump(BPF_JA, target))

    def jump(self, op: int, dst: int, target: str, *, src: int | None = None, imm: int = 0, jmp32: bool = False) -> None:
        """``if dst op (src or imm) goto target``."""
        if op == BPF_JA or op not in INVERSE and op != BPF_JSET:
            raise ValueError(f"not a conditional jump operation: {op:#x}")
        self._items.append(_Jump(op, target, dst, src, imm, BPF_JMP32 if jmp32 else BPF_JMP))

    def assemble(self) -> Assembled:
        missing = sorted({i.target for i in self._items if isinstance(i, _Jump)} - set(self._labels))
        if missing:
            raise ValueError(f"jump to undefined label {missing[0]!r}")
        long: set[int] = set()
        while True:
            pos = self._layout(long)
            grown = {k for k, item in enumerate(self._items) if isinstance(item, _Jump) and k not in long
                     and not S16[0] <= pos[self._labels[item.target]] - pos[k] - 1 <= S16[1]}
            if not grown:
                break
            long |= grown
        out: list[Insn] = []
        for k, item in enumerate(self._items):
            if isinstance(item, Insn):
                out.append(item)
            else:
                out += _resolve(item, pos[self._labels[item.target]] - pos[k] - 1, k in long)
        return Assembled(tuple(out), {name: pos[k] for name, k in self._labels.items()})

    def program(self) -> tuple[Insn, ...]:
        return self.assemble().insns

    def _layout(self, long: set[int]) -> list[int]:
        """The slot of each item (and one past the end)."""
        pos, at = [], 0
        for k, item in enumerate(self._items):
            pos.append(at)
            at += item.slots(k in long) if isinstance(item, _Jump) else 1
        pos.append(at)
        return pos


def _resolve(j: _Jump, off: int, long: bool) -> Sequence[Insn]:
    """The slots of jump ``j`` placed so that its target is ``off`` slots after its first."""
    if not long:
        return (j.short(off),)
    if j.op == BPF_JA:
        return (Insn(BPF_JMP32 | BPF_JA, 0, 0, 0, off),)
    if j.op in INVERSE:
        return (_Jump(INVERSE[j.op], "", j.dst, j.src, j.imm, j.cls).short(1), Insn(BPF_JMP32 | BPF_JA, 0, 0, 0, off - 1))
    return (j.short(1), Insn(BPF_JMP | BPF_JA, 0, 0, 1, 0), Insn(BPF_JMP32 | BPF_JA, 0, 0, 0, off - 2))

