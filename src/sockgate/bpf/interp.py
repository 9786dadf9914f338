"""A classic BPF interpreter with the socket-filter view of a packet, for tests and `explain`.

It follows ``___bpf_prog_run`` as the kernel runs a converted socket filter: A and X start at
0; absolute loads read from ``skb->data``, which for TCP and UDP sockets is the transport
header; loads at ``SKF_NET_OFF + k`` read from the network header onwards (network header
then transport bytes, contiguous); a load outside the packet ends the program with 0 (drop),
as ``bpf_internal_load_pointer_neg_helper`` and the ``LD_ABS`` conversion do; division by
zero returns 0. The result is the accept length (0 = drop).

Only the ancillary loads a socket filter could reasonably use are modelled
(``SKF_AD_PROTOCOL``, ``SKF_AD_PKTTYPE``); others raise ``ValueError``, since the interpreter
exists to check sockgate's own programs, and a disagreement must be loud.

``Packet.peer()`` is the decision engine's view of the same packet (the header's source and IP
version), so the compiler's tests state ``run(compile(p), packet) == decide(p, packet.peer())``
for any header, an IPv6 one with a forged IPv4-mapped source included.

Hand-written rather than borrowed: no maintained pure-Python cBPF interpreter exists, and
the one behaviour that matters here (negative offsets, out-of-bounds reads) is a few lines.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Sequence

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
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_LSH,
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
    BPF_X,
    BPF_XOR,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    SKF_AD_PROTOCOL,
    SKF_NET_OFF,
    U32,
    Insn,
    bpf_class,
    bpf_miscop,
    bpf_mode,
    bpf_op,
    bpf_rval,
    bpf_size,
    bpf_src,
)
from sockgate.peers import Peer

ETH_P_IP = 0x0800  # <linux/if_ether.h>
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6


@dataclass(frozen=True)
class Packet:
    """What a socket filter sees: the network header (IPv4 or IPv6, or anything) and the
    transport bytes that follow it (``skb->data`` for a TCP/UDP socket)."""

    network: bytes
    transport: bytes = b""
    protocol: int = ETH_P_IP
    pkttype: int = 0  # PACKET_HOST

    @classmethod
    def ipv4(cls, src: str | ipaddress.IPv4Address, dst: str = "127.0.0.1", proto: int = IPPROTO_TCP,
             transport: bytes = b"\0" * 20) -> "Packet":
        total = 20 + len(transport)
        hdr = bytes([0x45, 0]) + total.to_bytes(2, "big") + bytes(4) + bytes([64, proto, 0, 0])
        hdr += ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
        return cls(hdr, transport, ETH_P_IP)

    @classmethod
    def ipv6(cls, src: str | ipaddress.IPv6Address, dst: str = "::1", proto: int = IPPROTO_TCP,
             transport: bytes = b"\0" * 20) -> "Packet":
        hdr = bytes([0x60, 0, 0, 0]) + len(transport).to_bytes(2, "big") + bytes([proto, 64])
        hdr += ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
        return cls(hdr, transport, ETH_P_IPV6)

    @classmethod
    def from_address(cls, addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> "Packet":
        """The packet a socket receives from a genuine client at ``addr``: an IPv4-mapped IPv6
        address arrives as IPv4 (a dual-stack socket gets the client's IPv4 header). The
        same address in an IPv6 header is ``Packet.ipv6(addr)``: a forged packet."""
        a = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        return cls.ipv4(a) if a.version == 4 else cls.ipv6(a)

    def peer(self) -> Peer | None:
        """What the decision engine is asked about this packet: its header's source address
        and IP version (``Peer.header``: an IPv4-mapped source in an IPv6 header is a forged
        peer), or a peer without an address when the version is neither 4 nor 6. None for a
        header too short to hold what the program reads: no decision, it is dropped."""
        if not self.network:
            return None
        version = self.network[0] >> 4
        if version == 4:
            return Peer(address=ipaddress.IPv4Address(self.network[12:16]), header=4) if len(self.network) >= 16 else None
        if version == 6:
            return Peer(address=ipaddress.IPv6Address(self.network[8:24]), header=6) if len(self.network) >= 24 else None
        return Peer()


class _Drop(Exception):
    """A load outside the packet: the kernel ends the program with 0."""


@dataclass
class Trace:
    """The result of a run: the accept length and the instruction indices executed."""

    result: int
    path: list[int] = field(default_factory=list)


def run(insns: Sequence[Insn], packet: Packet) -> int:
    """The accept length ``insns`` returns for ``packet`` (0 = drop)."""
    return trace(insns, packet).result


def trace(insns: Sequence[Insn], packet: Packet) -> Trace:
    """Run ``insns`` on ``packet``, recording every instruction index executed."""
    m = _Machine(packet)
    t = Trace(0)
    pc = 0
    try:
        while True:
            if not 0 <= pc < len(insns):
                raise ValueError(f"program runs off its end at instruction {pc}")
            t.path.append(pc)
            step = m.step(insns[pc])
            if step is None:
                t.result = m.ret
                return t
            pc += 1 + step
    except _Drop:
        t.result = 0
        return t


class _Machine:
    def __init__(self, packet: Packet) -> None:
        self.p = packet
        self.a = 0
        self.x = 0
        self.mem = [0] * BPF_MEMWORDS
        self.ret = 0

    def step(self, i: Insn) -> int | None:
        """Execute ``i``; the jump offset (0 = next), or None after ``ret``."""
        cls = bpf_class(i.code)
        if cls == BPF_LD:
            self.a = self._load(i)
        elif cls == BPF_LDX:
            self.x = self._loadx(i)
        elif cls == BPF_ST:
            self.mem[i.k] = self.a
        elif cls == BPF_STX:
            self.mem[i.k] = self.x
        elif cls == BPF_ALU:
            self.a = self._alu(i) & U32
        elif cls == BPF_JMP:
            return self._jump(i)
        elif cls == BPF_RET:
            rv = bpf_rval(i.code)
            self.ret = self.a if rv == BPF_A else self.x if rv == BPF_X else i.k
            return None
        elif cls == BPF_MISC:
            if bpf_miscop(i.code) == BPF_TAX:
                self.x = self.a
            else:
                self.a = self.x
        return 0

    def _bytes(self, off: int, size: int) -> int:
        if off >= 0:
            data = self.p.transport
        elif SKF_NET_OFF <= off < SKF_AD_OFF:
            data, off = self.p.network + self.p.transport, off - SKF_NET_OFF
        else:
            raise _Drop
        if off < 0 or off + size > len(data):
            raise _Drop
        return int.from_bytes(data[off : off + size], "big")

    def _common_load(self, i: Insn) -> int | None:
        """The modes ``ld`` and ``ldx`` share (immediate, M[k], length), else None."""
        mode = bpf_mode(i.code)
        if mode == BPF_IMM:
            return i.k
        if mode == BPF_MEM:
            return self.mem[i.k]
        if mode == BPF_LEN:
            return len(self.p.transport)
        return None

    def _load(self, i: Insn) -> int:
        mode, size = bpf_mode(i.code), {0: 4, BPF_H: 2, BPF_B: 1}[bpf_size(i.code)]
        common = self._common_load(i)
        if common is not None:
            return common
        if mode == BPF_ABS and SKF_AD_OFF <= i.signed_k < 0:
            return self._ancillary(i.signed_k - SKF_AD_OFF)
        off = i.signed_k if mode == BPF_ABS else (self.x + i.signed_k) if mode == BPF_IND else None
        if off is None:
            raise ValueError(f"bad load mode in {i}")
        return self._bytes(off, size)

    def _ancillary(self, which: int) -> int:
        if which == SKF_AD_PROTOCOL:
            return self.p.protocol
        if which == SKF_AD_PKTTYPE:
            return self.p.pkttype
        raise ValueError(f"ancillary load SKF_AD_OFF+{which} is not modelled")

    def _loadx(self, i: Insn) -> int:
        common = self._common_load(i)
        if common is not None:
            return common
        if bpf_mode(i.code) == BPF_MSH:
            return (self._bytes(i.signed_k, 1) & 0x0F) * 4
        raise ValueError(f"bad ldx mode in {i}")

    def _alu(self, i: Insn) -> int:
        op = bpf_op(i.code)
        v = self.x if bpf_src(i.code) == BPF_X else i.k
        a = self.a
        if op in (BPF_DIV, BPF_MOD) and v == 0:
            raise _Drop
        table = {
            BPF_ADD: lambda: a + v,
            BPF_SUB: lambda: a - v,
            BPF_MUL: lambda: a * v,
            BPF_DIV: lambda: a // v,
            BPF_MOD: lambda: a % v,
            BPF_OR: lambda: a | v,
            BPF_AND: lambda: a & v,
            BPF_XOR: lambda: a ^ v,
            BPF_LSH: lambda: a << (v & 31),
            BPF_RSH: lambda: a >> (v & 31),
            BPF_NEG: lambda: -a,
        }
        if op not in table:
            raise ValueError(f"bad alu op in {i}")
        return table[op]()

    def _jump(self, i: Insn) -> int:
        op = bpf_op(i.code)
        if op == BPF_JA:
            return i.k
        v = self.x if bpf_src(i.code) == BPF_X else i.k
        a = self.a
        cond = {BPF_JEQ: a == v, BPF_JGT: a > v, BPF_JGE: a >= v, BPF_JSET: bool(a & v)}.get(op)
        if cond is None:
            raise ValueError(f"bad jump op in {i}")
        return i.jt if cond else i.jf
