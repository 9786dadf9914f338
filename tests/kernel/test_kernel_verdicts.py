"""The kernel's verdict equals the decision engine's, for random policies.

Each case builds a random address-only service, guards a real socket with it, and sends a TCP
connect and a UDP datagram from every edge of every network in the policy (start-1, start,
end, end+1) plus random addresses; the sources that got through must be exactly those
``decide_service`` allows. IPv4 runs on loopback (any 127.x.y.z is a local source address);
IPv6 and IPv4 from "another host" run through a two-namespace lab, against a dual-stack
AF_INET6 socket that receives both families.

Seeded: set SOCKGATE_SEED to replay a run; the seed is in every failure message.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import sys
from typing import Any

import pytest

from sockgate.decide import decide_service
from sockgate.guard import guard, guard_of
from sockgate.bpf import compile_service
from sockgate.peers import Peer
from sockgate.policy.ir import Policy, Service
from support import netlab
from support.verdicts import boundary_sources, local_sockets, loopback_usable, random_service, tcp_reach, udp_reach

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"), pytest.mark.slow]

SEED = int(os.environ.get("SOCKGATE_SEED", random.SystemRandom().randrange(1 << 32)))
LOOPBACK_CASES = 6
LAB_CASES = 3
V4_LOOP = ipaddress.ip_network("127.16.0.0/12")
V4_LAB = ipaddress.ip_network("198.18.0.0/15")
V6_LAB = ipaddress.ip_network("fd5b:5347::/64")
LAB_RESERVED = {ipaddress.ip_address(a) for a in (
    "198.18.0.0", "198.18.0.1", "198.18.255.255", "198.19.0.0", "198.19.255.255", "fd5b:5347::", "fd5b:5347::1")}


def expected(svc: Service, sources: list[str]) -> dict[str, bool]:
    return {s: decide_service(svc, Peer.parse(s)).allowed for s in sources}


def fill(rng: random.Random, base: Any, n: int, usable: Any, have: set[str]) -> list[str]:
    """``n`` more addresses drawn uniformly from ``base`` (a policy may have few edges)."""
    out = []
    while len(out) < n:
        a = base[rng.randrange(base.num_addresses)]
        if usable(a) and str(a) not in have:
            have.add(str(a))
            out.append(str(a))
    return out


def diff(svc: Service, want: dict[str, bool], got: dict[str, bool], how: str, seed: int) -> str:
    bad = [f"{s}: engine {'allow' if want[s] else 'deny'}, kernel {'allow' if got[s] else 'deny'}" for s in want if want[s] != got[s]]
    return f"{how}, seed {seed} (SOCKGATE_SEED={SEED}): {len(bad)} mismatches: {bad[:10]}\nservice: {svc}"


def _attach(sock: socket.socket, svc: Service) -> None:
    g = guard(Policy(services=(svc,)), sock, svc.name)  # the library path, reload included
    assert g.digest == compile_service(svc).digest == guard_of(sock).digest


@pytest.mark.parametrize("case", range(LOOPBACK_CASES))
def test_loopback_ipv4(case: int) -> None:
    rng = random.Random(SEED * 100 + case)
    svc = random_service(rng, f"loop{case}", V4_LOOP, V6_LAB if case % 2 else None, n_rules=10)
    sources = boundary_sources(svc, rng, loopback_usable, extra=40)
    sources += fill(rng, V4_LOOP, 30, loopback_usable, set(sources))
    want = expected(svc, sources)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1024)
        u.bind(("127.0.0.1", 0))
        u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        _attach(lst, svc)
        _attach(u, svc)
        tcp = tcp_reach({socket.AF_INET: lst.getsockname()}, sources, local_sockets(), wait=1.0, listener=lst)
        udp = udp_reach(u, {socket.AF_INET: u.getsockname()}, sources, local_sockets(socket.SOCK_DGRAM))
    assert tcp == want, diff(svc, want, tcp, "TCP over loopback", case)
    assert udp == want, diff(svc, want, udp, "UDP over loopback", case)


def _lab_usable(a: Any) -> bool:
    if a in LAB_RESERVED:
        return False
    return (a.version == 4 and a in V4_LAB) or (a.version == 6 and a in V6_LAB)


def test_lab_dual_stack(lab: netlab.Lab) -> None:
    """Other hosts, IPv4 and IPv6, against one dual-stack AF_INET6 socket per protocol."""
    rng = random.Random(SEED)
    cases = [random_service(rng, f"lab{i}", V4_LAB, V6_LAB, n_rules=10) for i in range(LAB_CASES)]
    per_case = [boundary_sources(svc, rng, _lab_usable, extra=50) for svc in cases]
    for srcs in per_case:
        srcs += fill(rng, V4_LAB, 10, _lab_usable, set(srcs)) + fill(rng, V6_LAB, 10, _lab_usable, set(srcs))
    every = sorted({s for srcs in per_case for s in srcs} - {lab.client_v4, lab.client_v6})
    lab.add_client_addresses(every)

    server = netlab.dual_stack_server
    lst, u = lab.server.call(lambda: (server(socket.SOCK_STREAM), server(socket.SOCK_DGRAM)))

    def make_client(kind: int) -> Any:
        return lambda fam, n: lab.client.call(lambda: [socket.socket(fam, kind) for _ in range(n)])

    total = 0
    verdicts: set[bool] = set()
    with lst, u:
        for i, (svc, sources) in enumerate(zip(cases, per_case)):
            want = expected(svc, sources)
            _attach(lst, svc)
            _attach(u, svc)
            tdest = {socket.AF_INET: (lab.server_v4, lst.getsockname()[1]), socket.AF_INET6: (lab.server_v6, lst.getsockname()[1])}
            udest = {socket.AF_INET: (lab.server_v4, u.getsockname()[1]), socket.AF_INET6: (lab.server_v6, u.getsockname()[1])}
            tcp = tcp_reach(tdest, sources, make_client(socket.SOCK_STREAM), wait=2.5, listener=lst)
            udp = udp_reach(u, udest, sources, make_client(socket.SOCK_DGRAM))
            assert tcp == want, diff(svc, want, tcp, "TCP through the lab", i)
            assert udp == want, diff(svc, want, udp, "UDP through the lab", i)
            total += len(sources)
            verdicts.update(want.values())
    assert total >= 200, f"only {total} source addresses exercised"
    assert verdicts == {True, False}, "the random policies allowed everyone or no one"
