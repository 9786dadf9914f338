"""Helpers for tests of ``sockgate run``: start it, follow its stderr, talk to its sockets.

``Launched`` wraps one ``python -m sockgate run ...`` process: a thread collects its stderr
lines so a test can wait for "listening on ...", "running ... as pid N" or "reloaded" without
blocking; ``stop()`` (always called by the fixture) terminates it and its command.

``ECHO_SERVICE`` is a socket-activated service written against the LISTEN_* contract only
(no sockgate import): it writes what it received to a JSON report, then echoes on every
stream socket and answers every datagram.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

SRC = str(Path(__file__).resolve().parents[2] / "src")

ECHO_SERVICE = r'''
import json, os, selectors, socket, sys
report = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
          "env": {k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "SOCKGATE_SERVICE")},
          "fds": []}
n = int(os.environ.get("LISTEN_FDS", "0")) if os.environ.get("LISTEN_PID") == str(os.getpid()) else 0
socks = []
for fd in range(3, 3 + n):
    s = socket.socket(fileno=fd)
    name = s.getsockname()
    report["fds"].append({"fd": fd, "family": int(s.family), "type": int(s.type),
                          "name": name if isinstance(name, (str, list, tuple)) else repr(name)})
    socks.append(s)
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(report, f)
os.rename(tmp, sys.argv[1])
sel = selectors.DefaultSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, "listen")
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if key.data == "listen" and s.type == socket.SOCK_DGRAM:
            data, peer = s.recvfrom(65536)
            s.sendto(data, peer)
        elif key.data == "listen":
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, "conn")
        else:
            try:
                data = s.recv(65536)
            except (BlockingIOError, ConnectionError):
                data = None
            if not data:
                sel.unregister(s)
                s.close()
                continue
            s.setblocking(True)
            s.sendall(data)
            s.setblocking(False)
'''

LISTENING = re.compile(r"listening on (\S+?)(?: as fd \d+ \([^)]*\))?, ")
RUNNING = re.compile(r"running .* as pid (\d+)")


# A child that may not load eBPF: without CAP_BPF and CAP_SYS_ADMIN in its bounding set (root's
# capabilities after exec), bpf(2) refuses it an LPM trie whatever kernel.unprivileged_bpf_disabled
# says (kernel/bpf/syscall.c: map_create, bpf_capable()); CAP_NET_ADMIN and the rest stay.
NO_BPF = ("setpriv", "--bounding-set=-bpf,-sys_admin", "--")


class Launched:
    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        full_env = dict(os.environ if env is None else env)
        full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "sockgate", "run", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: list[str] = []
        self._q: "queue.Queue[str | None]" = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_line(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The next stderr line (after those already consumed) matching ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s; stderr so far:\n" + "\n".join(self.lines))
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"sockgate run exited ({self.proc.wait()}) before {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            m = rx.search(line)
            if m:
                return m

    def seen_line(self, pattern: str, timeout: float = 15.0) -> None:
        """A stderr line matching ``pattern``, already consumed or still to come (a line the
        command prints may come before sockgate's own)."""
        if not any(re.search(pattern, line) for line in self.lines):
            self.wait_line(pattern, timeout)

    def started(self, count: int, supervised: bool = True) -> tuple[list[str], int | None]:
        """Wait for ``count`` listening lines (and the running line); their addresses, the pid."""
        addrs = [self.wait_line(LISTENING.pattern).group(1) for _ in range(count)]
        pid = int(self.wait_line(RUNNING.pattern).group(1)) if supervised else None
        return addrs, pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 15.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._t.join(timeout=5)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def echo_service(tmp: Path) -> tuple[Path, Path]:
    """``ECHO_SERVICE`` written into ``tmp``, and the report file it writes once it has its sockets."""
    script, report = tmp / "echo.py", tmp / "report.json"
    script.write_text(ECHO_SERVICE)
    return script, report


def echo_command(tmp: Path) -> tuple[list[str], Path]:
    """``echo_service``: the end of a ``sockgate run`` command line that runs it (``--`` and
    the command), and its report file."""
    script, report = echo_service(tmp)
    return ["--", sys.executable, str(script), str(report)], report


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


IP_BIND_ADDRESS_NO_PORT = 24  # <linux/in.h>


def _bind_source(c: socket.socket, source: str) -> None:
    # Choose the port at connect time, by the whole 4-tuple: thousands of short connections
    # from one source then never run out of ports because of TIME_WAIT.
    c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    c.bind((source, 0))


def open_from(source: str, port: int, timeout: float = 3.0) -> socket.socket:
    """A TCP connection from ``source`` to 127.0.0.1:``port``, left open for the caller."""
    c = socket.socket()
    c.bind((source, 0))
    c.settimeout(timeout)
    c.connect(("127.0.0.1", port))
    return c


def still_echoes(c: socket.socket, payload: bytes = b"ping\n") -> bool:
    """Whether an open connection still carries an echo (False once it was ended)."""
    try:
        c.sendall(payload)
        return c.recv(len(payload) + 8) == payload
    except OSError:
        return False


def tcp_echo(source: str, port: int, payload: bytes = b"ping\n", timeout: float = 2.0, host: str = "127.0.0.1") -> bytes:
    """Connect from ``source``, send, read the echo. Raises on failure (timeouts included)."""
    with socket.socket() as c:
        c.settimeout(timeout)
        _bind_source(c, source)
        c.connect((host, port))
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def tcp_filtered(source: str, port: int, timeout: float = 0.5, host: str = "127.0.0.1") -> bool:
    """True when a connect from ``source`` gets no answer at all within ``timeout``."""
    with socket.socket() as c:
        c.settimeout(timeout)
        _bind_source(c, source)
        try:
            c.connect((host, port))
        except TimeoutError:
            return True
        except OSError:
            return False
        return False


def udp_echo(source: str, port: int, payload: bytes = b"dgram", timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(timeout)
        c.bind((source, 0))
        c.sendto(payload, ("127.0.0.1", port))
        try:
            return c.recv(65536)
        except TimeoutError:
            return None


def sockgate_cli(*argv: str, user: int | None = None, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """``sockgate ARGV`` run to its end (as ``user``, or under ``prefix``), output captured."""
    env = dict(os.environ, PYTHONPATH=SRC)
    who = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    return subprocess.run([*prefix, *who, sys.executable, "-m", "sockgate", *argv], capture_output=True, text=True,
                          timeout=60, env=env, cwd="/")


def ls_guard(port: int, proto: str = "-t") -> dict[str, Any]:
    """The ``guard`` object of ``sockgate ls --json``'s one row for ``port``."""
    r = sockgate_cli("ls", "--json", proto, "--port", str(port))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1, rows
    guard: dict[str, Any] = rows[0]["guard"]
    return guard


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def wait_for_file(path: Path, timeout: float = 15.0, lines: Sequence[str] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s\n" + "\n".join(lines))
        time.sleep(0.02)


Launch = Callable[..., Launched]  # the ``launch`` fixture (tests/kernel/conftest.py)
