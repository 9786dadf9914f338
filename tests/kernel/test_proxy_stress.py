"""The proxy under bounded hostile load: thousands of connections from one source, slow
readers, half-open and idle connections, garbage and resets; a backend killed mid-transfer.
The proxy must stay up, keep serving allowed clients, keep its memory bounded and leak no fd."""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from support.proxyproc import EchoServer, ProxyProc, connect, roundtrip, wait_for

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="Linux proxy"), pytest.mark.slow]

def _settled(read: Callable[[], object], polls: int = 5) -> Callable[[], bool]:
    """A condition true once ``read()`` has given the same value ``polls`` times in a row."""
    seen: list[object] = []

    def cond() -> bool:
        seen.append(read())
        return len(seen) >= polls and all(v == seen[-1] for v in seen[-polls:])

    return cond


def _unread(s: socket.socket) -> int:
    """Bytes waiting in ``s``'s receive queue (FIONREAD)."""
    return int.from_bytes(fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


FIREHOSE = """
import socket, sys, threading
ls = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=256)
print("up", flush=True)
def serve(c):
    chunk = b"z" * 65536
    try:
        while True:
            c.sendall(chunk)
    except OSError:
        pass
    c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@pytest.fixture
def many_fds() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield want
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _firehose(port: int) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", FIREHOSE, str(port)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    p.stdout.close()
    assert line == "up"
    return p


def test_hostile_load_from_one_source(tmp_path: Path, many_fds: int) -> None:
    n_idle = min(10000, (many_fds - 500) // 3)
    echo = EchoServer()
    hose_port = _free_port()
    hose = _firehose(hose_port)
    pol = tmp_path / "p.conf"
    pol.write_text(
        f"""
        service echo tcp/1 {{
            listen "tcp://127.0.0.1:0?backlog=4096"
            forward tcp://127.0.0.1:{echo.port}
            allow 127.0.0.0/8
        }}
        service hose tcp/2 {{
            listen tcp://127.0.0.1:0
            forward tcp://127.0.0.1:{hose_port}
            allow 127.0.0.0/8
        }}
        """
    )
    # thousands of connections from one source on purpose: lift the per-source cap (1024)
    p = ProxyProc([str(pol), "--idle-timeout", "60", "--max-connections-per-source", "20000"], tmp_path / "proxy.log")
    held: list[socket.socket] = []
    try:
        p.ready()
        echo_port, hose_port_p = p.tcp_port(0), p.tcp_port(1)
        with connect(echo_port) as s:
            assert roundtrip(s, b"warm") == b"warm"
        wait_for(_settled(p.fds))  # the warm-up connection's descriptors are gone
        fds0, rss0 = p.fds(), p.rss_kib()

        # slow readers: the backend floods, the client never reads (backpressure)
        for _ in range(10):
            held.append(connect(hose_port_p, "127.0.0.9"))
        # garbage then abrupt resets
        for i in range(200):
            s = connect(echo_port, "127.0.0.9")
            s.sendall(os.urandom(1 + i * 37 % 4000))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            s.close()
        # half-open: the client says it is done sending, then goes quiet
        for _ in range(50):
            s = connect(echo_port, "127.0.0.9")
            s.shutdown(socket.SHUT_WR)
            held.append(s)
        # thousands of idle connections from one source
        t0 = time.monotonic()
        for _ in range(n_idle):
            held.append(connect(echo_port, "127.0.0.9", timeout=10))
            if time.monotonic() - t0 > 60:
                break
        wait_for(lambda: p.fds() >= fds0 + 2 * len(held) - 200, timeout=30)

        # allowed clients are still served, promptly
        for _ in range(20):
            t = time.monotonic()
            with connect(echo_port, "127.0.0.1") as s:
                assert roundtrip(s, b"hello") == b"hello"
            assert time.monotonic() - t < 1.0
        wait_for(_settled(lambda: [_unread(s) for s in held[:10]]))  # the slow readers' queues are full
        rss1 = p.rss_kib()
        assert rss1 - rss0 < 120 * 1024, (rss0, rss1)  # < ~40 KiB per connection, flood included
        assert p.proc.poll() is None

        for s in held:
            s.close()
        held.clear()
        wait_for(lambda: p.fds() <= fds0 + 2, timeout=30)
        with connect(echo_port) as s:
            assert roundtrip(s, b"after") == b"after"
        closes = p.find(event="close")
        assert len(closes) >= n_idle
        assert p.stop() == 0
    finally:
        for s in held:
            s.close()
        p.close()
        hose.kill()
        hose.wait()
        echo.close()


def test_backend_killed_mid_transfer_then_restarted(tmp_path: Path) -> None:
    port = _free_port()
    hose = _firehose(port)
    p = ProxyProc(["--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{port}"], tmp_path / "proxy.log")
    try:
        p.ready()
        s = connect(p.tcp_port(), timeout=5)
        got = 0
        while got < 1 << 20:
            got += len(s.recv(1 << 16))
        hose.kill()
        hose.wait()
        t0 = time.monotonic()
        while True:  # the client sees the end of the stream, promptly and cleanly
            chunk = s.recv(1 << 16)
            if not chunk:
                break
        assert time.monotonic() - t0 < 2.0
        s.close()
        rec = p.wait_record(event="close")
        assert rec["end"] == "closed" and rec["bytes_down"] >= 1 << 20
        # while it is down: clients are closed at once, and told nothing else
        with connect(p.tcp_port(), timeout=5) as s2:
            assert s2.recv(10) == b""
        assert "refused" in p.wait_record(event="close", bytes_down=0)["end"].lower()
        hose = _firehose(port)
        with connect(p.tcp_port(), timeout=5) as s3:
            assert len(s3.recv(1 << 16)) > 0  # recovered, no restart needed
        assert p.stop() == 0
    finally:
        p.close()
        if hose.poll() is None:
            hose.kill()
            hose.wait()
