"""Bans never keep a policy out of the kernel: when the policy and the current bans do not fit
in one program, the proxy's filter carries the policy alone (the bans stay enforced by the
limiters in user space), so a reload that tightens the policy still takes effect."""

from __future__ import annotations

import io
import ipaddress
import json
import time

import pytest

from sockgate.bpf import Packet, interp
from sockgate.bpf.insn import decode
from sockgate.bpf.program import Program
from sockgate.errors import CompileError
from sockgate.kernel import Compiled
from sockgate.log import Log
from sockgate.peers import Peer
from sockgate.policy.ir import Service
from sockgate.policy.parser import parse_policy
from sockgate.proxy.admission import Refused
from sockgate.proxy.relay import PipePool
from sockgate.proxy.service import Runner
from sockgate.proxy.spec import ProxySettings, ProxySpec
from sockgate.urls import parse_url

BANNED = 2100  # non-adjacent /64s: 4,200 IPv6 ranges, over the 1,999 /64s one program holds
OLD = "service web {\n allow all limit rate 1/minute per source ban 10m\n}\n"
NEW = "service web {\n deny 2001:db8:0:fff0::/60\n allow all limit rate 1/minute per source ban 10m\n}\n"


def _service(text: str) -> Service:
    return parse_policy(text, "p.conf").services[0]


def _runner(out: io.StringIO) -> Runner:
    plan = ProxySpec(_service(OLD), (parse_url("tcp://127.0.0.1:0"),), parse_url("tcp://127.0.0.1:9"))
    r = Runner(plan, ProxySettings(backend="cbpf"), Log("json", out), PipePool(), None)  # the classic program
    now_plus = 1e12  # far in the future: every ban is active
    for i in range(BANNED):
        peer = ipaddress.IPv6Address((0x20010DB8 << 96) | ((2 * i) << 64) | 1)
        src = r.admission.admit(Peer(address=peer), 0.0).key
        for lim in r.admission.limiters.values():
            lim.bans[src] = now_plus
    return r


def _encoded(program: Compiled) -> bytes:
    assert isinstance(program, Program)
    return program.encode()


def _allows(program: bytes, address: str) -> bool:
    return bool(interp.run(decode(program), Packet.from_address(ipaddress.ip_address(address))))


def test_too_many_bans_leave_the_new_policy_in_the_kernel_and_log_once() -> None:
    out = io.StringIO()
    r = _runner(out)
    assert len(r.admission.bans(time.monotonic())) == BANNED
    prog = _encoded(r.compile(_service(NEW)))  # as a reload compiles it: the new policy, the old bans
    assert not _allows(prog, "2001:db8:0:fff1::1")  # the reload's new deny is in the filter
    assert _allows(prog, "2001:db8:1::1")
    assert _allows(prog, "2001:db8::1")  # banned, but left to user space
    verdict = r.admission.admit(Peer(address=ipaddress.ip_address("2001:db8::1")), time.monotonic())
    assert isinstance(verdict, Refused) and "banned" in verdict.reason  # ... which refuses it
    r.compile()
    r.log.flush()
    errors = [json.loads(line) for line in out.getvalue().splitlines() if '"error"' in line]
    assert len(errors) == 1 and "bans enforced in user space" in errors[0]["message"]


def test_a_policy_too_large_by_itself_is_still_an_error() -> None:
    r = _runner(io.StringIO())
    nets = "\n".join(f" deny 10.{i >> 8}.{i & 255}.0/25" for i in range(2100))
    with pytest.raises(CompileError, match="does not fit in one BPF program"):
        r.compile(_service(f"service web {{\n{nets}\n allow all\n}}\n"))
