"""The interpreter's model of a socket filter's view of a packet."""

from __future__ import annotations

import pytest

from sockgate.bpf import (
    BPF_A,
    BPF_ABS,
    BPF_ALU,
    BPF_B,
    BPF_DIV,
    BPF_H,
    BPF_IMM,
    BPF_IND,
    BPF_JA,
    BPF_JMP,
    BPF_JSET,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_MISC,
    BPF_MSH,
    BPF_RET,
    BPF_SUB,
    BPF_TAX,
    BPF_W,
    BPF_X,
    SKF_AD_OFF,
    SKF_AD_PROTOCOL,
    SKF_NET_OFF,
    Insn,
    Packet,
    interp,
    stmt,
)

RET_A = stmt(BPF_RET | BPF_A)


def _a_after(*prog: Insn, packet: Packet | None = None) -> int:
    return interp.run(prog + (RET_A,), packet or Packet.ipv4("192.0.2.1"))


def test_network_and_transport_loads() -> None:
    p = Packet.ipv4("192.0.2.1", "198.51.100.2", transport=bytes(range(20)))
    assert _a_after(stmt(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + 12), packet=p) == 0xC0000201
    assert _a_after(stmt(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + 16), packet=p) == 0xC6336402
    assert _a_after(stmt(BPF_LD | BPF_B | BPF_ABS, SKF_NET_OFF + 0), packet=p) == 0x45
    assert _a_after(stmt(BPF_LD | BPF_H | BPF_ABS, 2), packet=p) == 0x0203  # transport bytes
    assert _a_after(stmt(BPF_LD | BPF_B | BPF_ABS, SKF_NET_OFF + 21), packet=p) == 1  # past the IP header
    assert _a_after(stmt(BPF_LD | BPF_W | BPF_LEN), packet=p) == 20
    assert _a_after(stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PROTOCOL), packet=p) == 0x0800
    six = Packet.ipv6("2001:db8::1")
    assert _a_after(stmt(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + 20), packet=six) == 1
    assert _a_after(stmt(BPF_LD | BPF_B | BPF_ABS, SKF_NET_OFF + 0), packet=six) >> 4 == 6


def test_mapped_addresses_arrive_as_ipv4() -> None:
    p = Packet.from_address("::ffff:192.0.2.9")
    assert p.network[0] == 0x45 and p.network[12:16] == bytes([192, 0, 2, 9])


def test_out_of_bounds_loads_drop() -> None:
    p = Packet.ipv4("192.0.2.1", transport=b"\1\2")
    assert interp.run((stmt(BPF_LD | BPF_W | BPF_ABS, 0), stmt(BPF_RET | BPF_K, 9)), p) == 0
    assert interp.run((stmt(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + 18), stmt(BPF_RET | BPF_K, 9)), p) == 9
    assert interp.run((stmt(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + 19), stmt(BPF_RET | BPF_K, 9)), p) == 0
    assert interp.run((stmt(BPF_LD | BPF_B | BPF_IND, 5), stmt(BPF_RET | BPF_K, 9)), p) == 0


def test_alu_jumps_and_registers() -> None:
    assert _a_after(stmt(BPF_LD | BPF_IMM, 5), stmt(BPF_ALU | BPF_SUB | BPF_K, 7)) == 0xFFFFFFFE
    assert interp.run((stmt(BPF_LD | BPF_IMM, 5), stmt(BPF_ALU | BPF_DIV | BPF_X), RET_A), Packet(b"")) == 0
    prog = (
        stmt(BPF_LD | BPF_IMM, 6),
        stmt(BPF_MISC | BPF_TAX),
        stmt(BPF_LDX | BPF_W | BPF_LEN),
        Insn(BPF_JMP | BPF_JSET | BPF_K, 1, 0, 2),
        stmt(BPF_RET | BPF_K, 1),
        stmt(BPF_JMP | BPF_JA, 0),
        stmt(BPF_RET | BPF_X),
    )
    t = interp.trace(prog, Packet.ipv4("192.0.2.1", transport=b"\0" * 30))
    assert (t.result, t.path) == (30, [0, 1, 2, 3, 5, 6])
    assert _a_after(stmt(BPF_LDX | BPF_B | BPF_MSH, SKF_NET_OFF), stmt(BPF_MISC | 0x80)) == 20


def test_running_off_the_end_is_an_error() -> None:
    with pytest.raises(ValueError, match="runs off its end"):
        interp.run((stmt(BPF_LD | BPF_IMM, 1),), Packet.ipv4("192.0.2.1"))
