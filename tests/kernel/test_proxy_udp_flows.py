"""The proxy's UDP flow table under one source cycling its ports: the cycler recycles its own
flows, and other clients keep being served (``limits.FlowTable``)."""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path
from typing import Iterator

import pytest

from support.proxyproc import ProxyProc, wait_for

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="the proxy's kernel tests are Linux-only")]

ATTACKER = "127.0.0.2"
CLIENT = "127.0.0.1"


@pytest.fixture
def backend() -> Iterator[socket.socket]:
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    yield b
    b.close()


def _start(procs: list[ProxyProc], tmp_path: Path, backend: socket.socket, *extra: str) -> int:
    fwd = f"udp://127.0.0.1:{backend.getsockname()[1]}"
    p = ProxyProc(["--listen", "udp://127.0.0.1:0", "--forward", fwd, *extra], tmp_path / "proxy.log")
    procs.append(p)
    p.ready()
    return p.tcp_port()


def _cycle(port: int, backend: socket.socket, source: str, ports: range) -> int:
    """One datagram from each source port, in lock step with the backend (so the proxy's
    socket buffer never overflows); returns how many reached the backend — it stops at the
    first that does not arrive within a second."""
    backend.settimeout(1.0)
    arrived = 0
    for sport in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((source, sport))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise
            s.sendto(b"x", ("127.0.0.1", port))
            try:
                backend.recvfrom(16)
            except socket.timeout:
                return arrived
            arrived += 1
    return arrived


def _served(port: int, backend: socket.socket, client: socket.socket, payload: bytes) -> bool:
    """Does ``payload`` from ``client`` reach the backend, and the backend's answer come back?"""
    client.sendto(payload, ("127.0.0.1", port))
    backend.settimeout(3.0)
    try:
        while True:
            data, flow = backend.recvfrom(64)
            if data == payload:
                break
    except socket.timeout:
        return False
    backend.sendto(b"re:" + payload, flow)
    client.settimeout(3.0)
    try:
        return client.recvfrom(64)[0] == b"re:" + payload
    except socket.timeout:
        return False


def test_one_source_cycling_ports_does_not_lock_out_another(tmp_path: Path, backend: socket.socket, procs: list[ProxyProc]) -> None:
    """With the default limits: 4,200 source ports from one address, then a client from
    another address is served at once (not after the 30 s idle timeout)."""
    port = _start(procs, tmp_path, backend)
    _cycle(port, backend, ATTACKER, range(20000, 24200))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind((CLIENT, 0))
        assert _served(port, backend, c, b"hello")
        client = c.getsockname()
    p = procs[0]
    wait_for(lambda: p.find(event="decision", peer=f"{CLIENT}:{client[1]}"))  # the log is buffered
    evicted = p.find(event="close", end="evicted: over the proxy's limit of 256 UDP flows per source")
    assert evicted and all(r["peer"].startswith(ATTACKER + ":") for r in evicted)


def test_a_full_table_evicts_the_largest_holder_and_keeps_the_newcomer(tmp_path: Path, backend: socket.socket, procs: list[ProxyProc]) -> None:
    port = _start(procs, tmp_path, backend, "--max-udp-flows", "8", "--max-udp-flows-per-source", "4")
    assert _cycle(port, backend, ATTACKER, range(30000, 30004)) == 4
    assert _cycle(port, backend, "127.0.0.3", range(30000, 30004)) == 4  # the table is full
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind((CLIENT, 0))
        assert _served(port, backend, c, b"one")
        # the cyclers go on; at their cap they only recycle their own flows
        assert _cycle(port, backend, ATTACKER, range(30004, 30040)) == 36
        assert _cycle(port, backend, "127.0.0.3", range(30004, 30040)) == 36
        assert _served(port, backend, c, b"two")
    p = procs[0]
    wait_for(lambda: len(p.find(event="decision", decision="allow")) == 4 + 4 + 1 + 36 + 36)  # the log is buffered
    assert [r["peer"].rsplit(":", 1)[0] for r in p.find(event="decision", decision="allow")].count(CLIENT) == 1
    assert not [r for r in p.find(event="close") if r["peer"].startswith(CLIENT + ":")]
    ends = {r["end"] for r in p.find(event="close")}
    assert ends == {"evicted: over the proxy's limit of 8 UDP flows", "evicted: over the proxy's limit of 4 UDP flows per source"}


@pytest.mark.parametrize("opt", ["--max-udp-flows", "--max-udp-flows-per-source"])
def test_flow_limits_below_one_are_a_usage_error(opt: str, backend: socket.socket) -> None:
    import subprocess

    from support.proxyproc import SRC

    out = subprocess.run(
        [sys.executable, "-m", "sockgate", "proxy", "--listen", "udp://127.0.0.1:0", "--forward", "udp://127.0.0.1:9", opt, "0"],
        capture_output=True, text=True, timeout=30, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2 and out.stderr.strip().endswith(f"{opt} must be at least 1"), out.stderr
