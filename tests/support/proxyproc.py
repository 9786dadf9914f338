"""Helpers for the proxy's kernel tests: run ``sockgate proxy`` as a real process, read its
JSON log, and small loopback backends (echo over TCP/UDP/Unix) that the tests control."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

SRC = str(Path(__file__).resolve().parents[2] / "src")


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {cond}")
        time.sleep(step)


class ProxyProc:
    """``sockgate proxy ARGS --log-format json``, stderr to a file; always stopped by ``close``."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None, pass_fds: Sequence[int] = (), prefix: Sequence[str] = ()) -> None:
        self.log_path = log_path
        e = dict(os.environ)
        e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
        e.update(env or {})
        self.logf = open(log_path, "wb")
        argv = [*prefix, sys.executable, "-m", "sockgate", "proxy", "--log-format", "json", *args]
        self.proc = subprocess.Popen(argv, stderr=self.logf, stdout=subprocess.DEVNULL, env=e, pass_fds=tuple(pass_fds))
        self.addresses: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def find(self, **want: Any) -> list[dict[str, Any]]:
        return [r for r in self.records() if all(r.get(k) == v for k, v in want.items())]

    def wait_record(self, timeout: float = 10.0, **want: Any) -> dict[str, Any]:
        def got() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            found = self.find(**want)
            return found[-1] if found else None

        return wait_for(got, timeout)  # type: ignore[no-any-return]

    def ready(self, timeout: float = 15.0) -> list[str]:
        rec = self.wait_record(timeout, event="notice", message="listening")
        self.addresses = rec["addresses"].split()
        return self.addresses

    def tcp_port(self, i: int = 0) -> int:
        return int(self.addresses[i].rsplit(":", 1)[1])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


class EchoServer:
    """A selectors echo server in a thread (TCP or Unix stream), ``close`` stops it."""

    def __init__(self, family: int = socket.AF_INET, address: Any = ("127.0.0.1", 0), on_eof: bytes = b"") -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family != socket.AF_UNIX:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.on_eof = on_eof
        self.stopping = False
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self.stopping:
            for key, _ in sel.select(0.1):
                if key.fileobj is self.sock:
                    try:
                        c, _ = self.sock.accept()
                    except OSError:
                        continue
                    c.setblocking(True)
                    c.settimeout(5)
                    self.conns.append(c)
                    sel.register(c, selectors.EVENT_READ)
                    continue
                c = key.fileobj  # type: ignore[assignment]
                try:
                    data = c.recv(1 << 16)
                except OSError:
                    data = b""
                if data:
                    try:
                        c.sendall(data)
                    except OSError:
                        pass
                    continue
                sel.unregister(c)
                try:
                    if self.on_eof:
                        c.sendall(self.on_eof)
                except OSError:
                    pass
                c.close()
        sel.close()
        for c in self.conns:
            c.close()
        self.sock.close()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)


def connect(port: int, source: str = "127.0.0.1", timeout: float = 3.0, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def roundtrip(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        got += chunk
    return got


def is_filtered(port: int, source: str, timeout: float = 0.7) -> bool:
    """True when a connect from ``source`` gets no answer at all (SYN dropped)."""
    try:
        s = connect(port, source, timeout)
    except socket.timeout:
        return True
    except OSError:
        return False
    s.close()
    return False


def is_reset(port: int, source: str = "127.0.0.1", timeout: float = 3.0) -> bool:
    """Whether the proxy resets a client from ``source`` (refused after accept): at its first
    exchange, or already in ``connect`` — on a busy machine the reset can arrive before the
    connecting thread runs again, and ``connect`` then reports it."""
    try:
        with connect(port, source, timeout) as s:
            s.sendall(b"x")
            s.recv(1)
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return True
    return False


def lab_round_trip(lab: Any, src: str, port: int) -> bytes | str:
    """A round trip from ``src`` in the lab's client namespace to its server's IPv6 address:
    the echo, "filtered" when no SYN-ACK comes, "reset" when refused."""
    s = lab.client.socket(socket.AF_INET6)
    try:
        s.settimeout(1.0)
        s.bind((src, 0))
        s.connect((lab.server_v6, port))
        return roundtrip(s, b"v6")
    except socket.timeout:
        return "filtered"
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return "reset"
    finally:
        s.close()
