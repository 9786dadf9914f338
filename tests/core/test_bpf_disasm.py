"""Golden listings of a few small programs (regenerate with SOCKGATE_UPDATE_GOLDEN=1 after an
intended change, and read the diff), and the listing's syntax for every instruction class."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from sockgate.bpf import (
    BPF_ABS,
    BPF_ALU,
    BPF_AND,
    BPF_B,
    BPF_IND,
    BPF_JA,
    BPF_JGT,
    BPF_JMP,
    BPF_JSET,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_MISC,
    BPF_MSH,
    BPF_NEG,
    BPF_RET,
    BPF_STX,
    BPF_TAX,
    BPF_TXA,
    BPF_A,
    BPF_K,
    BPF_W,
    BPF_X,
    SKF_AD_OFF,
    SKF_AD_PROTOCOL,
    SKF_NET_OFF,
    Insn,
    compile_service,
    disasm,
    stmt,
)
from sockgate.policy.ir import Action, AddrMatch, Except, MatchAll, Rule, Service
from sockgate.policy.source import Span

GOLDEN = Path(__file__).parent.parent / "data" / "bpf"


def _rule(line: int, action: str, *nets: str, exc: tuple[str, ...] = ()) -> Rule:
    m: object = AddrMatch(tuple(ipaddress.ip_network(n) for n in nets))
    if exc:
        m = Except(m, AddrMatch(tuple(ipaddress.ip_network(n) for n in exc)))  # type: ignore[arg-type]
    return Rule(Action(action), m, Span("golden.conf", line, 5), f"{action} {' '.join(nets)}")  # type: ignore[arg-type]


SERVICES = {
    "allow_v4_net": Service("ssh", (_rule(2, "allow", "10.0.0.0/8"),), Action.DENY),
    "deny_all": Service("closed", (), Action.DENY),
    "mixed_except": Service("web", (
        _rule(2, "deny", "10.66.0.0/16", "2001:db8:1:2::/64"),
        _rule(3, "allow", "10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32", exc=("192.168.1.7/32",)),
    ), Action.DENY),
    "v6_only_allow_all_else": Service("dns", (
        _rule(2, "deny", "fd5b:5347::/64"),
        Rule(Action.ALLOW, MatchAll(), Span("golden.conf", 3, 5), "allow all"),
    ), None),
}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_golden_listing(name: str) -> None:
    text = disasm.listing(compile_service(SERVICES[name]).insns)
    path = GOLDEN / f"{name}.golden"
    if os.environ.get("SOCKGATE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_instruction_syntax() -> None:
    cases = [
        (stmt(BPF_LD | BPF_W | BPF_ABS, 12), "ld [12]"),
        (stmt(BPF_LD | BPF_B | BPF_ABS, SKF_NET_OFF + 9), "ldb [net + 9]"),
        (stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PROTOCOL), "ld #proto"),
        (stmt(BPF_LD | BPF_B | BPF_IND, 4), "ldb [x + 4]"),
        (stmt(BPF_LD | BPF_W | BPF_LEN), "ld len"),
        (stmt(BPF_LDX | BPF_B | BPF_MSH, 14), "ldxb 4*([14]&0xf)"),
        (stmt(BPF_STX, 3), "stx M[3]"),
        (stmt(BPF_ALU | BPF_AND | BPF_K, 0xF0), "and #0xf0"),
        (stmt(BPF_ALU | BPF_AND | BPF_X), "and x"),
        (stmt(BPF_ALU | BPF_NEG), "neg"),
        (Insn(BPF_JMP | BPF_JGT | BPF_X, 1, 2, 0), "jgt x, l11, l12"),
        (Insn(BPF_JMP | BPF_JSET | BPF_K, 0, 3, 4), "jset #4, l10, l13"),
        (stmt(BPF_JMP | BPF_JA, 300), "ja l310"),
        (stmt(BPF_RET | BPF_A), "ret a"),
        (stmt(BPF_RET | BPF_K, 0xFFFFFFFF), "ret #0xffffffff"),
        (stmt(BPF_MISC | BPF_TAX), "tax"),
        (stmt(BPF_MISC | BPF_TXA), "txa"),
    ]
    for insn, text in cases:
        assert disasm.insn_text(insn, 9) == text


def test_labels_mark_jump_targets_only() -> None:
    prog = (Insn(BPF_JMP | BPF_JGT | BPF_K, 1, 0, 5), stmt(BPF_RET | BPF_K, 0), stmt(BPF_RET | BPF_K, 1))
    assert disasm.listing(prog) == "0      jgt #5, l2, l1\n1  l1: ret #0\n2  l2: ret #1\n"
