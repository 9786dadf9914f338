"""One source cannot take the proxy's TCP connection table from everybody else:
``--max-connections-per-source`` caps the open connections of an address (an IPv6 /64)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Iterator

import pytest

from support.proxyproc import EchoServer, ProxyProc

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="the proxy's kernel tests are Linux-only")]

ATTACKER = "127.0.0.2"
CLIENT = "127.0.0.1"


@pytest.fixture
def proxy(tmp_path: Path, echo: EchoServer) -> Iterator[ProxyProc]:
    p = ProxyProc(
        ["--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}",
         "--max-connections", "6", "--max-connections-per-source", "3"],
        tmp_path / "proxy.log",
    )
    try:
        p.ready()
        yield p
    finally:
        p.close()


def _echoes(port: int, source: str, opened: list[socket.socket]) -> bool:
    """Connect from ``source``, keep the connection open, and say whether it relays."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    opened.append(s)
    s.settimeout(5)
    s.bind((source, 0))
    try:
        s.connect(("127.0.0.1", port))  # (a reset may already land here: loopback is quick)
        s.sendall(b"ping")
        return s.recv(16) == b"ping"
    except (ConnectionResetError, socket.timeout):
        return False


def test_one_source_is_capped_and_others_are_served(proxy: ProxyProc) -> None:
    port = proxy.tcp_port()
    opened: list[socket.socket] = []
    try:
        assert [_echoes(port, ATTACKER, opened) for _ in range(3)] == [True, True, True]
        assert not _echoes(port, ATTACKER, opened)  # its fourth at once is refused
        rec = proxy.wait_record(event="decision", decision="deny", rule="limit")
        assert "over the limit of 3 connections from one source" in rec["reason"]
        # the table (6) still has room for everybody else
        assert [_echoes(port, CLIENT, opened) for _ in range(3)] == [True, True, True]
        # a closed connection gives the source its place back
        opened[0].close()
        proxy.wait_record(event="close", peer=opened_peer(proxy))
        assert _echoes(port, ATTACKER, opened)
    finally:
        for s in opened:
            s.close()


def opened_peer(proxy: ProxyProc) -> str:
    """The label of the attacker's first allowed connection, as the log wrote it."""
    return next(r["peer"] for r in proxy.records() if r.get("decision") == "allow" and r["peer"].startswith(ATTACKER))


def test_a_cap_below_one_is_a_usage_error(tmp_path: Path) -> None:
    p = ProxyProc(["--listen", "tcp://127.0.0.1:0", "--forward", "tcp://127.0.0.1:9", "--max-connections-per-source", "0"], tmp_path / "p.log")
    try:
        assert p.proc.wait(timeout=30) == 2
        assert "--max-connections-per-source must be at least 1" in (tmp_path / "p.log").read_text()
    finally:
        p.close()
