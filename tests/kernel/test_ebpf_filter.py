"""The eBPF socket filter in the real kernel: loaded with its LPM-trie maps, attached with
SO_ATTACH_BPF, it lets through exactly the sources the decision engine allows.

Random address-only services (hypothesis draws the seed of support.verdicts.random_service)
guard a TCP listener and a UDP socket; a connect and a datagram from every network edge of the
policy, plus random addresses, must get through exactly when ``decide_service`` allows them.
IPv4 runs on loopback; IPv4 and IPv6 from another host run through the two-namespace lab,
against dual-stack AF_INET6 sockets (IPv4 clients arrive there with an IPv4 header). Also: a
program the verifier refuses is a readable error; a map of 100,000 prefixes loads in bounded
time and decides; pinned objects outlive the fds that made them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.decide import decide_service
from sockgate.ebpf import EbpfProgram, LpmKey, Verdict, compile_service
from sockgate.kernel.ebpfopts import OPTIONS
from sockgate.errors import AdapterError
from sockgate.ebpf.insn import BPF_REG_0, BPF_REG_2, ProgType, encode, exit_, mov64
from sockgate.linux import bpfsys
from sockgate.peers import Peer
from sockgate.policy.ir import Action, AddrMatch, Service
from support import netlab
from support.ebpfstate import Loaded as StateLoaded
from support.verdicts import boundary_sources, local_sockets, loopback_usable, nets, random_service, service, tcp_reach, udp_reach

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF socket filters needs root (CAP_BPF)"),
    pytest.mark.root,
]

V4_LOOP = ipaddress.ip_network("127.16.0.0/12")
V4_LAB = ipaddress.ip_network("198.18.0.0/15")
V6_LAB = ipaddress.ip_network("fd5b:5347::/64")
LAB_RESERVED = {ipaddress.ip_address(a) for a in (
    "198.18.0.0", "198.18.0.1", "198.18.255.255", "198.19.0.0", "198.19.255.255", "fd5b:5347::", "fd5b:5347::1")}
FEW = settings(max_examples=3, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Loaded:
    """A compiled program with its maps created and filled and the program loaded; every fd
    closed by ``close`` (the sockets it is attached to keep their own reference)."""

    def __init__(self, prog: EbpfProgram) -> None:
        self.prog = prog
        self.maps: dict[str, int] = {}
        try:
            for m in prog.maps:
                s = m.spec
                self.maps[s.name] = bpfsys.map_create(s.map_type, s.key_size, s.value_size, s.max_entries, s.flags, s.name)
                bpfsys.map_update_many(self.maps[s.name], *m.packed())
            self.fd = bpfsys.prog_load(prog.prog_type, prog.link(self.maps), prog.name)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in [*self.maps.values(), getattr(self, "fd", -1)]:
            if fd >= 0:
                os.close(fd)
        self.maps.clear()
        self.fd = -1


@contextlib.contextmanager
def loaded(svc: Service | EbpfProgram) -> Iterator[Loaded]:
    lo = Loaded(svc if isinstance(svc, EbpfProgram) else compile_service(svc))
    try:
        yield lo
    finally:
        lo.close()


def expected(svc: Service, sources: list[str]) -> dict[str, bool]:
    return {s: decide_service(svc, Peer.parse(s)).allowed for s in sources}


def mismatches(want: dict[str, bool], got: dict[str, bool]) -> list[str]:
    return [f"{s}: engine {'allow' if want[s] else 'deny'}, eBPF {'allow' if got[s] else 'deny'}" for s in want if want[s] != got[s]]


# ------------------------------------------------------------------------ differentials


def loopback_reach(prog_fd: int, sources: list[str]) -> tuple[dict[str, bool], dict[str, bool]]:
    """What each of ``sources`` reaches of a TCP listener and of a UDP socket on 127.0.0.1, both
    carrying the program ``prog_fd``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1024)
        u.bind(("127.0.0.1", 0))
        u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        for s in (lst, u):
            bpfsys.attach(s, prog_fd)
            assert bpfsys.filter_kind(s) == "ebpf"
        tcp = tcp_reach({socket.AF_INET: lst.getsockname()}, sources, local_sockets(), wait=1.0, listener=lst)
        return tcp, udp_reach(u, {socket.AF_INET: u.getsockname()}, sources, local_sockets(socket.SOCK_DGRAM))


@FEW
@given(st.integers(0, 2**32 - 1))
def test_loopback_ipv4_agrees_with_the_engine(seed: int) -> None:
    rng = random.Random(seed)
    svc = random_service(rng, "loop", V4_LOOP, V6_LAB if seed % 2 else None, n_rules=10)
    sources = boundary_sources(svc, rng, loopback_usable, extra=30)
    sources += [str(V4_LOOP[rng.randrange(V4_LOOP.num_addresses)]) for _ in range(20)]
    sources = sorted(set(sources))
    want = expected(svc, sources)
    with loaded(svc) as lo:
        tcp, udp = loopback_reach(lo.fd, sources)
    assert mismatches(want, tcp) == [], f"TCP, seed {seed}: {svc}"
    assert mismatches(want, udp) == [], f"UDP, seed {seed}: {svc}"


@FEW
@given(st.integers(0, 2**32 - 1))
def test_the_backends_program_agrees_with_the_engine_on_tcp_and_udp(seed: int) -> None:
    """The program the backend loads (service state, the protocol read from each packet:
    ``kernel.ebpfopts.OPTIONS``) on a TCP and a UDP socket at once decides as the engine."""
    rng = random.Random(seed)
    svc = random_service(rng, "loop", V4_LOOP, None, n_rules=10)
    sources = sorted(set(boundary_sources(svc, rng, loopback_usable, extra=20)))
    want = expected(svc, sources)
    lo = StateLoaded(compile_service(svc, options=OPTIONS))
    try:
        tcp, udp = loopback_reach(lo.fd, sources)
    finally:
        lo.close()
    assert mismatches(want, tcp) == [], f"TCP, seed {seed}: {svc}"
    assert mismatches(want, udp) == [], f"UDP, seed {seed}: {svc}"


def _lab_usable(a: Any) -> bool:
    return a not in LAB_RESERVED and ((a.version == 4 and a in V4_LAB) or (a.version == 6 and a in V6_LAB))


@FEW
@given(seed=st.integers(0, 2**32 - 1))
def test_lab_dual_stack_agrees_with_the_engine(lab: netlab.Lab, seed: int) -> None:
    """IPv4 and IPv6 clients in another namespace, one dual-stack socket per protocol."""
    rng = random.Random(seed)
    svc = random_service(rng, "lab", V4_LAB, V6_LAB, n_rules=8)
    sources = sorted(set(boundary_sources(svc, rng, _lab_usable, extra=30)) - {lab.client_v4, lab.client_v6})
    lab.add_client_addresses([s for s in sources if s not in lab.extra])  # (the lab outlives one example)
    want = expected(svc, sources)
    lst, u = lab.server.call(lambda: (netlab.dual_stack_server(socket.SOCK_STREAM), netlab.dual_stack_server(socket.SOCK_DGRAM)))

    def client(kind: int) -> Any:
        return lambda fam, n: lab.client.call(lambda: [socket.socket(fam, kind) for _ in range(n)])

    with loaded(svc) as lo, lst, u:
        bpfsys.attach(lst, lo.fd)
        bpfsys.attach(u, lo.fd)
        port_t, port_u = lst.getsockname()[1], u.getsockname()[1]
        tcp = tcp_reach({socket.AF_INET: (lab.server_v4, port_t), socket.AF_INET6: (lab.server_v6, port_t)},
                        sources, client(socket.SOCK_STREAM), wait=2.0, listener=lst)
        udp = udp_reach(u, {socket.AF_INET: (lab.server_v4, port_u), socket.AF_INET6: (lab.server_v6, port_u)},
                        sources, client(socket.SOCK_DGRAM))
    assert mismatches(want, tcp) == [], f"TCP, seed {seed}: {svc}"
    assert mismatches(want, udp) == [], f"UDP, seed {seed}: {svc}"


def _frame(version: int, src: bytes) -> bytes:
    """An Ethernet frame whose network header has ``version`` and source ``src``."""
    if version == 4:
        return bytes(12) + b"\x08\x00" + bytes([0x45]) + bytes(11) + src + bytes(4)
    if version == 6:
        return bytes(12) + b"\x86\xdd" + bytes([0x60]) + bytes(7) + src + bytes(16)
    return bytes(12) + b"\x08\x00" + bytes([version << 4 | 5]) + bytes(19)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_every_boundary_agrees_with_the_engine_in_test_runs(seed: int) -> None:
    """The loaded program run by BPF_PROG_TEST_RUN on frames from every network edge (IPv4,
    IPv6, the IPv4 ones also forged as ::ffff:a.b.c.d in an IPv6 header, and other versions):
    no namespaces, so many more policies and addresses than the socket tests."""
    rng = random.Random(seed)
    svc = random_service(rng, "tr", ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"), n_rules=10)
    cases: list[tuple[bytes, Peer]] = [(_frame(v, b""), Peer()) for v in (0, 5, 7, 15)]
    for src in boundary_sources(svc, rng, lambda a: True, extra=40):
        a = ipaddress.ip_address(src)
        cases.append((_frame(a.version, a.packed), Peer(address=a, header=a.version)))
        if a.version == 4:
            m = ipaddress.IPv6Address((0xFFFF << 32) | int(a))
            cases.append((_frame(6, m.packed), Peer(address=m, header=6)))
    with loaded(svc) as lo:
        bad = [f"{peer.address} (header {peer.header}): engine {want}"
               for frame, peer in cases
               if (bpfsys.prog_test_run(lo.fd, frame)[0] == 0xFFFFFFFF) != (want := decide_service(svc, peer).action is Action.ALLOW)]
    assert bad == [], f"seed {seed}: {svc}"


# -------------------------------------------------------------------------- the adapter


def test_a_verifier_refusal_is_a_readable_error() -> None:
    bad = encode([mov64(BPF_REG_0, BPF_REG_2), exit_()])  # reads r2, which holds nothing
    with pytest.raises(bpfsys.VerifierError) as info:
        bpfsys.prog_load(ProgType.SOCKET_FILTER, bad, "sg_bad")
    message = str(info.value)
    assert message.startswith("load BPF program sg_bad (2 instructions): refused by the kernel's verifier")
    assert "R2 !read_ok" in info.value.log and "Traceback" not in message
    assert info.value.errno is not None


def test_a_hundred_thousand_prefixes_load_and_decide() -> None:
    rng = random.Random(13)
    hosts = sorted({rng.randrange(1 << 24) for _ in range(100_000)})
    allowed = [ipaddress.IPv4Network(((127 << 24) | h, 32)) for h in hosts]
    svc = Service("big", (service("big", [(Action.ALLOW, AddrMatch(tuple(allowed)))], Action.DENY).rules[0],), Action.DENY)
    prog = compile_service(svc)
    assert len(prog.maps[0].entries) >= 60_000  # adjacent hosts merge into shorter prefixes
    start = time.monotonic()
    with loaded(prog) as lo:
        took = time.monotonic() - start
        fd4 = lo.maps["sg_lpm4"]
        inside = ipaddress.IPv4Address((127 << 24) | hosts[500])
        outside = next(ipaddress.IPv4Address((127 << 24) | h) for h in range(1, 1 << 24) if h not in set(hosts[:2000]) and h < hosts[1999])
        assert Verdict.unpack(bpfsys.map_lookup(fd4, LpmKey.host(inside).pack(), 8) or b"") == Verdict(Action.ALLOW, 0)
        assert bpfsys.map_lookup(fd4, LpmKey.host(outside).pack(), 8) is None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            bpfsys.attach(u, lo.fd)
            got = udp_reach(u, {socket.AF_INET: u.getsockname()}, [str(inside), str(outside)], local_sockets(socket.SOCK_DGRAM))
    assert got == {str(inside): True, str(outside): False}
    assert took < 5.0, f"{len(prog.maps[0].entries)} prefixes took {took:.2f} s to load"


def test_a_pinned_program_and_map_outlive_their_fds() -> None:
    svc = service("pin", [(Action.ALLOW, nets("127.0.0.2/32"))], Action.DENY)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["mount", "-t", "bpf", "bpf", d], check=True)
        try:
            with loaded(compile_service(svc, spare=4)) as lo:
                bpfsys.pin(lo.fd, f"{d}/prog")
                bpfsys.pin(lo.maps["sg_lpm4"], f"{d}/lpm4")
                tag = bytes(bpfsys.prog_info(lo.fd).tag)
            prog_fd, map_fd = bpfsys.get_pinned(f"{d}/prog"), bpfsys.get_pinned(f"{d}/lpm4")
            try:
                info = bpfsys.prog_info(prog_fd)
                assert bytes(info.tag) == tag and info.name.decode() == compile_service(svc).name
                # a map update changes the verdict without touching the program
                bpfsys.map_update(map_fd, LpmKey.host(ipaddress.IPv4Address("127.0.0.3")).pack(), Verdict(Action.ALLOW, 0).pack())
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", 0))
                    bpfsys.attach(u, prog_fd)
                    srcs = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
                    got = udp_reach(u, {socket.AF_INET: u.getsockname()}, srcs, local_sockets(socket.SOCK_DGRAM))
                    assert got == {"127.0.0.2": True, "127.0.0.3": True, "127.0.0.4": False}
                    assert bpfsys.detach(u) and bpfsys.filter_kind(u) == "none" and not bpfsys.detach(u)
            finally:
                os.close(prog_fd)
                os.close(map_fd)
        finally:
            subprocess.run(["umount", d], check=False)


def test_errors_keep_errno_and_say_what_failed() -> None:
    with pytest.raises(AdapterError, match="open pinned BPF object /nonexistent/x") as info:
        bpfsys.get_pinned("/nonexistent/x")
    assert info.value.errno is not None
    with pytest.raises(AdapterError, match="attach BPF program fd .* to fd"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            bpfsys.attach(u, u.fileno())  # not a program


# ------------------------------------------------------------------- forged and long jumps


def test_forged_mapped_sources_are_denied_by_the_program_itself(lab: netlab.Lab) -> None:
    """An IPv6 header with a source in ::ffff:0:0/96 is forged (decide.py). Allow-by-default,
    with the /96 entry taken out of the map: only the program's own check stands between the
    forged datagrams and the socket, while genuine IPv6 and IPv4 clients get through."""
    from support.forge import Wire, udp6

    svc = service("dns", [], Action.ALLOW)
    forged = ("::ffff:127.0.0.1", "::ffff:198.18.0.2")
    wire = Wire(lab)
    u = lab.server.call(lambda: netlab.dual_stack_server(socket.SOCK_DGRAM))
    client = lab.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        wire.ready()
        with loaded(svc) as lo:
            fd6 = lo.maps["sg_lpm6"]
            assert bpfsys.map_delete(fd6, LpmKey(6, 96, 0xFFFF << 32).pack())
            assert bpfsys.map_lookup(fd6, LpmKey.host(ipaddress.IPv6Address(forged[0])).pack(), 8) is None
            bpfsys.attach(u, lo.fd)
        port = u.getsockname()[1]
        wire.send([udp6(src, lab.server_v6, 4444, port, src.encode()) for src in forged]
                  + [udp6(lab.client_v6, lab.server_v6, 4444, port, b"end")])
        client.bind((lab.client_v4, 0))
        client.sendto(b"v4", (lab.server_v4, port))
        got = []
        u.settimeout(5)
        while len(got) < 2:
            data, addr = u.recvfrom(64)
            got.append(data)
        u.settimeout(0.2)
        with pytest.raises(TimeoutError):
            got.append(u.recvfrom(64)[0])
        assert sorted(got) == [b"end", b"v4"]
    finally:
        client.close()
        u.close()
        wire.close()


def _far_jump_program(op: int, imm: int) -> bytes:
    """``r2 = 5; if r2 op imm goto far`` over 40,000 instructions (the assembler's long form);
    the program returns 0xffffffff when the jump is taken, else 0."""
    from sockgate.ebpf.asm import Assembler
    from sockgate.ebpf.insn import BPF_REG_2, mov32

    a = Assembler()
    a.emit(mov64(BPF_REG_2, imm=5))
    a.jump(op, BPF_REG_2, "far", imm=imm)
    a.emit(*[mov32(BPF_REG_0, 0)] * 40_000, exit_())
    a.label("far")
    a.emit(mov32(BPF_REG_0, -1), exit_())
    return encode(a.program())


FRAME = bytes(12) + b"\x08\x00" + bytes([0x45]) + bytes(19)  # Ethernet, then an IPv4 header


@pytest.mark.parametrize("op, imm, taken", [("jeq", 5, True), ("jeq", 4, False), ("jset", 4, True), ("jset", 2, False)])
def test_long_jumps_pass_the_verifier_and_land(op: str, imm: int, taken: bool) -> None:
    from sockgate.ebpf.insn import BPF_JEQ, BPF_JSET

    prog = _far_jump_program({"jeq": BPF_JEQ, "jset": BPF_JSET}[op], imm)
    fd = bpfsys.prog_load(ProgType.SOCKET_FILTER, prog, "sg_far")
    try:
        assert bpfsys.prog_test_run(fd, FRAME)[0] == (0xFFFFFFFF if taken else 0)
    finally:
        os.close(fd)
