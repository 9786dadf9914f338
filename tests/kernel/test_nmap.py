"""A real scanner's view: a guarded port is `filtered` to a denied host and `open` to an
allowed one, while the same service behind accept-then-close (the TCP Wrappers way) shows
`open` to everybody. UDP: a denied host gets no reply, an allowed one gets its echo. Every
case runs with each backend guarding the port: classic BPF and eBPF."""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import threading
import xml.etree.ElementTree as ET
from typing import Callable, Iterator

import pytest

from conftest import needs_tool
from sockgate.decide import decide
from sockgate.guard import guard
from sockgate.peers import Peer
from sockgate.policy.parser import parse_policy
from support import netlab

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"), needs_tool("nmap")]

ALLOWED = netlab.OTHER_HOST  # an extra client address; the client's own 198.18.0.2 is denied
POLICY = parse_policy(
    f"""
service scanme {{
    allow {ALLOWED}
    allow fd5b:5347::7
    default deny
}}
""",
    "nmap.policy",
)


def nmap(lab: netlab.Lab, source: str, *args: str) -> dict[str, str]:
    """port -> state, as nmap's XML report gives it, scanning from ``source``."""
    src = ["-S", source, "-e", "veth-c"] if "-sT" not in args else []
    r = lab.client.run(
        "nmap", "-n", "-Pn", "-T4", "--max-retries", "1", "--host-timeout", "60s", *src, *args, "-oX", "-",
        lab.server_v4, timeout=120,
    )
    root = ET.fromstring(r.stdout)
    return {p.get("portid", ""): p.find("state").get("state", "")  # type: ignore[union-attr]
            for p in root.iter("port")}


@contextlib.contextmanager
def serve(sock: socket.socket, handle: Callable[[socket.socket], None]) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if select.select([sock], [], [], 0.1)[0]:
                handle(sock)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)
        sock.close()


def accept_then_close(sock: socket.socket) -> None:
    """tcpd: accept, look at the peer, close the ones the policy denies."""
    try:
        conn, addr = sock.accept()
    except BlockingIOError:
        return
    if not decide(POLICY, "scanme", Peer.parse(addr[0])).allowed:
        conn.close()  # too late: the handshake already told the client the port is open
        return
    conn.sendall(b"hello\n")
    conn.close()


def udp_echo(sock: socket.socket) -> None:
    try:
        data, addr = sock.recvfrom(2048)
    except BlockingIOError:
        return
    sock.sendto(data, addr)


@pytest.fixture(params=["cbpf", "ebpf"])
def servers(lab: netlab.Lab, request: pytest.FixtureRequest) -> Iterator[tuple[int, int, int]]:
    """(guarded tcp port, accept-then-close tcp port, guarded udp echo port) on the server,
    guarded by each backend in turn (eBPF pinned in the test's own bpffs)."""
    backend: str = request.param
    if backend == "ebpf":
        request.getfixturevalue("bpffs")
    lab.add_client_addresses([ALLOWED])

    def make() -> tuple[socket.socket, socket.socket, socket.socket]:
        g = socket.socket()
        g.bind((lab.server_v4, 0))
        assert guard(POLICY, g, "scanme", backend=backend).backend == backend
        g.listen(64)
        t = socket.socket()
        t.bind((lab.server_v4, 0))
        t.listen(64)
        t.setblocking(False)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((lab.server_v4, 0))
        assert guard(POLICY, u, "scanme", backend=backend).backend == backend
        u.setblocking(False)
        return g, t, u

    g, t, u = lab.server.call(make)
    ports = (g.getsockname()[1], t.getsockname()[1], u.getsockname()[1])
    with g, serve(t, accept_then_close), serve(u, udp_echo):
        yield ports


def test_tcp_scan(lab: netlab.Lab, servers: tuple[int, int, int]) -> None:
    guarded, tcpd, _ = servers
    ports = f"{guarded},{tcpd}"
    denied = nmap(lab, lab.client_v4, "-sS", "-p", ports)
    allowed = nmap(lab, ALLOWED, "-sS", "-p", ports)
    assert denied == {str(guarded): "filtered", str(tcpd): "open"}
    assert allowed == {str(guarded): "open", str(tcpd): "open"}
    # a connect scan (what an unprivileged scanner does) sees the same
    assert nmap(lab, lab.client_v4, "-sT", "-p", str(guarded)) == {str(guarded): "filtered"}


def test_udp(lab: netlab.Lab, servers: tuple[int, int, int]) -> None:
    _, _, port = servers

    def ask(source: str) -> bytes | None:
        def go() -> bytes | None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.bind((source, 0))
                c.settimeout(1.0)
                c.sendto(b"ping " + source.encode(), (lab.server_v4, port))
                try:
                    return c.recv(2048)
                except TimeoutError:
                    return None

        return lab.client.call(go)

    assert ask(ALLOWED) == f"ping {ALLOWED}".encode()
    assert ask(lab.client_v4) is None
    assert nmap(lab, ALLOWED, "-sU", "-p", str(port)) == {str(port): "open"}
    assert nmap(lab, lab.client_v4, "-sU", "-p", str(port)) == {str(port): "open|filtered"}

