"""Interval tables → one flat classic BPF program for IPv4, IPv6 and dual-stack sockets.

Program layout (emitted backwards by ``asm.Assembler``, so every jump goes forward)::

    marker                 ja over the data words (marker.py)
    ldb [net+0]            version nibble: the network header, whatever the socket family
    rsh #4
    jeq #4, v4, +0
    jeq #6, v6, other      other: the verdict of a peer with no address (ranges.py)
    v6:  ld [net+8] / st M[0] ... ld [net+20] / st M[3]      source address, loaded once
         ld M[0]; search over the first word, then the next words where needed
    v4:  ld [net+12]                                         source address, loaded once
         search over IPv4 boundaries
    ret #0 / ret #-1       shared verdicts (copied every ~255 instructions by the assembler)

IPv4-mapped sources in an IPv6 header need no code of their own: ranges.py denies
``::ffff:0:0/96`` in the IPv6 table, so the IPv6 search drops them like any denied range.

A search is a balanced binary tree over the boundaries between intervals: a packet makes
O(log n) comparisons. A node is one ``jge #b`` whose false branch is the next instruction; a
leaf is no instruction at all, just a jump to the shared ``ret`` of its action.

IPv6 is searched a 32-bit word at a time (a trie of balanced trees): a value of word w inside
which some boundary falls leads to a search of word w+1 (``ld M[w+1]``); other values lead
to a verdict. A level of the form "one value, the same verdict on either side" (a /128 host,
the next word of a /64) is a single ``jeq``. CIDR lists make exactly these shapes.

Two costs shape the code besides the 4,096-instruction limit. Each load relative to
``SKF_NET_OFF`` expands into a helper call when the kernel converts the program to eBPF, and
the converted program is charged against ``net.core.optmem_max``: so every address word is
loaded once and compared from A or M[]. And the conversion needs an extra instruction for an
immediate with its top bit set (eBPF immediates are signed): so when a search has many
values above 2**31, its root splits at 2**31 and the upper half subtracts 2**31 once,
keeping every other immediate small.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Sequence, Union

from sockgate.bpf.asm import Assembler
from sockgate.bpf.insn import (
    BPF_ABS,
    BPF_ALU,
    BPF_B,
    BPF_JEQ,
    BPF_JGE,
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
from sockgate.resolve.ranges import Interval, Table, Tables
from sockgate.policy.ir import Action

RET_K = {Action.DENY: 0, Action.ALLOW: U32}
HALF = 1 << 31
SPLIT_MIN = 16  # upper-half boundaries worth a split (saves one eBPF instruction each)

JGE = BPF_JMP | BPF_JGE | BPF_K
JEQ = BPF_JMP | BPF_JEQ | BPF_K


@dataclass(frozen=True)
class _Seg:
    lo: int
    action: Action


@dataclass(frozen=True)
class _Sub:
    """One value of a word whose addresses are not all decided alike: search the next word.
    ``segs`` cover [base, base + 2**bits), the first starting at ``base``."""

    word: int
    segs: tuple[_Seg, ...]
    base: int
    bits: int


Leaf = Union[Action, _Sub]


@dataclass(frozen=True)
class _WSeg:
    """Word values ``lo`` up to the next _WSeg's ``lo`` lead to ``leaf``."""

    lo: int
    leaf: Leaf


def generate(tables: Tables) -> tuple[Insn, ...]:
    """The program (without its marker) deciding like ``tables``."""
    asm = Assembler()
    acts = {iv.action for t in (tables.v4, tables.v6) for iv in t.intervals} | {tables.other}
    if len(acts) == 1:  # one verdict for every packet: no need to look at it
        asm.ret(RET_K[tables.other], tables.other.value)
        return asm.program()
    for a in (Action.DENY, Action.ALLOW):
        if a in acts:
            asm.ret(RET_K[a], a.value)
    v4entry = _v4(asm, tables.v4)
    v6entry = _v6(asm, tables.v6)
    asm.forget_copies()
    not4 = tables.other.value
    if v6entry != not4:  # (a /96 of IPv6 is always denied, so often all of it is, like `other`)
        asm.jump(JEQ, 6, v6entry, not4)
        not4 = asm.label(asm.fresh("is6_"))
    asm.jump(JEQ, 4, v4entry, not4)
    asm.emit(Insn(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4))
    asm.emit(Insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, SKF_NET_OFF))
    return asm.program()


def _segs(intervals: Sequence[Interval]) -> list[_Seg]:
    return [_Seg(iv.lo, iv.action) for iv in intervals]


def _v4(asm: Assembler, table: Table) -> str:
    """Emit the IPv4 block; returns its entry label."""
    segs = _segs(table.intervals)
    if len(segs) == 1:
        return segs[0].action.value
    _search(asm, _word_level(segs, 0, 0, 0))
    asm.emit(Insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, SKF_NET_OFF + 12))
    return asm.label(asm.fresh("v4_"))


def _v6(asm: Assembler, table: Table) -> str:
    segs = _segs(table.intervals)
    if len(segs) == 1:
        return segs[0].action.value
    _leaf(asm, _Sub(0, tuple(segs), 0, 128))
    for w in (3, 2, 1, 0):
        asm.emit(Insn(BPF_ST, 0, 0, w))
        asm.emit(Insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, SKF_NET_OFF + 8 + 4 * w))
    return asm.label(asm.fresh("v6_"))


# ------------------------------------------------------------------- word-level search


def _word_level(segs: Sequence[_Seg], base: int, shift: int, word: int) -> list[_WSeg]:
    """The segments of word ``word`` (bits ``shift``.. ``shift + 31`` above ``base``) for
    ``segs``, which cover [base, base + 2**(shift + 32)). A word value inside which some
    boundary falls becomes a ``_Sub`` searched on the next word; adjacent values with the same
    action merge."""
    unit = 1 << shift
    starts = [sg.lo for sg in segs]
    points, mixed = {0}, set()
    for b in starts[1:]:
        v, rest = divmod(b - base, unit)
        points.add(v)
        if rest:
            mixed.add(v)
            if v + 1 <= U32:
                points.add(v + 1)
    out: list[_WSeg] = []
    for v in sorted(points):
        lo = base + v * unit
        leaf: Leaf
        if v in mixed:
            leaf = _Sub(word + 1, _clip(segs, starts, lo, lo + unit), lo, shift)
        else:
            leaf = segs[bisect_right(starts, lo) - 1].action
        if not (out and isinstance(leaf, Action) and out[-1].leaf is leaf):
            out.append(_WSeg(v, leaf))
    return out


def _clip(segs: Sequence[_Seg], starts: list[int], lo: int, hi: int) -> tuple[_Seg, ...]:
    i = bisect_right(starts, lo) - 1
    j = bisect_left(starts, hi, lo=i + 1)
    return (_Seg(lo, segs[i].action), *segs[i + 1 : j])


def _leaf(asm: Assembler, leaf: Leaf) -> str:
    """The label deciding ``leaf``: a shared ``ret``, or a search of the next word."""
    if isinstance(leaf, Action):
        return leaf.value
    ws = _word_level(leaf.segs, leaf.base, leaf.bits - 32, leaf.word)
    if len(ws) == 1:  # this word does not matter here
        return _leaf(asm, ws[0].leaf)
    _search(asm, ws)  # emitted backwards: the load below falls through into it
    asm.emit(Insn(BPF_LD | BPF_MEM, 0, 0, leaf.word))
    return asm.label(asm.fresh("w"))


def _search(asm: Assembler, ws: list[_WSeg]) -> str:
    """Search word segments; A holds the word."""
    if len(ws) == 1:
        return _leaf(asm, ws[0].leaf)
    if len(ws) == 3 and isinstance(ws[0].leaf, Action) and ws[0].leaf is ws[2].leaf and ws[2].lo == ws[1].lo + 1:
        one = _leaf(asm, ws[1].leaf)  # a single value (a host, or one /96's next word)
        asm.jump(JEQ, ws[1].lo, one, ws[0].leaf.value)
        return asm.label(asm.fresh("n"))
    if sum(w.lo > HALF for w in ws) >= SPLIT_MIN and ws[1].lo < HALF:
        return _split(asm, ws)
    return _tree(asm, ws, 0, len(ws) - 1, 0)


def _split(asm: Assembler, ws: list[_WSeg]) -> str:
    lower = [w for w in ws if w.lo < HALF]
    upper = [w for w in ws if w.lo >= HALF]
    if upper[0].lo != HALF:  # the value range straddling 2**31 is one action (never a _Sub)
        upper.insert(0, _WSeg(HALF, lower[-1].leaf))
    _tree(asm, upper, 0, len(upper) - 1, HALF)  # emitted backwards: the SUB below falls through into it
    asm.emit(Insn(BPF_ALU | BPF_SUB | BPF_K, 0, 0, HALF))
    hi_entry = asm.label(asm.fresh("hi_"))
    lo_root = _tree(asm, lower, 0, len(lower) - 1, 0)
    asm.jump(JGE, HALF, hi_entry, lo_root)
    return asm.label(asm.fresh("n"))


def _tree(asm: Assembler, ws: list[_WSeg], i: int, j: int, bias: int) -> str:
    if i == j:
        return _leaf(asm, ws[i].leaf)
    mid = (i + j + 1) // 2
    right = _tree(asm, ws, mid, j, bias)
    left = _tree(asm, ws, i, mid - 1, bias)
    asm.jump(JGE, ws[mid].lo - bias, right, left)
    return asm.label(asm.fresh("n"))
