"""The backwards assembler: long conditional jumps are relaxed (ret copies, ja trampolines),
and the kernel-acceptance checker (verify.py) agrees with what the kernel refuses."""

from __future__ import annotations

from sockgate.bpf import (
    BPF_ALU,
    BPF_ADD,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_MEM,
    BPF_RET,
    BPF_ST,
    BPF_W,
    BPF_IMM,
    Insn,
    interp,
    stmt,
)
from sockgate.bpf.asm import Assembler
from sockgate.bpf.verify import problems

JEQ = BPF_JMP | BPF_JEQ | BPF_K
JGE = BPF_JMP | BPF_JGE | BPF_K
PKT = interp.Packet.ipv4("192.0.2.1")


def _padding(asm: Assembler, n: int) -> None:
    for _ in range(n):
        asm.emit(stmt(BPF_ALU | BPF_ADD | BPF_K, 0))


def _prog_with_far_targets(distance: int) -> tuple[Insn, ...]:
    """ld #A; jeq #1 → far block (ret 11) else → ret #22, with ``distance`` filler between."""
    asm = Assembler()
    asm.ret(22, "r22")
    asm.emit(stmt(BPF_RET | BPF_K, 11))
    asm.label("far")
    asm.ret(0, "r0")
    _padding(asm, distance)
    asm.jump(JEQ, 1, "far", "r22")
    asm.emit(stmt(BPF_LD | BPF_W | BPF_IMM, 1))
    return asm.program()


def test_short_jumps_are_direct() -> None:
    prog = _prog_with_far_targets(10)
    assert len(prog) == 1 + 1 + 10 + 1 + 1 + 1
    assert interp.run(prog, PKT) == 11 and problems(prog) == []


def test_far_targets_are_relaxed_through_ja_and_ret_copies() -> None:
    for distance in (253, 254, 255, 256, 300, 1000, 3000):
        prog = _prog_with_far_targets(distance)
        assert problems(prog) == [], distance
        assert all(i.jt <= 255 and i.jf <= 255 for i in prog)
        assert interp.run(prog, PKT) == 11, distance
        flipped = (prog[0].__class__(prog[0].code, 0, 0, 2),) + prog[1:]  # A=2: the false branch
        assert interp.run(flipped, PKT) == 22, distance
        extra = len(prog) - (distance + 5)
        if distance + 2 > 255:  # `ret #22` is distance + 2 ahead; its copy pushes `far` too
            # one ja for the block, one copy of `ret #22`, placed right after the jump
            assert extra == 2, distance
            assert prog[2].code == BPF_JMP | BPF_JA or prog[3].code == BPF_JMP | BPF_JA
            assert Insn(BPF_RET | BPF_K, 0, 0, 22) in prog[2:4]
        else:
            assert extra == 0, distance


def test_ret_copies_are_shared_by_nearby_jumps() -> None:
    asm = Assembler()
    asm.ret(0, "deny")
    asm.ret(7, "allow")
    _padding(asm, 400)
    entry = None
    for k in range(100):  # 100 jumps in a row, all to the two far rets
        asm.jump(JGE, 1000 - k, "allow", "deny" if entry is None else entry)
        entry = asm.label(f"j{k}")
    asm.emit(stmt(BPF_LD | BPF_W | BPF_IMM, 950))
    prog = asm.program()
    assert problems(prog) == []
    assert len(prog) == 2 + 400 + 100 + 1 + 2  # one copy of each ret serves all 100 jumps
    assert interp.run(prog, PKT) == 7


def test_verify_reproduces_the_kernel_memory_check() -> None:
    ok = (stmt(BPF_LD | BPF_W | BPF_IMM, 5), stmt(BPF_ST, 0), stmt(BPF_LD | BPF_MEM, 0), stmt(BPF_RET | BPF_K, 0))
    assert problems(ok) == []
    unset = (stmt(BPF_LD | BPF_MEM, 3), stmt(BPF_RET | BPF_K, 0))
    assert problems(unset) == ["0: M[3] may be read before it is stored"]
    # The kernel's linear pass carries a ret's (empty) memory state into the next
    # instruction: a `ret` jumped to before the store poisons a load that follows it.
    poisoned = (
        Insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 4, 0),  # → 5 (ret) or 1
        stmt(BPF_ST, 0),
        Insn(BPF_JMP | BPF_JEQ | BPF_K, 2, 1, 0),  # → 4 or 3
        stmt(BPF_RET | BPF_K, 1),
        stmt(BPF_RET | BPF_K, 2),
        stmt(BPF_RET | BPF_K, 0),
        stmt(BPF_LD | BPF_MEM, 0),
        stmt(BPF_RET | BPF_K, 0),
    )
    assert problems(poisoned[:6]) == []
    assert problems(poisoned) == ["6: M[0] may be read before it is stored"]
    assert problems((Insn(BPF_JMP | BPF_JA, 0, 0, 1), stmt(BPF_RET | BPF_K, 0))) == ["0: ja out of the program"]
    assert problems((stmt(BPF_LD | BPF_W | BPF_IMM, 1),)) == ["0: the last instruction is not a ret"]
