"""The generated program's stack frame and registers, and the emitter its parts share.

The program is written by three modules (codegen.py: the decision; counting.py: counters and
events; rates.py: rate limits and bans), which must agree on where each record lives on the
stack and what each callee-saved register holds across helper calls; that agreement is
written here once. Offsets are from the frame pointer R10 (the stack grows down; the
verifier wants every access aligned to its size and inside the 512-byte frame)::

    fp-24  .. fp-5    struct bpf_lpm_trie_key: u32 prefixlen, the source (rule and ban tries)
    fp-32             the first byte of the network header (version, IPv4 IHL)
    fp-31             a TCP header's flags byte
    fp-56  .. fp-37   struct sg_source of the packet (layout.SOURCE_KEY), scope 0: counters
    fp-96  .. fp-65   a value being written: struct sg_count, sg_event, sg_ban (layout.py)
    fp-120 .. fp-101  struct sg_source of a per-source token bucket (limits.source_of's address)
    fp-128            a spilled pointer to a bucket value
    fp-136            the prefix length of that source, for a ban (32, 64 or 128)
    fp-160 .. fp-141  struct sg_source of a service-wide token bucket (family 0, address 0)
    fp-208 .. fp-168  the limits being applied (u64 each): scope, per-source interval and
                      burst, service-wide interval and burst, ban (ns; 0: none)
    fp-216            the u32 index of a ``sg_stats`` counter (layout.Stat)

Registers: R6 the skb; after the verdict R7 the deciding rule (sign-extended ``s32``, see
ranges.BANNED, ranges.FORGED, maps.DEFAULT_RULE), R8 the reason (layout.Reason; while rate
limits are applied, which set comes next), R9 the time (``bpf_ktime_get_ns``). R0-R5 are
clobbered by every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sockgate.ebpf.asm import Assembler
from sockgate.ebpf.insn import Insn, ld_map_fd

KEY = -24
VERSION = -32
TCP_FLAGS = -31
SRC = -56
VALUE = -96
BUCKET_KEY = -120
BUCKET_PTR = -128
BAN_PLEN = -136
TOTAL_KEY = -160
P_SCOPE = -168
P_PER_INTERVAL = -176
P_PER_BURST = -184
P_TOTAL_INTERVAL = -192
P_TOTAL_BURST = -200
P_BAN = -208
STAT_KEY = -216

MAP_FD_PLACEHOLDER = 0  # replaced by each map's fd at load time (program.link)


@dataclass
class Emitter:
    """An assembler plus the map loads to relocate: ``(label of the ld_imm64, map name)``."""

    asm: Assembler = field(default_factory=Assembler)
    relocs: list[tuple[str, str]] = field(default_factory=list)
    used: list[str] = field(default_factory=list)  # map names, in order of first use

    def emit(self, *insns: Insn) -> None:
        self.asm.emit(*insns)

    def load_map(self, reg: int, name: str) -> None:
        """``reg = &map`` for the map called ``name`` (its fd patched in by ``link``)."""
        label = self.asm.label(self.asm.fresh(f"map_{name}_"))
        self.relocs.append((label, name))
        if name not in self.used:
            self.used.append(name)
        self.asm.emit(*ld_map_fd(reg, MAP_FD_PLACEHOLDER))
