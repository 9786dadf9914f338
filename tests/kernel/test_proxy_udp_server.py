"""hosts_access ``daemon@host`` rules on the proxy's UDP listeners: the local address each
datagram was sent to is read from its packet info, so a ``deny`` naming one local address of a
socket bound to all of them refuses there and only there (``proxy/udp.py``)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Iterator

import pytest

from support.proxyproc import ProxyProc

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="the proxy's kernel tests are Linux-only")]


@pytest.fixture
def backend() -> Iterator[socket.socket]:
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    b.settimeout(2.0)
    yield b
    b.close()


@pytest.mark.parametrize("listen", ["udp://0.0.0.0:0", "udp://:0"])  # IPv4 only, and dual stack
def test_deny_on_one_local_address_refuses_there_only(tmp_path: Path, backend: socket.socket, listen: str) -> None:
    # hosts.allow is read first: a deny with the `deny` option (hosts_options) comes before the allow
    (tmp_path / "hosts.allow").write_text("dns@127.0.0.3: ALL: deny\ndns: ALL\n")
    (tmp_path / "hosts.deny").write_text("")
    p = ProxyProc(
        ["--listen", listen, "--forward", f"udp://127.0.0.1:{backend.getsockname()[1]}",
         "--hosts-allow", str(tmp_path / "hosts.allow"), "--hosts-deny", str(tmp_path / "hosts.deny"),
         "--service", "dns"],
        tmp_path / "proxy.log",
    )
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        p.ready()
        port = p.tcp_port()
        client.bind(("127.0.0.1", 0))
        client.sendto(b"to-1", ("127.0.0.1", port))
        assert backend.recvfrom(64)[0] == b"to-1"  # allowed: its flow is open now
        # the same client, the same source port, another local address: refused, not
        # carried by the open flow
        client.sendto(b"to-3", ("127.0.0.3", port))
        rec = p.wait_record(event="decision", decision="deny")
        assert rec["reason"].startswith("matched") and "127.0.0.3" in rec["reason"], rec
        client.sendto(b"to-1-again", ("127.0.0.1", port))
        assert backend.recvfrom(64)[0] == b"to-1-again"  # (to-3 never arrived before it)
    finally:
        client.close()
        p.close()


@pytest.mark.parametrize("listen", ["tcp", "udp"])
def test_daemon_at_host_with_a_name_dependent_client_list_sees_the_server(tmp_path: Path, backend: socket.socket, listen: str) -> None:
    """A rule needing both the client's name and the server address (its reason names the
    client side first) still gets the local address: ``myd@127.0.0.1 : ALL EXCEPT .x``."""
    (tmp_path / "hosts.allow").write_text("")
    (tmp_path / "hosts.deny").write_text("myd@127.0.0.1 : ALL EXCEPT .nonexist.invalid\n")
    echo = None
    if listen == "tcp":
        from support.proxyproc import EchoServer

        echo = EchoServer()
        fwd = f"tcp://127.0.0.1:{echo.port}"
    else:
        fwd = f"udp://127.0.0.1:{backend.getsockname()[1]}"
    p = ProxyProc(
        ["--listen", f"{listen}://127.0.0.1:0", "--forward", fwd, "--name-timeout", "5",
         "--hosts-allow", str(tmp_path / "hosts.allow"), "--hosts-deny", str(tmp_path / "hosts.deny"),
         "--service", "myd"],
        tmp_path / "proxy.log",
    )
    try:
        p.ready()
        port = p.tcp_port()
        if listen == "tcp":
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"x")
                try:
                    got = c.recv(16)
                except ConnectionResetError:
                    got = b""
            assert got == b""
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.sendto(b"x", ("127.0.0.1", port))
        rec = p.wait_record(event="decision")
        assert rec["decision"] == "deny" and "hosts.deny:1" in rec["reason"], rec
    finally:
        p.close()
        if echo is not None:
            echo.close()
