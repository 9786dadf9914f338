"""linux/diagbc + sockdiag.tcp_on_ports: the kernel's inet_diag filter returns exactly the TCP
sockets of the local ports asked for — listeners, accepted and client sockets, IPv4, IPv6 and
dual-stack — the same set a full dump filtered afterwards gives (the oracle), for any set of
ports up to the program's bound, and the kernel's audit accepts every program built."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate import cutoff
from sockgate.linux import sockdiag
from sockgate.linux.diagbc import MAX_PORTS, sport_attribute
from sockgate.policy.parser import parse_policy
from sockgate.resolve import resolve

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="sock_diag is Linux-only")]

SO_COOKIE = 57


def cookie(s: socket.socket) -> int:
    return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), sys.byteorder)


@contextlib.contextmanager
def sockets() -> Iterator[dict[int, int]]:
    """Listeners on four ports (IPv4, IPv6-only, dual-stack, IPv4 again), two connections to
    each: cookie → local port of every socket made (listeners, accepted, clients)."""
    made: list[socket.socket] = []
    try:
        for family, host, v6only in ((socket.AF_INET, "127.0.0.1", None), (socket.AF_INET6, "::1", 1),
                                     (socket.AF_INET6, "::", 0), (socket.AF_INET, "127.0.0.1", None)):
            srv = socket.socket(family, socket.SOCK_STREAM)
            made.append(srv)
            if v6only is not None:
                srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            srv.bind((host, 0))
            srv.listen(8)
            port = srv.getsockname()[1]
            for peer in ((host, port), ("127.0.0.1", port)) if v6only == 0 else ((host, port),) * 2:
                c = socket.create_connection(peer, timeout=5)
                made.append(c)
                made.append(srv.accept()[0])
        yield {cookie(s): s.getsockname()[1] for s in made}
    finally:
        for s in made:
            s.close()


def ours(socks: list[sockdiag.Sock], mine: dict[int, int]) -> set[int]:
    return {s.cookie for s in socks if s.cookie in mine}


@pytest.fixture(scope="module")
def mine() -> Iterator[dict[int, int]]:
    with sockets() as m:
        yield m


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_kernel_returns_exactly_the_ports_asked_for(mine: dict[int, int], data: st.DataObject) -> None:
    local = sorted(set(mine.values()))
    asked = data.draw(st.sets(st.sampled_from(local)) | st.just(set(local)))
    others = data.draw(st.sets(st.integers(0, 0xFFFF).filter(lambda p: p not in local), max_size=40))
    ports = asked | others
    everything = sockdiag.inventory(["tcp"], {"tcp": sockdiag.ALL_STATES})
    assert ours(everything, mine) == set(mine)  # the oracle sees every socket made
    expected = {c for c, p in mine.items() if p in ports}
    assert ours(sockdiag.tcp_on_ports(ports, sockdiag.ALL_STATES), mine) == expected
    # the kernel itself filtered: its raw answer has no other local port
    for family in () if not ports else (socket.AF_INET, socket.AF_INET6):
        request = sockdiag.INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, sockdiag.ALL_STATES) + sport_attribute(ports)
        for data_, off, _length in sockdiag._dump(family, request):
            sport, _ = sockdiag._PORTS.unpack(sockdiag.INET_DIAG_MSG.unpack_from(data_, off)[2])
            assert sport in ports


def test_the_largest_program_passes_the_kernels_audit(mine: dict[int, int]) -> None:
    local = set(mine.values())
    filler = [p for p in range(1, 0xFFFF) if p not in local][: MAX_PORTS - len(local)]
    ports = local | set(filler)
    assert len(ports) == MAX_PORTS
    assert ours(sockdiag.tcp_on_ports(ports, sockdiag.ALL_STATES), mine) == set(mine)
    assert ours(sockdiag.tcp_on_ports(set(filler), sockdiag.ALL_STATES), mine) == set()
    # past the bound: no program, the dump is filtered here instead — still exact
    more = local | set(range(1, MAX_PORTS + 50))
    assert ours(sockdiag.tcp_on_ports(more, sockdiag.ALL_STATES), mine) == set(mine)


@pytest.mark.skipif(os.geteuid() != 0, reason="SOCK_DESTROY needs CAP_NET_ADMIN")
def test_the_cutoff_ends_denied_connections_without_dumping_the_whole_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """cutoff.end_denied asks the kernel for its listeners' ports only, and still ends the
    denied connection (127.0.0.2) and keeps the allowed one (127.0.0.1)."""
    real = sockdiag._inet_dump

    def filtered_only(family: int, protocol: int, proto: str, states: int, ports: frozenset[int] | None = None) -> list[sockdiag.Sock]:
        assert ports, "the whole table was dumped"
        return real(family, protocol, proto, states, ports)

    monkeypatch.setattr(sockdiag, "_inet_dump", filtered_only)
    svc = resolve(parse_policy("service web {\n    allow 127.0.0.1\n    default deny\n}\n"), "web")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        pairs = []
        for source in ("127.0.0.1", "127.0.0.2"):
            c = socket.socket()
            c.settimeout(5)
            c.bind((source, 0))
            c.connect(("127.0.0.1", port))
            pairs.append((c, srv.accept()[0]))
        try:
            assert cutoff.end_denied(svc, [cutoff.TcpListener(ipaddress.ip_address("127.0.0.1"), port)]) == 1
            (ok_c, ok_s), (gone_c, gone_s) = pairs
            ok_c.sendall(b"x")
            assert ok_s.recv(1) == b"x"
            with pytest.raises(ConnectionResetError):
                gone_c.recv(1)
        finally:
            for c, s_ in pairs:
                c.close()
                s_.close()


def test_identities_of_udp_by_port_are_those_a_full_look_finds_on_the_ports() -> None:
    """The poll's cheap look with a UDP port filter: bound UDP sockets of those ports only,
    IPv4 and IPv6, the same the unfiltered look finds there."""
    made = []
    try:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")) * 3:
            u = socket.socket(family, socket.SOCK_DGRAM)
            made.append(u)
            u.bind((host, 0))
        ports = {u.getsockname()[1]: u for u in made}
        chosen = frozenset(list(ports)[:3])
        states = {"udp": 1 << sockdiag.TCP_CLOSE}
        inodes = {os.fstat(u.fileno()).st_ino: p for p, u in ports.items()}
        full = {i for _k, _f, i in sockdiag.identities(["udp"], states) if i in inodes}
        assert full == set(inodes)
        got = {i for _k, _f, i in sockdiag.identities(["udp"], states, ports={"udp": chosen}) if i in inodes}
        assert got == {i for i, p in inodes.items() if p in chosen}
        assert sockdiag.identities(["udp"], states, ports={"udp": frozenset()}) == set()
    finally:
        for u in made:
            u.close()
