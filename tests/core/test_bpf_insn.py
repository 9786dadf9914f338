"""Instruction encoding: the struct sock_filter layout and the opcode values of the headers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.bpf import (
    BPF_ABS,
    BPF_B,
    BPF_H,
    BPF_JEQ,
    BPF_JGE,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_MEM,
    BPF_RET,
    BPF_ST,
    BPF_TAX,
    BPF_MISC,
    BPF_W,
    SKF_AD_OFF,
    SKF_NET_OFF,
    Insn,
    decode,
    encode,
    jump,
    stmt,
)

insns = st.builds(Insn, st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1))


@settings(max_examples=200)
@given(st.lists(insns, max_size=50))
def test_encode_decode_round_trip(prog: list[Insn]) -> None:
    raw = encode(prog)
    assert len(raw) == 8 * len(prog)
    assert decode(raw) == tuple(prog)


def test_layout_is_struct_sock_filter() -> None:
    i = jump(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, 1, 2)
    assert encode([i]) == struct.pack("=HBBI", 0x15, 1, 2, 0x800)


def test_opcode_values_match_the_kernel_headers() -> None:
    # Values as tcpdump -dd prints them for the same instructions.
    assert stmt(BPF_LD | BPF_H | BPF_ABS, 12).code == 0x28
    assert stmt(BPF_LD | BPF_B | BPF_ABS, 23).code == 0x30
    assert stmt(BPF_LD | BPF_W | BPF_ABS, 26).code == 0x20
    assert jump(BPF_JMP | BPF_JGE | BPF_K, 1, 0, 1).code == 0x35
    assert stmt(BPF_RET | BPF_K, 0).code == 0x06
    assert stmt(BPF_LD | BPF_MEM, 1).code == 0x60
    assert stmt(BPF_ST, 1).code == 0x02
    assert stmt(BPF_MISC | BPF_TAX).code == 0x07
    assert (SKF_NET_OFF, SKF_AD_OFF) == (-0x100000, -0x1000)


def test_negative_offsets_are_stored_unsigned() -> None:
    i = stmt(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + 12)
    assert i.k == 0xFFF0000C and i.signed_k == SKF_NET_OFF + 12
    assert decode(encode([i]))[0].signed_k == SKF_NET_OFF + 12


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="not a whole number"):
        decode(b"\0" * 9)
    with pytest.raises(ValueError, match="jump offset"):
        Insn(BPF_JMP | BPF_JEQ, 256, 0, 0)
