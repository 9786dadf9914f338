"""The collection of a service's pinned state (REVIEW3 R10): a service directory whose last
program was collected goes at the next collection — its counters freed — unless it still
holds an active ban; the directory of a service a live socket carries survives every
collection with its counters and bans. Real sockets, real maps, a private bpffs (conftest)."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time

import pytest

from sockgate.kernel import Kernel, Slot, Step
from sockgate.kernel.bpfops import LinuxBpf
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.ebpf import EbpfBackend
from sockgate.kernel.sockets import LINUX_OPS
from sockgate.policy.parser import parse_policy
from sockgate.resolve import resolve

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF and mounting bpffs need root"),
    pytest.mark.root,
]

POLICY = "".join(f"service {name} {{\n    allow 127.0.0.1\n    default deny\n}}\n" for name in ("kept", "gone", "banned"))


def guarded(kernel: Kernel, name: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    kernel.apply([Step(Slot(s.fileno(), name), kernel.load(kernel.compile(resolve(parse_policy(POLICY), name), backend="ebpf")))])
    return s


def refuse_one(server: socket.socket) -> None:
    """A datagram from a source the policy denies: counted, not delivered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.0.2", 0))
        c.sendto(b"x", server.getsockname())


def test_orphaned_service_state_is_collected_and_a_live_guards_is_not(bpffs: str) -> None:
    backend = EbpfBackend(LinuxBpf(), bpffs)
    kernel = Kernel([ClassicBackend(LINUX_OPS), backend], LINUX_OPS)
    collector = EbpfBackend(LinuxBpf(), bpffs, grace=0)
    services = f"{bpffs}/sockgate/services"
    kept = guarded(kernel, "kept")
    try:
        refuse_one(kept)
        gone, banned = guarded(kernel, "gone"), guarded(kernel, "banned")
        refuse_one(gone)
        backend.bans("banned").put(ipaddress.ip_network("192.0.2.7/32"), time.monotonic_ns() + 600 * 10**9, 1)
        backend.bans("kept").put(ipaddress.ip_network("192.0.2.8/32"), 0, 1)
        gone.close()
        banned.close()
        assert collector.collect() == (2, 2)  # the closed sockets' entries and programs
        assert sorted(os.listdir(services)) == ["banned", "gone", "kept"]  # state goes one collection later
        collector.collect()
        assert sorted(os.listdir(services)) == ["banned", "kept"]  # no program, no active ban: gone
        for _ in range(2):
            collector.collect()
        assert sorted(os.listdir(services)) == ["banned", "kept"]
        info = kernel.read(kept.fileno())
        assert (info.state, info.service, info.refused) == ("sockgate", "kept", 1)  # its counters survived
        assert [str(n) for n, _ in backend.bans("kept").list()] == ["192.0.2.8/32"]
        assert [str(n) for n, _ in backend.bans("banned").list()] == ["192.0.2.7/32"]
        refuse_one(kept)
        assert backend.refused("kept") == 2  # still the map the live program writes
    finally:
        kept.close()


def test_a_ban_lifted_lets_the_orphan_go(bpffs: str) -> None:
    backend = EbpfBackend(LinuxBpf(), bpffs)
    kernel = Kernel([ClassicBackend(LINUX_OPS), backend], LINUX_OPS)
    collector = EbpfBackend(LinuxBpf(), bpffs, grace=0)
    guarded(kernel, "banned").close()
    network = ipaddress.ip_network("192.0.2.7/32")
    backend.bans("banned").put(network, 0, 1)
    for _ in range(3):
        collector.collect()
    assert os.listdir(f"{bpffs}/sockgate/services") == ["banned"]
    assert backend.bans("banned").delete(network)
    collector.collect()
    assert os.listdir(f"{bpffs}/sockgate/services") == []
