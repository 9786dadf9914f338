"""Classic BPF for sockgate: a service's address rules → one socket filter (pure; no I/O).

Passes (each a module with one entry function)::

    ResolvedService ──resolve.ranges.first_match_tables──▶ Tables ──codegen.generate──▶ insns ──program──▶ Program
                                                           (disjoint intervals)     (balanced search, marker, limits)

``compile_resolved`` is the entry point (``compile_service`` resolves a ``Service`` first);
``identify`` recognises a sockgate program read back from a socket; ``interp.run``/``interp.trace`` execute a program on a modelled packet and
``disasm.listing`` prints one. See docs/bpf.md for the program layout and the limits.
"""

from __future__ import annotations

from typing import Sequence

from sockgate.bpf import disasm, interp
from sockgate.bpf.insn import (
    BPF_A,
    BPF_ABS,
    BPF_ADD,
    BPF_ALU,
    BPF_AND,
    BPF_B,
    BPF_DIV,
    BPF_H,
    BPF_IMM,
    BPF_IND,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JMP,
    BPF_JSET,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_LSH,
    BPF_MAXINSNS,
    BPF_MEM,
    BPF_MEMWORDS,
    BPF_MISC,
    BPF_MOD,
    BPF_MSH,
    BPF_MUL,
    BPF_NEG,
    BPF_OR,
    BPF_RET,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_TAX,
    BPF_TXA,
    BPF_W,
    BPF_X,
    BPF_XOR,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    SKF_AD_PROTOCOL,
    SKF_LL_OFF,
    SKF_NET_OFF,
    Insn,
    decode,
    encode,
    jump,
    stmt,
)
from sockgate.bpf.interp import Packet
from sockgate.bpf.marker import FilterState, Marker, Reading, classify, program_digest, read
from sockgate.bpf.program import (
    Program,
    compile_resolved,
    compile_service,
    ebpf_estimate,
    max_ranges,
)


def identify(insns: Sequence[Insn]) -> Marker | None:
    """The marker of a sockgate program (e.g. read back with SO_GET_FILTER), or None for a
    program sockgate did not make."""
    return read(insns)


def capacity() -> dict[str, int]:
    """The largest number of disjoint ranges one program surely holds: IPv4; IPv6 networks of
    any length (the worst, /120); IPv6 /64 networks; IPv6 /128 hosts."""
    return {"ipv4": max_ranges(4), "ipv6": max_ranges(6), "ipv6_64": max_ranges(6, 64), "ipv6_128": max_ranges(6, 128)}


__all__ = [
    "BPF_A", "BPF_ABS", "BPF_ADD", "BPF_ALU", "BPF_AND", "BPF_B", "BPF_DIV", "BPF_H", "BPF_IMM",
    "BPF_IND", "BPF_JA", "BPF_JEQ", "BPF_JGE", "BPF_JGT", "BPF_JMP", "BPF_JSET", "BPF_K",
    "BPF_LD", "BPF_LDX", "BPF_LEN", "BPF_LSH", "BPF_MAXINSNS", "BPF_MEM", "BPF_MEMWORDS",
    "BPF_MISC", "BPF_MOD", "BPF_MSH", "BPF_MUL", "BPF_NEG", "BPF_OR", "BPF_RET", "BPF_RSH",
    "BPF_ST", "BPF_STX", "BPF_SUB", "BPF_TAX", "BPF_TXA", "BPF_W", "BPF_X", "BPF_XOR",
    "SKF_AD_OFF", "SKF_AD_PKTTYPE", "SKF_AD_PROTOCOL", "SKF_LL_OFF", "SKF_NET_OFF",
    "FilterState", "Insn", "Marker", "Packet", "Program", "Reading", "capacity", "classify",
    "compile_resolved", "compile_service", "decode", "disasm", "ebpf_estimate", "encode", "identify", "interp", "jump",
    "max_ranges", "program_digest", "stmt",
]
