"""The generated socket filter by shape: what it reads, in which order it decides, and how
its map loads are linked to file descriptors."""

from __future__ import annotations

import ipaddress

import pytest

from sockgate.ebpf import compile_service
from sockgate.ebpf.codegen import Shape, generate
from sockgate.ebpf.disasm import listing
from sockgate.ebpf.insn import BPF_PSEUDO_MAP_FD, Helper, decode
from sockgate.errors import UnsupportedInKernel
from sockgate.policy.ir import Action, AddrMatch, Principal, Rule, Service
from sockgate.policy.source import Span


def rule(action: str, *nets: str, line: int = 1) -> Rule:
    return Rule(Action(action), AddrMatch(tuple(ipaddress.ip_network(n) for n in nets)), Span("t.conf", line, 1), action)


SVC = Service("svc", (rule("deny", "10.1.0.0/16", "2001:db8:1::/48"), rule("allow", "10.0.0.0/8", "2001:db8::/32", line=2)), Action.DENY)


def test_listing_of_a_deny_by_default_filter() -> None:
    gen = generate(Shape(Action.DENY, Action.ALLOW), "sg_lpm4", "sg_lpm6")
    text = listing(gen.insns, gen.labels)
    lines = [ln.split(": ", 1)[1] if ": " in ln else ln for ln in text.splitlines()]
    # the version nibble first, from the network header; a short packet is denied
    assert lines[:10] == [
        "r6 = r1", "r1 = r6", "r2 = 0", "r3 = r10", "r3 += -32", "r4 = 1", "r5 = 1",
        "call bpf_skb_load_bytes_relative#68", "if r0 != 0x0 goto pc+46 <deny>", "r7 = *(u8 *)(r10 -32)",
    ]
    assert "goto pc+43 <allow>" in lines[13]  # neither IPv4 nor IPv6: the peer without an address
    # IPv6: the forged check comes before the lookup
    mapped = text.index("if r1 == 0xffff goto")
    assert text.index("v6:") < mapped < text.index("lookup6:")
    assert lines[-9:] == ["if r0 == 0x0 goto pc+2 <deny>", "r1 = *(u32 *)(r0 +0)", "if r1 == 0x1 goto pc+2 <allow>",
                          "deny:", "w0 = 0", "exit", "allow:", "w0 = -1", "exit"]
    assert text.endswith("58: exit")


def test_relocations_point_at_the_map_loads_and_link_patches_the_fds() -> None:
    prog = compile_service(SVC)
    assert {name for _, name in prog.relocations} == {"sg_lpm4", "sg_lpm6"}
    linked = decode(prog.link({"sg_lpm4": 7, "sg_lpm6": 9}))
    for slot, name in prog.relocations:
        assert linked[slot].src == BPF_PSEUDO_MAP_FD and linked[slot].imm == {"sg_lpm4": 7, "sg_lpm6": 9}[name]
        assert linked[slot + 4].imm == Helper.map_lookup_elem
    with pytest.raises(ValueError, match="no file descriptor for map 'sg_lpm6'"):
        prog.link({"sg_lpm4": 7})


def test_rules_live_in_the_maps_not_the_program() -> None:
    a, b = compile_service(SVC), compile_service(Service("svc", SVC.rules[1:], Action.DENY))
    assert a.insns == b.insns and a.digest != b.digest
    v4 = {str(k.network): (v.action, v.rule) for k, v in a.maps[0].entries}
    # 10/8 minus 10.1/16, allowed by rule 1; 10.1/16 is denied like the default: not stored
    assert v4 == {"10.0.0.0/16": (Action.ALLOW, 1), "10.2.0.0/15": (Action.ALLOW, 1), "10.4.0.0/14": (Action.ALLOW, 1),
                  "10.8.0.0/13": (Action.ALLOW, 1), "10.16.0.0/12": (Action.ALLOW, 1), "10.32.0.0/11": (Action.ALLOW, 1),
                  "10.64.0.0/10": (Action.ALLOW, 1), "10.128.0.0/9": (Action.ALLOW, 1)}
    assert a.maps[1].spec.key_size == 20 and a.maps[0].spec.key_size == 8 and a.maps[0].spec.flags == 1


def test_spare_entries_size_the_maps() -> None:
    prog = compile_service(SVC, spare=100)
    assert [m.spec.max_entries for m in prog.maps] == [len(m.entries) + 100 for m in prog.maps]
    assert len(prog.name) <= 15 and prog.name.startswith("sg_")


def test_rules_needing_user_space_are_refused_as_by_the_classic_compiler() -> None:
    r = Rule(Action.ALLOW, Principal("user", "alice"), Span("t.conf", 3, 1), "allow user alice")
    with pytest.raises(UnsupportedInKernel, match="t.conf:3"):
        compile_service(Service("svc", (r,), Action.DENY))
