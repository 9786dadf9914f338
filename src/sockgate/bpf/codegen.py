"""Interval tables → one flat classic BPF program for IPv4, IPv6 and dual-stack sockets.

Program layout (emitted backwards by ``asm.Assembler``, so every jump goes forward)::

    marker                 ja over the data words (marker.py)
    ldb [net+0]            version nibble: the network header, whatever the socket family
    rsh #4
    jeq #4, v4, +0
    jeq #6, v6, other      other: the verdict of a peer with no address (ranges.py)
    v6:  ld [net+8] / st M[0] ... ld [net+20] / st M[3]      source address, loaded once
         ::ffff:0:0/96 ?  ld M[3], ja v4search               (only when it changes a verdict)
         search over IPv6 boundaries
    v4:  ld [net+12]                                         source address, loaded once
    v4search: search over IPv4 boundaries
    ret #0 / ret #-1       shared verdicts (copied every ~255 instructions by the assembler)

A search is a balanced binary tree over the boundaries between intervals: a packet makes
O(log n) comparisons. An IPv4 node is one ``jge #b`` whose false branch is the next
instruction; a leaf is no instruction at all, just a jump to the shared ``ret`` of its action.

Two costs shape the code besides the 4,096-instruction limit. Each load relative to
``SKF_NET_OFF`` expands into a helper call when the kernel converts the program to eBPF, and
the converted program is charged against ``net.core.optmem_max``: so every address word is
loaded once and compared from A or M[]. And the conversion needs an extra instruction for an
immediate with its top bit set (eBPF immediates are signed): so when the IPv4 table has
boundaries above 2**31, the root splits at 2**31 and the upper half subtracts 2**31 once,
keeping every other immediate small.

An IPv6 node compares 128-bit values word by word (``jgt``/``jeq`` on the leading words,
``jge`` on the last non-zero word of the boundary), skipping the words every address in the
node's range shares, and the load of a word already in A. CIDR boundaries end in zero words,
so a /64 boundary costs at most two words.
"""

from __future__ import annotations

from dataclasses import dataclass

from sockgate.bpf.asm import Assembler
from sockgate.bpf.insn import (
    BPF_ABS,
    BPF_ALU,
    BPF_B,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_MEM,
    BPF_RSH,
    BPF_ST,
    BPF_SUB,
    BPF_W,
    SKF_NET_OFF,
    U32,
    Insn,
)
from sockgate.bpf.ranges import Interval, Table, Tables
from sockgate.policy.ir import Action

RET_K = {Action.DENY: 0, Action.ALLOW: U32}
HALF = 1 << 31
MAPPED = (0, 0, 0xFFFF)  # ::ffff:0:0/96, the first three words

JGE = BPF_JMP | BPF_JGE | BPF_K
JGT = BPF_JMP | BPF_JGT | BPF_K
JEQ = BPF_JMP | BPF_JEQ | BPF_K


@dataclass(frozen=True)
class _Seg:
    lo: int
    action: Action


def generate(tables: Tables) -> tuple[Insn, ...]:
    """The program (without its marker) deciding like ``tables``."""
    asm = Assembler()
    acts = {iv.action for t in (tables.v4, tables.v6) for iv in t.intervals} | {tables.other}
    for a in (Action.DENY, Action.ALLOW):
        if a in acts:
            asm.ret(RET_K[a], a.value)
    v4entry, v4search = _v4(asm, tables.v4)
    v6entry = _v6(asm, tables.v6, tables.v4, v4search)
    asm.forget_copies()
    asm.jump(JEQ, 6, v6entry, tables.other.value)
    is6 = asm.label(asm.fresh("is6_"))
    asm.jump(JEQ, 4, v4entry, is6)
    asm.emit(Insn(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4))
    asm.emit(Insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, SKF_NET_OFF))
    return asm.program()


def _segs(intervals: tuple[Interval, ...]) -> list[_Seg]:
    return [_Seg(iv.lo, iv.action) for iv in intervals]


# ----------------------------------------------------------------------------------- IPv4


def _v4(asm: Assembler, table: Table) -> tuple[str, str]:
    """Emit the IPv4 block; returns (entry, search) labels (search expects the address in A)."""
    segs = _segs(table.intervals)
    if len(segs) == 1:
        return segs[0].action.value, segs[0].action.value
    upper = [s for s in segs if s.lo > HALF]
    if len(upper) >= 2 and segs[1].lo < HALF:
        root = _v4_split(asm, segs)
    else:
        root = _tree4(asm, segs, 0, len(segs) - 1, 0)
    asm.emit(Insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, SKF_NET_OFF + 12))
    return asm.label(asm.fresh("v4_")), root


def _v4_split(asm: Assembler, segs: list[_Seg]) -> str:
    lower = [s for s in segs if s.lo < HALF]
    upper = [s for s in segs if s.lo >= HALF]
    if not upper or upper[0].lo != HALF:
        upper.insert(0, _Seg(HALF, lower[-1].action))
    hi_root = _tree4(asm, upper, 0, len(upper) - 1, HALF)
    asm.emit(Insn(BPF_ALU | BPF_SUB | BPF_K, 0, 0, HALF))
    hi_entry = asm.label(asm.fresh("hi_"))
    lo_root = _tree4(asm, lower, 0, len(lower) - 1, 0)
    asm.jump(JGE, HALF, hi_entry, lo_root)
    return asm.label(asm.fresh("n"))


def _tree4(asm: Assembler, segs: list[_Seg], i: int, j: int, bias: int) -> str:
    if i == j:
        return segs[i].action.value
    mid = (i + j + 1) // 2
    right = _tree4(asm, segs, mid, j, bias)
    left = _tree4(asm, segs, i, mid - 1, bias)
    asm.jump(JGE, segs[mid].lo - bias, right, left)
    return asm.label(asm.fresh("n"))


# ----------------------------------------------------------------------------------- IPv6


def _words(v: int) -> tuple[int, int, int, int]:
    return ((v >> 96) & U32, (v >> 64) & U32, (v >> 32) & U32, v & U32)


def _needs_mapped_check(v6: Table, v4: Table) -> bool:
    """Does a genuine IPv6 packet from ::ffff:a.b.c.d get another verdict from the IPv6 table
    than the IPv4 address gets? (The kernel hands such packets to the filter.)"""
    lo, hi = 0xFFFF << 32, 0x1_0000_0000_0000
    in_mapped = {iv.action for iv in v6.intervals if iv.lo < hi and iv.hi > lo}
    return len(v4.intervals) > 1 or in_mapped != {v4.intervals[0].action}


def _v6(asm: Assembler, v6: Table, v4: Table, v4search: str) -> str:
    segs = _segs(v6.intervals)
    mapped = _needs_mapped_check(v6, v4)
    if len(segs) == 1 and not mapped:
        return segs[0].action.value
    root = _tree6(asm, segs, 0, len(segs) - 1, 0, 1 << 128, None)
    if mapped:
        root = _mapped_check(asm, root, v4search, len(v4.intervals) > 1)
    for w in (3, 2, 1, 0):
        asm.emit(Insn(BPF_ST, 0, 0, w))
        asm.emit(Insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, SKF_NET_OFF + 8 + 4 * w))
    return asm.label(asm.fresh("v6_"))


def _mapped_check(asm: Assembler, v6root: str, v4search: str, load_v4: bool) -> str:
    target = v4search
    if load_v4:
        asm.ja(v4search)
        asm.emit(Insn(BPF_LD | BPF_MEM, 0, 0, 3))
        target = asm.label(asm.fresh("mapped_"))
    for w in (2, 1, 0):
        asm.jump(JEQ, MAPPED[w], target, v6root)
        asm.emit(Insn(BPF_LD | BPF_MEM, 0, 0, w))
        target = asm.label(asm.fresh("m"))
    return target


def _tree6(asm: Assembler, segs: list[_Seg], i: int, j: int, lo: int, hi: int, in_a: int | None) -> str:
    """Search segs[i..j]; every address reaching here is in [lo, hi); A holds word ``in_a``."""
    if i == j:
        return segs[i].action.value
    mid = (i + j + 1) // 2
    b = segs[mid].lo
    wl, wh, wb = _words(lo), _words(hi - 1), _words(b)
    first = next(w for w in range(4) if wl[w] != wh[w])
    last = max(w for w in range(4) if wb[w] != 0 or w == first)
    after = first if first == last else None
    right = _tree6(asm, segs, mid, j, b, hi, after)
    left = _tree6(asm, segs, i, mid - 1, lo, b, after)
    asm.jump(JGE, wb[last], right, left)
    _load(asm, last, in_a if last == first else None)
    nxt = asm.label(asm.fresh("w"))
    for w in range(last - 1, first - 1, -1):
        asm.jump(JEQ, wb[w], nxt, left)
        asm.jump(JGT, wb[w], right, asm.label(asm.fresh("eq")))
        _load(asm, w, in_a if w == first else None)
        nxt = asm.label(asm.fresh("w"))
    return nxt


def _load(asm: Assembler, word: int, in_a: int | None) -> None:
    if in_a != word:
        asm.emit(Insn(BPF_LD | BPF_MEM, 0, 0, word))
