"""The kernel's verdict equals the decision engine's, for random policies, on both backends.

Each example draws a random address-only service (hypothesis draws the seed of
``support.verdicts.random_service``), guards real sockets with it through the library, once
with classic BPF and once with eBPF (the backend's program: service state, the protocol read
from each packet, pinned in a private bpffs), and sends a TCP connect and a UDP datagram from
every edge of every network in the policy (start-1, start, end, end+1) plus random addresses;
on each backend the sources that got through must be exactly those ``decide_service`` allows.
Both backends see the same policy and the same sources, measured side by side.

IPv4 runs on loopback (any 127.x.y.z is a local source address). IPv6 and IPv4 from "another
host" run through a two-namespace lab: a dual-stack AF_INET6 socket per protocol receives
both families (IPv4 clients with an IPv4 header), an IPV6_V6ONLY one the IPv6 sources. Forged
IPv4-mapped sources (``::ffff:a.b.c.d`` in an IPv6 header, written by scapy from every IPv4
edge) must be denied by both: no datagram delivered, and no SYN reaching TCP (which would
count it in Ip6InHdrErrors).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.bpf import compile_service
from sockgate.decide import FORGED_REASON, decide_service
from sockgate.guard import guard, guard_of
from sockgate.peers import Peer
from sockgate.policy.ir import Policy, Service
from support import netlab
from support.forge import Wire, ip6_in_hdr_errors, syn6, syn_received, udp6, wire  # noqa: F401 (wire: a fixture)
from support.verdicts import (
    SocketFactory,
    boundary_sources,
    local_sockets,
    loopback_usable,
    random_service,
    tcp_reach,
    udp_reach,
)

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"),
              pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF and mounting bpffs need root"),
              pytest.mark.slow, pytest.mark.root]

T = TypeVar("T")
BACKENDS = ("cbpf", "ebpf")
V4_LOOP = ipaddress.ip_network("127.16.0.0/12")
V4_LAB = ipaddress.ip_network("198.18.0.0/15")
V6_LAB = ipaddress.ip_network("fd5b:5347::/64")
LAB_RESERVED = {ipaddress.ip_address(a) for a in (
    "198.18.0.0", "198.18.0.1", "198.18.255.255", "198.19.0.0", "198.19.255.255", "fd5b:5347::", "fd5b:5347::1")}
FORGED_PORT = 4444
Verdicts = dict[str, bool]


def expected(svc: Service, sources: list[str]) -> Verdicts:
    return {s: decide_service(svc, Peer.parse(s)).allowed for s in sources}


def fill(rng: random.Random, base: Any, n: int, usable: Any, have: set[str]) -> list[str]:
    """``n`` more addresses drawn uniformly from ``base`` (a policy may have few edges)."""
    out: list[str] = []
    while len(out) < n:
        a = base[rng.randrange(base.num_addresses)]
        if usable(a) and str(a) not in have:
            have.add(str(a))
            out.append(str(a))
    return out


def diff(svc: Service, want: Verdicts, got: Verdicts, how: str, seed: int) -> str:
    bad = [f"{s}: engine {'allow' if want[s] else 'deny'}, kernel {'allow' if got.get(s) else 'deny'}"
           for s in want if want[s] != got.get(s)]
    return f"{how}, seed {seed}: {len(bad)} mismatches: {bad[:10]}\nservice: {svc}"


def _attach(sock: socket.socket, svc: Service, backend: str) -> None:
    g = guard(Policy(services=(svc,)), sock, svc.name, backend=backend)  # the library path, reload included
    info = guard_of(sock)
    assert (g.backend, info.backend, info.service, info.digest) == (backend, backend, svc.name, g.digest)
    if backend == "cbpf":
        assert g.digest == compile_service(svc).digest


@dataclass
class Tally:
    """What the examples of one test exercised: a differential needs sources, and verdicts
    of both kinds (random policies that allow everyone or no one prove little)."""

    sources: int = 0
    verdicts: set[bool] = field(default_factory=set)

    def add(self, want: Verdicts) -> None:
        self.sources += len(want)
        self.verdicts.update(want.values())

    def check(self, least: int) -> None:
        assert self.sources >= least, f"only {self.sources} source addresses exercised"
        assert self.verdicts == {True, False}, "the random policies allowed everyone or no one"


def side_by_side(jobs: dict[str, Callable[[], T]]) -> dict[str, T]:
    """Run the measurements at once (their waits overlap), each job's result by its name."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


# ------------------------------------------------------------------------------ loopback


def loopback_pair(svc: Service, backend: str) -> tuple[socket.socket, socket.socket]:
    lst, u = socket.socket(socket.AF_INET, socket.SOCK_STREAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1024)
        u.bind(("127.0.0.1", 0))
        u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        _attach(lst, svc, backend)
        _attach(u, svc, backend)
    except BaseException:
        lst.close()
        u.close()
        raise
    return lst, u


def test_loopback_ipv4(bpffs: str) -> None:
    tally = Tally()

    @settings(max_examples=4, deadline=None)
    @given(seed=st.integers(0, 2**32 - 1))
    def examples(seed: int) -> None:
        loopback_example(seed, tally)

    examples()
    tally.check(300)


def loopback_example(seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    svc = random_service(rng, "loop", V4_LOOP, V6_LAB if seed % 2 else None, n_rules=10)
    sources = boundary_sources(svc, rng, loopback_usable, extra=40)
    sources += fill(rng, V4_LOOP, 30, loopback_usable, set(sources))
    want = expected(svc, sources)
    tally.add(want)
    socks: dict[str, tuple[socket.socket, socket.socket]] = {}
    try:
        for b in BACKENDS:
            socks[b] = loopback_pair(svc, b)

        def measure(lst: socket.socket, u: socket.socket) -> Callable[[], tuple[Verdicts, Verdicts]]:
            return lambda: (tcp_reach({socket.AF_INET: lst.getsockname()}, sources, local_sockets(), wait=1.0, listener=lst),
                            udp_reach(u, {socket.AF_INET: u.getsockname()}, sources, local_sockets(socket.SOCK_DGRAM)))

        got = side_by_side({b: measure(*socks[b]) for b in BACKENDS})
    finally:
        for pair in socks.values():
            for s in pair:
                s.close()
    for b, (tcp, udp) in got.items():
        assert tcp == want, diff(svc, want, tcp, f"TCP over loopback, {b}", seed)
        assert udp == want, diff(svc, want, udp, f"UDP over loopback, {b}", seed)


# ------------------------------------------------------------------------------ the lab


def _lab_usable(a: Any) -> bool:
    if a in LAB_RESERVED:
        return False
    return (a.version == 4 and a in V4_LAB) or (a.version == 6 and a in V6_LAB)


STACKS = {"dual-stack": netlab.dual_stack_server, "v6only": netlab.v6_only_server}


def test_lab_dual_stack(bpffs: str, lab: netlab.Lab, wire: Wire) -> None:
    """Other hosts, IPv4 and IPv6, against a dual-stack and an IPv6-only socket per protocol
    and backend; forged mapped sources against the dual-stack ones."""
    tally = Tally()

    @settings(max_examples=3, deadline=None)
    @given(seed=st.integers(0, 2**32 - 1))
    def examples(seed: int) -> None:
        lab_example(lab, wire, seed, tally)

    examples()
    tally.check(200)


def lab_example(lab: netlab.Lab, wire: Wire, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    svc = random_service(rng, "lab", V4_LAB, V6_LAB, n_rules=10)
    sources = boundary_sources(svc, rng, _lab_usable, extra=50)
    sources += fill(rng, V4_LAB, 10, _lab_usable, set(sources)) + fill(rng, V6_LAB, 10, _lab_usable, set(sources))
    sources = sorted(set(sources) - {lab.client_v4, lab.client_v6})
    lab.add_client_addresses([s for s in sources if s not in lab.extra])  # (the lab outlives one example)
    want = expected(svc, sources)
    tally.add(want)
    v6 = [s for s in sources if ":" in s]
    forged = [f"::ffff:{s}" for s in sources if ":" not in s][:60]
    assert all(decide_service(svc, Peer.parse(f, header=6)).reason == FORGED_REASON for f in forged)

    socks: dict[tuple[str, str], tuple[socket.socket, socket.socket]] = {}
    try:
        for b in BACKENDS:
            for stack, make in STACKS.items():
                pair = lab.server.call(lambda: (make(socket.SOCK_STREAM), make(socket.SOCK_DGRAM)))
                socks[b, stack] = pair
                for s in pair:
                    _attach(s, svc, b)
        hdr_errors = ip6_in_hdr_errors(lab.server)
        for b in BACKENDS:  # forged first: the genuine traffic after them shows they were delivered or dropped
            lst, u = socks[b, "dual-stack"]
            wire.send([udp6(f, lab.server_v6, FORGED_PORT, u.getsockname()[1], f.encode()) for f in forged]
                      + [syn6(f, lab.server_v6, FORGED_PORT, lst.getsockname()[1]) for f in forged])
        jobs = {f"{b} {stack}": lab_job(lab, socks[b, stack], sources if stack == "dual-stack" else v6)
                for b in BACKENDS for stack in STACKS}
        got = side_by_side(jobs)
        half_open = {b: syn_received(lab.server, socks[b, "dual-stack"][0].getsockname()[1]) for b in BACKENDS}
        assert ip6_in_hdr_errors(lab.server) == hdr_errors, "a forged SYN got past the filter to TCP"
    finally:
        for pair in socks.values():
            for s in pair:
                s.close()
    for name, (tcp, udp) in got.items():
        subset = want if "dual" in name else {s: want[s] for s in v6}
        assert tcp == subset, diff(svc, subset, tcp, f"TCP through the lab, {name}", seed)
        assert {s: udp[s] for s in subset} == subset, diff(svc, subset, udp, f"UDP through the lab, {name}", seed)
        assert not [f for f in forged if udp.get(f)], f"{name}, seed {seed}: forged sources delivered; {svc}"
    assert not [a for b in BACKENDS for a in half_open[b] if a.startswith("::ffff:")], half_open


def lab_job(lab: netlab.Lab, pair: tuple[socket.socket, socket.socket], sources: list[str]) -> Callable[[], tuple[Verdicts, Verdicts]]:
    lst, u = pair

    def client(kind: int) -> SocketFactory:
        return lambda fam, n: lab.client.call(lambda: [socket.socket(fam, kind) for _ in range(n)])

    def dest(s: socket.socket) -> dict[int, tuple[str, int]]:
        return {socket.AF_INET: (lab.server_v4, s.getsockname()[1]), socket.AF_INET6: (lab.server_v6, s.getsockname()[1])}

    return lambda: (tcp_reach(dest(lst), sources, client(socket.SOCK_STREAM), wait=2.5, listener=lst),
                    udp_reach(u, dest(u), sources, client(socket.SOCK_DGRAM)))
