"""A classic BPF assembler that emits backwards, so every jump goes forward.

Code is produced from the end of the program towards its start: when a jump is emitted, all
of its targets already have a place, so its offsets are known at once and no second pass is
needed. Positions are counted from the end (``len(self._rev)`` is the index, from the end, of
the next instruction).

Conditional jumps carry 8-bit offsets. When a target is more than 255 instructions ahead,
the assembler puts a *copy* of it right after the jump and records the copy as the label's
nearest place, so later (earlier in the program) jumps reuse it:

* a ``ret`` is copied as itself (one instruction, and the packet is decided at once);
* any other target gets a ``ja`` to its nearest place (``ja`` has a 32-bit offset).

So a search tree whose leaves jump to shared ``ret`` instructions costs one instruction per
node plus a ``ret`` copy every ~255 instructions per action, instead of a ``ja`` per leaf.
"""

from __future__ import annotations

from sockgate.bpf.insn import BPF_JA, BPF_JMP, BPF_K, BPF_RET, Insn

MAX_OFFSET = 255


class Assembler:
    def __init__(self) -> None:
        self._rev: list[Insn] = []
        self._places: dict[str, int] = {}  # label -> nearest place, counted from the end
        self._rets: dict[str, int] = {}  # labels of duplicable `ret #k` -> k
        self._fresh = 0

    def fresh(self, prefix: str) -> str:
        self._fresh += 1
        return f"{prefix}{self._fresh}"

    def here(self) -> int:
        """Index, from the end, of the instruction emitted last."""
        return len(self._rev) - 1

    def label(self, name: str) -> str:
        """Name the instruction emitted last."""
        self._places[name] = self.here()
        return name

    def alias(self, name: str, target: str) -> str:
        """Make ``name`` mean the same place as ``target`` (also a ``ret`` to copy)."""
        self._places[name] = self._places[target]
        if target in self._rets:
            self._rets[name] = self._rets[target]
        return name

    def emit(self, insn: Insn) -> None:
        if insn.is_jump:
            raise ValueError("use jump()/ja() for jumps")
        self._rev.append(insn)

    def ret(self, k: int, name: str) -> str:
        """``ret #k`` named ``name``; jumps to it may be served by copies."""
        self._rev.append(Insn(BPF_RET | BPF_K, 0, 0, k))
        self._rets[name] = k
        return self.label(name)

    def ja(self, target: str) -> None:
        self._rev.append(Insn(BPF_JMP | BPF_JA, 0, 0, self._offset(target)))

    def jump(self, code: int, k: int, jt: str, jf: str) -> None:
        """A conditional jump ``code`` (e.g. ``BPF_JMP|BPF_JGE|BPF_K``) to labels jt / jf."""
        for _ in range(4):
            if self._offset(jt) > MAX_OFFSET:
                self._copy(jt)
            elif self._offset(jf) > MAX_OFFSET:
                self._copy(jf)
            else:
                break
        self._rev.append(Insn(code, self._offset(jt), self._offset(jf), k))

    def forget_copies(self) -> None:
        """Make the next jump to each ``ret`` get a fresh copy. The kernel's check of scratch
        memory (``check_load_and_stores``) flows straight through a ``ret`` into the next
        instruction, so a ``ret`` reached before M[] is stored must not sit just before a load
        of M[]: code emitted before a block that loads M[] calls this."""
        for name in self._rets:
            self._places[name] = -(1 << 30)

    def program(self) -> tuple[Insn, ...]:
        return tuple(reversed(self._rev))

    def __len__(self) -> int:
        return len(self._rev)

    def _offset(self, target: str) -> int:
        return len(self._rev) - self._places[target] - 1

    def _copy(self, target: str) -> None:
        k = self._rets.get(target)
        if k is not None:
            self._rev.append(Insn(BPF_RET | BPF_K, 0, 0, k))
        else:
            self.ja(target)
        self._places[target] = self.here()
