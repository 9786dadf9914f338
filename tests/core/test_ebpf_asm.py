"""The assembler: labels resolve to 16-bit offsets, and jumps too far for 16 bits become
``gotol`` forms that still reach their target."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.ebpf.asm import Assembler
from sockgate.ebpf.disasm import listing
from sockgate.ebpf.insn import (
    BPF_JA,
    BPF_JEQ,
    BPF_JMP,
    BPF_JMP32,
    BPF_JNE,
    BPF_JSET,
    BPF_REG_0,
    BPF_REG_1,
    Insn,
    exit_,
    ld_imm64,
    mov64,
)

NOP = mov64(BPF_REG_1, BPF_REG_1)


def target_of(insns: tuple[Insn, ...], pc: int) -> int:
    i = insns[pc]
    return pc + 1 + (i.imm if i.code == BPF_JMP32 | BPF_JA else i.off)


def test_forward_and_backward_labels() -> None:
    a = Assembler()
    a.label("top")
    a.jump(BPF_JEQ, BPF_REG_0, "out", imm=4)
    a.emit(*ld_imm64(BPF_REG_1, 1 << 40))  # two slots
    a.ja("top")
    a.label("out")
    a.emit(exit_())
    out = a.assemble()
    assert out.labels == {"top": 0, "out": 4}
    assert out.insns[0].off == 3 and out.insns[3].off == -4
    assert listing(out.insns, out.labels).splitlines() == [
        "top:",
        "    0: if r0 == 0x4 goto pc+3 <out>",
        "    1: r1 = 0x10000000000 ll",
        "    3: goto pc-4 <top>",
        "out:",
        "    4: exit",
    ]


def test_a_long_conditional_jump_inverts_over_a_gotol() -> None:
    a = Assembler()
    a.jump(BPF_JEQ, BPF_REG_0, "far", imm=7)
    a.emit(*[NOP] * 40000)
    a.label("far")
    a.emit(exit_())
    out = a.assemble()
    first, second = out.insns[:2]
    assert (first.code, first.imm, first.off) == (BPF_JMP | BPF_JNE, 7, 1)
    assert second.code == BPF_JMP32 | BPF_JA and target_of(out.insns, 1) == out.labels["far"] == 40002


def test_jset_has_no_inverse_so_it_jumps_around() -> None:
    a = Assembler()
    a.jump(BPF_JSET, BPF_REG_0, "far", imm=1)
    a.emit(*[NOP] * 40000)
    a.label("far")
    a.emit(exit_())
    ins = a.assemble().insns
    assert ins[0].off == 1 and ins[1].code == BPF_JMP | BPF_JA and ins[1].off == 1
    assert target_of(ins, 2) == 40003


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ja", "jeq"]), st.integers(0, 5)), min_size=1, max_size=6),
       st.lists(st.sampled_from([10, 20000, 33000]), min_size=6, max_size=6))
def test_every_jump_lands_on_its_label(jumps: list[tuple[str, int]], gaps: list[int]) -> None:
    """Jumps between blocks of varied size (some beyond 16 bits) land where their label is;
    the condition of a long conditional jump still decides whether it is taken."""
    a = Assembler()
    for b in range(6):
        a.label(f"b{b}")
        for kind, to in jumps:
            if kind == "ja":
                a.ja(f"b{to}")
            else:
                a.jump(BPF_JEQ, BPF_REG_0, f"b{to}", imm=1)
        a.emit(*[NOP] * gaps[b])
    out = a.assemble()
    # follow every jump site by simulating r0 == 1 (every conditional taken)
    assert _reach(out.insns, out.labels) is None


def _reach(insns: tuple[Insn, ...], labels: dict[str, int]) -> str | None:
    """Every jump, short or long, taken with r0 == 1, arrives at a label's place."""
    places = set(labels.values())
    for pc, i in enumerate(insns):
        if i.code == BPF_JMP | BPF_JEQ:
            dest = _follow(insns, pc + 1 + i.off)
        elif i.code == BPF_JMP | BPF_JNE:  # the inverted form: not taken when r0 == 1
            dest = _follow(insns, pc + 1)
        elif i.code == BPF_JMP | BPF_JA:
            dest = _follow(insns, pc + 1 + i.off)
        elif i.code == BPF_JMP32 | BPF_JA and insns[pc - 1].code != BPF_JMP | BPF_JNE:
            dest = pc + 1 + i.imm
        else:
            continue
        if dest not in places:
            return f"jump at {pc} lands at {dest}"
    return None


def _follow(insns: tuple[Insn, ...], pc: int) -> int:
    i = insns[pc] if pc < len(insns) else None
    if i is not None and i.code == BPF_JMP32 | BPF_JA:
        return pc + 1 + i.imm
    return pc


def test_undefined_and_duplicate_labels_are_errors() -> None:
    a = Assembler()
    a.ja("nowhere")
    with pytest.raises(ValueError, match="undefined label 'nowhere'"):
        a.assemble()
    a.label("x")
    with pytest.raises(ValueError, match="defined twice"):
        a.label("x")


def test_jumps_go_through_jump_and_ja() -> None:
    with pytest.raises(ValueError, match="use jump"):
        Assembler().emit(Insn(BPF_JMP | BPF_JEQ, 0, 0, 1, 0))
