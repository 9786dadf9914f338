"""The marker: our programs are recognised when read back; anything else is foreign."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.bpf import (
    BPF_ABS,
    BPF_H,
    BPF_IMM,
    BPF_JA,
    BPF_JEQ,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_RET,
    BPF_W,
    Insn,
    Marker,
    compile_service,
    decode,
    identify,
    interp,
    jump,
    stmt,
)
from sockgate.bpf.marker import MAGIC, build
from sockgate.policy.ir import Action, AddrMatch, Rule, Service
from sockgate.policy.source import Span

LD_IMM = BPF_LD | BPF_W | BPF_IMM


@settings(max_examples=100)
@given(st.text(min_size=1, max_size=60), st.text("0123456789abcdef", min_size=16, max_size=16))
def test_marker_round_trip(name: str, digest: str) -> None:
    assert identify(build(name, digest) + (stmt(BPF_RET | BPF_K, 0),)) == Marker(name, digest)


def test_compiled_program_identifies_after_encode_decode() -> None:
    rule = Rule(Action.ALLOW, AddrMatch((ipaddress.ip_network("192.0.2.0/24"),)), Span("p", 1, 1), "allow 192.0.2.0/24")
    svc = Service("ssh-ünïcode", (rule,), Action.DENY)
    prog = compile_service(svc)
    assert identify(decode(prog.encode())) == Marker("ssh-ünïcode", svc.digest())


def test_marker_costs_one_instruction_per_packet() -> None:
    prog = build("svc", "0123456789abcdef") + (stmt(BPF_RET | BPF_K, 7),)
    t = interp.trace(prog, interp.Packet.ipv4("192.0.2.1"))
    assert t.path == [0, len(prog) - 1] and t.result == 7


def test_foreign_programs_are_not_identified() -> None:
    tcpdump_ip = (  # tcpdump -dd ip: a typical foreign filter
        stmt(BPF_LD | BPF_H | BPF_ABS, 12),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x800, 0, 1),
        stmt(BPF_RET | BPF_K, 262144),
        stmt(BPF_RET | BPF_K, 0),
    )
    assert identify(tcpdump_ip) is None
    assert identify(()) is None
    good = build("svc", "0123456789abcdef") + (stmt(BPF_RET | BPF_K, 0),)
    assert identify(good) is not None
    bad_magic = (good[0], Insn(LD_IMM, 0, 0, MAGIC ^ 1)) + good[2:]
    bad_version = (good[0], good[1], Insn(LD_IMM, 0, 0, (2 << 16) | 3)) + good[3:]
    bad_length = (good[0], good[1], Insn(LD_IMM, 0, 0, (1 << 16) | 9)) + good[3:]
    bad_skip = (Insn(BPF_JMP | BPF_JA, 0, 0, 4),) + good[1:]
    bad_opcode = good[:3] + (Insn(BPF_RET | BPF_K, 0, 0, good[3].k),) + good[4:]
    for prog in (bad_magic, bad_version, bad_length, bad_skip, bad_opcode):
        assert identify(prog) is None
