"""eBPF instruction encoding against bytes written out by hand from <linux/bpf.h>'s layout
(code, dst:4 | src:4, s16 off, s32 imm; little-endian machine)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockgate.ebpf.insn import (
    BPF_ADD,
    BPF_B,
    BPF_PSEUDO_MAP_FD,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_6,
    BPF_REG_10,
    BPF_W,
    Helper,
    Insn,
    alu64,
    call,
    decode,
    encode,
    exit_,
    ld_imm64,
    ld_map_fd,
    ldx,
    mov32,
    mov64,
    st as st_mem,
)

little = pytest.mark.skipif(sys.byteorder != "little", reason="the bytes below are little-endian")


@little
@pytest.mark.parametrize("insn, raw", [
    (mov64(BPF_REG_6, BPF_REG_1), "bf16000000000000"),  # r6 = r1
    (mov64(BPF_REG_2, imm=12), "b7020000" "0c000000"),  # r2 = 12
    (alu64(BPF_ADD, BPF_REG_2, imm=-24), "07020000" "e8ffffff"),  # r2 += -24
    (ldx(BPF_B, BPF_REG_0, BPF_REG_10, -32), "71a0e0ff00000000"),  # r0 = *(u8 *)(r10 - 32)
    (st_mem(BPF_W, BPF_REG_10, -24, 128), "620ae8ff80000000"),  # *(u32 *)(r10 - 24) = 128
    (mov32(BPF_REG_0, -1), "b4000000ffffffff"),  # w0 = -1
    (call(Helper.skb_load_bytes_relative), "8500000044000000"),  # call 68
    (exit_(), "9500000000000000"),
])
def test_known_encodings(insn: Insn, raw: str) -> None:
    assert encode([insn]).hex() == raw
    assert decode(bytes.fromhex(raw)) == (insn,)


@little
def test_a_map_load_is_two_slots_with_the_pseudo_map_fd_source() -> None:
    first, second = ld_map_fd(BPF_REG_1, 5)
    assert encode([first, second]).hex() == "1811000005000000" "0000000000000000"
    assert first.src == BPF_PSEUDO_MAP_FD and first.is_ld_imm64 and not second.is_ld_imm64


def test_ld_imm64_splits_the_value() -> None:
    lo, hi = ld_imm64(BPF_REG_0, 0x1122334455667788)
    assert (lo.imm & 0xFFFFFFFF, hi.imm & 0xFFFFFFFF) == (0x55667788, 0x11223344)


@given(st.integers(0, 255), st.integers(0, 15), st.integers(0, 15), st.integers(-(1 << 15), (1 << 15) - 1),
       st.integers(-(1 << 31), (1 << 31) - 1))
def test_encode_decode_round_trip(code: int, dst: int, src: int, off: int, imm: int) -> None:
    i = Insn(code, dst, src, off, imm)
    assert decode(encode([i])) == (i,)


@pytest.mark.parametrize("kw", [{"off": 1 << 15}, {"imm": 1 << 31}, {"dst": 16}, {"code": 256}])
def test_fields_out_of_range_are_refused(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Insn(**{"code": 0x07, **kw})


def test_decode_refuses_a_partial_instruction() -> None:
    with pytest.raises(ValueError, match="whole number"):
        decode(b"\0" * 12)
