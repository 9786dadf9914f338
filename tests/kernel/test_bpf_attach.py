"""The kernel accepts the largest programs the compiler claims, swaps them in place (old and
new both charged against net.core.optmem_max during the swap), reads them back intact, and
decides real datagrams through them as the interpreter does — IPv4 on AF_INET and, through a
dual-stack AF_INET6 socket, IPv6 from ::1 and IPv4 with its own header."""

from __future__ import annotations

import ipaddress
import random
import socket
import sys
import time
from pathlib import Path

import pytest

from sockgate.bpf import (
    BPF_JGE,
    BPF_JMP,
    BPF_K,
    BPF_RET,
    Insn,
    Packet,
    compile_service,
    decode,
    encode,
    identify,
    interp,
    max_ranges,
    program,
    stmt,
    verify,
)
from sockgate.linux import filter as kfilter
from sockgate.policy.ir import Action, AddrMatch, Rule, Service
from sockgate.policy.source import Span

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only")

DENIED_V4 = ipaddress.ip_network("127.77.5.0/24")  # in the policy
ALLOWED_V4 = ipaddress.ip_network("127.77.6.0/24")  # between two networks of the policy


def _optmem() -> int:
    return int(Path("/proc/sys/net/core/optmem_max").read_text())


def _largest_v4_service(seed: int = 3) -> Service:
    """``max_ranges(4)`` ranges: /24s spread over the whole space, with two known ones."""
    n = (max_ranges(4) - 1) // 2
    rnd = random.Random(seed)
    picks = set(rnd.sample(range(1 << 23), n + 10))
    picks.discard(int(ALLOWED_V4.network_address) >> 9)
    picks.discard((int(ALLOWED_V4.network_address) >> 9) - 1)
    picks.discard((int(ALLOWED_V4.network_address) >> 9) + 1)
    picks.add(int(DENIED_V4.network_address) >> 9)
    nets = [ipaddress.IPv4Network((p << 9, 24)) for p in sorted(picks)[:n]]
    if DENIED_V4 not in nets:
        nets[-1] = DENIED_V4
    nets.append(ipaddress.ip_network("::1/128"))
    rule = Rule(Action.DENY, AddrMatch(tuple(nets)), Span("big.conf", 1, 1), "deny @big")
    return Service("largest", (rule,), Action.ALLOW)


def _largest_v6_service() -> Service:
    n = (max_ranges(6, 64) - 1) // 2  # /64 networks: the largest IPv6 program by instructions
    rnd = random.Random(5)
    picks = sorted(rnd.sample(range(1 << 40), n))
    nets = [ipaddress.IPv6Network(((0x2001 << 112) | (p << 66), 64)) for p in picks]
    rule = Rule(Action.DENY, AddrMatch(tuple(nets)), Span("big.conf", 1, 1), "deny @v6")
    return Service("largest6", (rule,), Action.ALLOW)


@pytest.fixture
def udp6() -> "socket.socket":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("make", [_largest_v4_service, _largest_v6_service])
def test_the_largest_program_attaches_swaps_and_reads_back(make: object, udp6: socket.socket) -> None:
    if _optmem() < 131072:
        pytest.skip(f"net.core.optmem_max is {_optmem()}, below the kernel default the limit assumes")
    prog = compile_service(make())  # type: ignore[operator]
    assert len(prog) > 3000, "not a large program: the test would prove little"
    kfilter.attach(udp6, prog.encode())
    kfilter.attach(udp6, prog.encode())  # a reload: both programs charged for a moment
    raw = kfilter.get(udp6)
    assert raw is not None and decode(raw) == prog.insns
    marker = identify(decode(raw))
    assert marker is not None and (marker.service, marker.digest) == (prog.service, prog.digest)


def test_a_program_at_the_converted_size_budget_swaps_in_place(udp6: socket.socket) -> None:
    """The compiler refuses programs whose converted size passes EBPF_BUDGET; one just under
    it must attach and be swapped for itself (both charged against optmem for a moment)."""
    if _optmem() < 131072:
        pytest.skip(f"net.core.optmem_max is {_optmem()}, below the kernel default the limit assumes")
    jumps = (program.EBPF_BUDGET // 8 - 8 - 6) // 3  # each: jge with two targets and a large k
    insns = tuple(Insn(BPF_JMP | BPF_JGE | BPF_K, 1, 2, 0x90000000 + i) for i in range(jumps))
    insns += (stmt(BPF_RET | BPF_K, 0),) * 3
    assert program.EBPF_BUDGET - 64 < program.ebpf_estimate(insns) * 8 <= program.EBPF_BUDGET
    assert verify.problems(insns) == []
    kfilter.attach(udp6, encode(insns))
    kfilter.attach(udp6, encode(insns))
    assert kfilter.get(udp6) == encode(insns)


def _send_from(sources: list[str], port: int, family: socket.AddressFamily, dst: str) -> None:
    for src in sources:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((src, 0))
            s.sendto(src.encode(), (dst, port))


def _received(sock: socket.socket, budget: float = 1.0) -> set[str]:
    got: set[str] = set()
    sock.settimeout(0.05)
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        try:
            got.add(sock.recv(100).decode())
        except socket.timeout:
            if got:
                break
    return got


def test_the_largest_program_decides_real_datagrams(udp6: socket.socket) -> None:
    prog = compile_service(_largest_v4_service())
    udp6.bind(("::", 0))
    port = udp6.getsockname()[1]
    kfilter.attach(udp6, prog.encode())
    v4 = [str(DENIED_V4[i]) for i in (0, 1, 254, 255)] + [str(ALLOWED_V4[i]) for i in (0, 1, 254, 255)]
    v4 += [str(DENIED_V4.network_address - 1), "127.0.0.1"]
    _send_from(v4, port, socket.AF_INET, "127.0.0.1")
    _send_from(["::1"], port, socket.AF_INET6, "::1")
    got = _received(udp6)
    want = {s for s in v4 + ["::1"] if interp.run(prog.insns, Packet.from_address(s))}
    assert want and got == want
    assert not any(ipaddress.ip_address(s) in DENIED_V4 for s in got) and "::1" not in got
