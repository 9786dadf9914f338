"""Forged IPv4-mapped sources from another host, against every enforcement point.

A real IPv4 client of a dual-stack socket arrives with an IPv4 header; an IPv6 header whose
source is ``::ffff:a.b.c.d`` is forged. Linux 6.18 delivers such UDP datagrams (the first test
shows it, and where the reply goes), so the filter, ``run`` and the proxy must refuse them
themselves; for TCP the kernel drops the SYN (``tcp_v6_conn_request``), and the tests check
that it still does. Packets are written whole by scapy and sent from the lab's client
namespace through a raw socket (support/forge.py).
"""

from __future__ import annotations

import ipaddress
import os
import random
import select
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from sockgate.decide import FORGED_REASON, decide_service
from sockgate.guard import guard
from sockgate.peers import Peer
from sockgate.policy.ir import Action, Policy
from sockgate.policy.parser import parse_policy
from support import netlab
from support.forge import Wire, ip6_in_hdr_errors, syn6, syn_received, udp6, wire  # noqa: F401 (wire: a fixture)
from support.verdicts import boundary_sources, nets, random_service, rule
from support.launch import Launched, echo_command, port_of
from support.proxyproc import ProxyProc, wait_for

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"), pytest.mark.netns]

POLICY = """
service dns {
    allow 127.0.0.0/8
    allow 198.18.0.0/15
    allow fd5b:5347::/64
    default deny
}
"""
ANY = "service dns {\n    allow all\n}\n"
CLIENT_PORT = 4444
# Mapped sources the policy allows as IPv4: the server's own loopback and the client host.
FORGED = ("::ffff:127.0.0.1", "::ffff:198.18.0.2")


def dual_stack(lab: netlab.Lab, kind: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        return s

    return lab.server.call(make)


def received(sock: socket.socket, until: bytes, timeout: float = 5.0) -> list[tuple[bytes, str]]:
    """Datagrams (payload, source) read from ``sock`` up to the one carrying ``until``, then
    whatever else is already queued."""
    got: list[tuple[bytes, str]] = []
    while not any(p == until for p, _ in got):
        if not select.select([sock], [], [], timeout)[0]:
            raise AssertionError(f"{until!r} never arrived; got {got}")
        data, addr = sock.recvfrom(2048)
        got.append((data, addr[0]))
    while select.select([sock], [], [], 0.05)[0]:
        data, addr = sock.recvfrom(2048)
        got.append((data, addr[0]))
    return got


def send_forged_then(wire: Wire, lab: netlab.Lab, port: int, marker: bytes) -> None:
    """Each FORGED source sends its own name; then a genuine IPv6 client sends ``marker``
    (same path, after them: once it arrives, the forged ones were delivered or dropped)."""
    packets = [udp6(src, lab.server_v6, CLIENT_PORT, port, src.encode()) for src in FORGED]
    wire.send(packets + [udp6(lab.client_v6, lab.server_v6, CLIENT_PORT, port, marker)])


# ------------------------------------------------------------------------------ the kernel


def test_the_kernel_delivers_forged_mapped_udp_and_replies_go_to_the_ipv4_address(lab: netlab.Lab, wire: Wire) -> None:
    """Why user space and the filter must care: an unguarded dual-stack socket gets the forged
    datagrams as from ``::ffff:127.0.0.1``, and a reply to that goes to 127.0.0.1 itself."""
    sock = dual_stack(lab, socket.SOCK_DGRAM)
    local = lab.server.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        local.bind(("127.0.0.1", CLIENT_PORT))
        send_forged_then(wire, lab, sock.getsockname()[1], b"end")
        got = received(sock, b"end")
        assert {(p.decode(), a) for p, a in got if p != b"end"} == {(s, s) for s in FORGED}
        sock.sendto(b"reply", ("::ffff:127.0.0.1", CLIENT_PORT))
        assert select.select([local], [], [], 5)[0]
        assert local.recvfrom(64) == (b"reply", ("127.0.0.1", sock.getsockname()[1]))
    finally:
        local.close()
        sock.close()


def test_the_kernel_drops_tcp_syns_from_mapped_sources(lab: netlab.Lab, wire: Wire) -> None:
    """tcp_v6_conn_request refuses them (counted in Ip6InHdrErrors): no SYN-RECV, no SYN-ACK.
    A SYN from an ordinary IPv6 address nobody answers for stays half-open: the control."""
    listener = dual_stack(lab, socket.SOCK_STREAM)
    try:
        errors = ip6_in_hdr_errors(lab.server)
        assert_syns_refused(lab, wire, listener.getsockname()[1])
        assert ip6_in_hdr_errors(lab.server) - errors == len(FORGED)
    finally:
        listener.close()


def assert_syns_refused(lab: netlab.Lab, wire: Wire, port: int, lost: str = "fd5b:5347::99") -> None:
    """SYNs from the FORGED sources, then one from ``lost`` (on the client's link, owned by
    nobody: its SYN-ACK is never answered, so it stays half-open): only ``lost`` is."""
    wire.send([syn6(src, lab.server_v6, CLIENT_PORT, port) for src in FORGED] + [syn6(lost, lab.server_v6, CLIENT_PORT, port)])
    wait_for(lambda: lost in syn_received(lab.server, port), timeout=5)
    half_open = syn_received(lab.server, port)
    assert lost in half_open and not [a for a in half_open if a.startswith("::ffff:")], half_open


# ------------------------------------------------------------------------------ the filter


@pytest.mark.parametrize("text", [POLICY, ANY], ids=["allow-ipv4-nets", "allow-all"])
def test_guarded_udp_socket_drops_forged_mapped_sources(lab: netlab.Lab, wire: Wire, text: str) -> None:
    sock = dual_stack(lab, socket.SOCK_DGRAM)
    client = lab.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        parse_policy(text, "mapped.conf").guard(sock, "dns")
        port = sock.getsockname()[1]
        send_forged_then(wire, lab, port, b"end")
        assert received(sock, b"end") == [(b"end", lab.client_v6)]
        client.bind((lab.client_v4, CLIENT_PORT))  # the real IPv4 client of those addresses
        client.sendto(b"v4", (lab.server_v4, port))
        assert received(sock, b"v4") == [(b"v4", f"::ffff:{lab.client_v4}")]
    finally:
        client.close()
        sock.close()


@pytest.mark.parametrize("text", [POLICY, ANY], ids=["allow-ipv4-nets", "allow-all"])
def test_guarded_tcp_listener_drops_forged_mapped_syns(lab: netlab.Lab, wire: Wire, text: str) -> None:
    listener = dual_stack(lab, socket.SOCK_STREAM)
    try:
        parse_policy(text, "mapped.conf").guard(listener, "dns")
        errors = ip6_in_hdr_errors(lab.server)
        assert_syns_refused(lab, wire, listener.getsockname()[1])
        assert ip6_in_hdr_errors(lab.server) == errors  # dropped by the filter, before TCP looked
    finally:
        listener.close()


SEED = int(os.environ.get("SOCKGATE_SEED", random.SystemRandom().randrange(1 << 32)))


@pytest.mark.parametrize("case", range(3))
def test_random_policies_let_no_forged_mapped_source_in(lab: netlab.Lab, wire: Wire, case: int) -> None:
    """Every edge of a random policy's IPv4 networks, mapped and sent in an IPv6 header: the
    engine denies each (a forged peer) and so does the kernel, however the policy decides the
    same address as IPv4. (SOCKGATE_SEED replays a run.)"""
    rng = random.Random(SEED * 10 + case)
    svc = random_service(rng, f"forged{case}", ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd5b:5347::/64"), n_rules=8)
    marker = rule(Action.ALLOW, nets(f"{lab.client_v6}/128"))  # the closing datagram is let in
    svc = replace(svc, rules=(marker, *svc.rules))
    sources = [f"::ffff:{a}" for a in boundary_sources(svc, rng, lambda a: a.version == 4, extra=20)]
    assert all(decide_service(svc, Peer.parse(s, header=6)).reason == FORGED_REASON for s in sources)
    sock = dual_stack(lab, socket.SOCK_DGRAM)
    try:
        guard(Policy(services=(svc,)), sock, svc.name)
        port = sock.getsockname()[1]
        wire.send([udp6(src, lab.server_v6, CLIENT_PORT, port, src.encode()) for src in sources])
        wire.send([udp6(lab.client_v6, lab.server_v6, CLIENT_PORT, port, b"end")])
        got = received(sock, b"end")
        allowed_as_ipv4 = sum(decide_service(svc, Peer.parse(s)).allowed for s in sources)
        assert got == [(b"end", lab.client_v6)], f"seed {SEED} case {case}: {svc}; {allowed_as_ipv4} allowed as IPv4"
    finally:
        sock.close()


# ------------------------------------------------------------------------------ sockgate run


def test_run_udp_service_never_answers_forged_mapped_sources(lab: netlab.Lab, wire: Wire, tmp_path: Path) -> None:
    """The echo service behind `run` would send its answers to 127.0.0.1 (here) and to the
    client host's IPv4 address; the filter on the passed socket keeps them from it."""
    policy = tmp_path / "p.conf"
    policy.write_text(POLICY)
    command, report = echo_command(tmp_path)
    argv = ["--policy", str(policy), "--service", "dns", "--listen", "udp://:0", *command]
    lr = lab.server.call(lambda: Launched(argv))  # started from inside the server namespace
    local = lab.server.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = lab.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        port = port_of(lr.started(1)[0][0])
        wait_for(report.exists)
        local.bind(("127.0.0.1", CLIENT_PORT))  # where answers to ::ffff:127.0.0.1 would go
        client.bind((lab.client_v4, CLIENT_PORT))  # ... and to ::ffff:198.18.0.2
        wire.send([udp6(src, lab.server_v6, CLIENT_PORT, port, src.encode()) for src in FORGED])
        client.sendto(b"v4", (lab.server_v4, port))  # the real IPv4 client, after them
        assert received(client, b"v4") == [(b"v4", lab.server_v4)]
        assert not select.select([local], [], [], 0.1)[0]
    finally:
        client.close()
        local.close()
        lr.stop()


# ------------------------------------------------------------------------------ the proxy


def start_proxy(lab: netlab.Lab, tmp_path: Path, procs: list[ProxyProc], listen: str, forward: str) -> ProxyProc:
    policy = tmp_path / "proxy.conf"
    policy.write_text(POLICY.replace("service dns {", f"service dns {{\n    listen {listen}\n    forward {forward}"))
    p = ProxyProc([str(policy)], tmp_path / "proxy.log", prefix=lab.server.argv())
    procs.append(p)
    p.ready()
    return p


def detach(lab: netlab.Lab, pid: int) -> None:
    """Take the kernel filter off the proxy's listeners, leaving user space on its own."""
    from support.proxyproc import SRC

    out = lab.server.run(sys.executable, "-m", "sockgate", "detach", "--pid", str(pid),
                         env={**os.environ, "PYTHONPATH": SRC})  # $SOCKGATE_BPFFS: where the proxy's eBPF guard is recorded
    assert "detached" in out.stdout, out.stdout + out.stderr


def test_proxy_udp_refuses_forged_mapped_sources_in_the_filter_and_in_user_space(
    lab: netlab.Lab, wire: Wire, tmp_path: Path, procs: list[ProxyProc]
) -> None:
    backend = lab.server.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = lab.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        backend.bind(("127.0.0.1", 0))
        p = start_proxy(lab, tmp_path, procs, "udp://:0", f"udp://127.0.0.1:{backend.getsockname()[1]}")
        port = p.tcp_port()
        client.bind((lab.client_v4, CLIENT_PORT))
        client.sendto(b"v4", (lab.server_v4, port))  # a real IPv4 client: its flow is [::ffff:198.18.0.2]:4444
        assert [d for d, _ in received(backend, b"v4")] == [b"v4"]
        send_forged_then(wire, lab, port, b"end")  # one of them has that flow's very address
        assert [d for d, _ in received(backend, b"end")] == [b"end"]
        p.wait_record(event="decision", peer=f"[{lab.client_v6}]:{CLIENT_PORT}")  # logged after them
        assert not p.find(event="decision", decision="deny")  # the kernel filter dropped them
        detach(lab, p.pid)
        send_forged_then(wire, lab, port, b"end again")
        client.sendto(b"v4 again", (lab.server_v4, port))
        assert sorted(d for d, _ in received(backend, b"v4 again")) == [b"end again", b"v4 again"]
        wait_for(lambda: len(p.find(event="decision", decision="deny")) == len(FORGED))  # (the log is buffered)
        denied = {r["peer"]: r for r in p.find(event="decision", decision="deny")}
        assert sorted(denied) == [f"[{src}]:{CLIENT_PORT}" for src in FORGED]
        for r in denied.values():
            assert (r["rule"], r["reason"]) == ("forged", FORGED_REASON)
        allowed = sorted(r["peer"] for r in p.find(event="decision", decision="allow"))
        assert allowed == [f"198.18.0.2:{CLIENT_PORT}", f"[{lab.client_v6}]:{CLIENT_PORT}"]
    finally:
        client.close()
        backend.close()


def test_proxy_tcp_listener_never_sees_forged_mapped_syns(lab: netlab.Lab, wire: Wire, tmp_path: Path, procs: list[ProxyProc]) -> None:
    p = start_proxy(lab, tmp_path, procs, "tcp://:0", "tcp://127.0.0.1:9")
    port = p.tcp_port()
    assert_syns_refused(lab, wire, port, lost="fd5b:5347::99")  # by the filter
    detach(lab, p.pid)
    errors = ip6_in_hdr_errors(lab.server)
    assert_syns_refused(lab, wire, port, lost="fd5b:5347::98")  # by the kernel's TCP
    assert ip6_in_hdr_errors(lab.server) - errors == len(FORGED)
    assert not p.find(event="decision")
