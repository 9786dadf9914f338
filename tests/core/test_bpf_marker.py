"""The marker: our programs are recognised when read back; anything else is foreign, and a
genuine marker in front of other code is modified."""

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
    encode,
    identify,
    interp,
    jump,
    stmt,
)
from sockgate.bpf.marker import MAGIC, Reading, build, classify, program_digest
from sockgate.policy.ir import Action, AddrMatch, Rule, Service
from sockgate.policy.source import Span

LD_IMM = BPF_LD | BPF_W | BPF_IMM


@settings(max_examples=100)
@given(st.text(min_size=1, max_size=60), st.integers(0, 0xFFFFFFFF))
def test_marker_round_trip(name: str, verdict: int) -> None:
    body = (stmt(BPF_RET | BPF_K, verdict),)
    digest = program_digest(name, body)
    assert identify(build(name, digest) + body) == Marker(name, digest)


def _service(name: str = "ssh-ünïcode", net: str = "192.0.2.0/24") -> Service:
    rule = Rule(Action.ALLOW, AddrMatch((ipaddress.ip_network(net),)), Span("p", 1, 1), f"allow {net}")
    return Service(name, (rule,), Action.DENY)


def test_compiled_program_identifies_after_encode_decode() -> None:
    prog = compile_service(_service())
    assert identify(decode(prog.encode())) == Marker("ssh-ünïcode", prog.digest)
    assert classify(prog.encode()) == Reading("sockgate", len(prog.insns), "ssh-ünïcode", prog.digest)


def test_a_name_with_an_undecodable_byte_compiles_and_identifies() -> None:
    # a hosts_access daemon name comes from argv or a file: an undecodable byte is a lone surrogate
    prog = compile_service(_service("sshd\udcff"))
    assert identify(decode(prog.encode())) == Marker("sshd\udcff", prog.digest)


ALLOW_ALL = (stmt(BPF_RET | BPF_K, 0xFFFFFFFF),)


def test_a_genuine_marker_in_front_of_other_code_is_modified() -> None:
    """The forgery: a real program's marker, then an allow-all body."""
    prog = compile_service(_service())
    marker_len = prog.insns[0].k + 1
    forged = prog.insns[:marker_len] + ALLOW_ALL
    mark = identify(forged)
    assert mark is not None and not mark.intact
    assert classify(encode(forged)) == Reading("modified", len(forged), "ssh-ünïcode", prog.digest)
    # recomputing the digest for the forged code makes it consistent, but then it is no longer
    # the digest the service compiles to: the claim is visible
    honest = build("ssh-ünïcode", program_digest("ssh-ünïcode", ALLOW_ALL)) + ALLOW_ALL
    assert classify(encode(honest)).state == "sockgate"
    assert classify(encode(honest)).digest != prog.digest


@settings(max_examples=60)
@given(st.integers(1, 40), st.integers(0, 0xFFFFFFFF), st.integers(0, 3))
def test_any_change_to_the_code_is_modified(index: int, k: int, field: int) -> None:
    prog = compile_service(_service(net="10.0.0.0/8"))
    body_start = prog.insns[0].k + 1
    i = body_start + index % (len(prog.insns) - body_start)
    old = prog.insns[i]
    new = Insn(old.code ^ (1 if field == 0 else 0), old.jt ^ (1 if field == 1 else 0), old.jf ^ (1 if field == 2 else 0),
               k if field == 3 else old.k)
    if new == old:
        return
    changed = prog.insns[:i] + (new,) + prog.insns[i + 1 :]
    assert classify(encode(changed)).state == "modified"
    assert classify(encode(prog.insns + ALLOW_ALL)).state == "modified"  # code appended
    assert classify(encode(prog.insns[:-1])).state == "modified"  # code cut


def test_classify_none_and_foreign() -> None:
    assert classify(None) == Reading("none")
    assert classify(encode(ALLOW_ALL)) == Reading("foreign", 1)


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


def test_listing_of_a_modified_program_says_so() -> None:
    from sockgate.bpf import disasm

    prog = compile_service(_service())
    forged = prog.insns[: prog.insns[0].k + 1] + ALLOW_ALL
    assert "(modified: the code below is not the code of that digest)" in disasm.listing(forged).splitlines()[0]
    assert "modified" not in disasm.listing(prog.insns)
