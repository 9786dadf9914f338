"""The eBPF guard's counters are exact, its events rate-limited per source in the kernel, and
both outlive the process that loaded them.

This process holds a TCP listener and a UDP socket; ``sockgate attach --backend ebpf`` run as a
child guards them (one child per socket) and exits. Afterwards several denied sources send
known numbers of TCP SYNs (a non-blocking connect closed at once: exactly one SYN, no
retransmission) and UDP datagrams, interleaved, while an allowed source gets through. The
pinned counters must then say exactly what each denied source sent — read by ``sockgate
refused`` and ``sockgate ls`` in other processes — and the pinned event ring holds at most one
event per source per event interval. Each test has its own bpf filesystem (conftest
``bpffs``), unmounted afterwards whatever happened."""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sockgate.ebpf import layout
from sockgate.ebpf.layout import Reason
from sockgate.linux import bpfsys
from support.ebpfstate import Ring
from support.launch import SRC

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF and mounting bpffs need root"),
    pytest.mark.root,
]

POLICY = "service echo {\n    allow 127.0.0.1\n    default deny\n}\n"
# denied source -> (SYNs, datagrams) it sends; all distinct, so a mix-up shows
SENT = {"127.0.0.2": (7, 3), "127.0.0.3": (1, 12), "127.0.0.4": (20, 0), "127.0.0.5": (0, 9), "127.1.2.3": (5, 5)}
INTERVAL_NS = layout.DEFAULT_EVENT_INTERVAL_NS


def sockgate_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockgate", *argv], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=SRC), cwd="/")


def knock(source: str, port: int) -> None:
    """One SYN from ``source``, and nothing more (closing a connecting socket sends nothing)."""
    with socket.socket() as c:
        c.setblocking(False)
        c.bind((source, 0))
        err = c.connect_ex(("127.0.0.1", port))
        assert err == errno.EINPROGRESS, os.strerror(err)


def datagram(source: str, port: int, payload: bytes = b"x") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind((source, 0))
        c.sendto(payload, ("127.0.0.1", port))


def received(u: socket.socket, until: bytes, timeout: float = 5.0) -> list[tuple[bytes, str]]:
    """Datagrams (payload, source) read from ``u`` up to the one carrying ``until``."""
    got: list[tuple[bytes, str]] = []
    while not got or got[-1][0] != until:
        assert select.select([u], [], [], timeout)[0], f"{until!r} never arrived; got {got}"
        data, addr = u.recvfrom(64)
        got.append((data, addr[0]))
    return got


def loaders_exit(policy: Path, fds: list[int]) -> None:
    """``sockgate attach --backend ebpf`` on each of our ``fds``, each in a child that exits."""
    for fd in fds:
        r = sockgate_cli("attach", "--policy", str(policy), "--service", "echo", "--backend", "ebpf",
                         "--pid", str(os.getpid()), "--fd", str(fd), "--json")
        assert r.returncode == 0, r.stderr
        done = json.loads(r.stdout)
        assert done["backend"] == "ebpf" and done["sockets"][0]["action"] == "attached", done


def ring_events(bpffs: str) -> list[layout.Event]:
    """Every event in the service's pinned ring (nobody else consumes it here)."""
    fd = bpfsys.get_pinned(f"{layout.service_dir('echo', bpffs + '/sockgate')}/events")
    try:
        ring = Ring(fd, layout.RING_BYTES)
        try:
            return ring.events()
        finally:
            ring.close()
    finally:
        os.close(fd)


def refused_rows() -> dict[str, dict[str, Any]]:
    r = sockgate_cli("refused", "--service", "echo", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    return {row["source"]: row for row in rows if row["type"] == "refused"}


def ls_refused(port: int, proto: str) -> int:
    r = sockgate_cli("ls", "--json", proto, "--port", str(port))
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (row["guard"]["status"], row["guard"]["backend"]) == ("sockgate", "ebpf"), row
    refused: int = row["guard"]["refused"]
    return refused


def test_counters_and_events_after_the_loader_exited(bpffs: str, tmp_path: Path) -> None:
    policy = tmp_path / "p.conf"
    policy.write_text(POLICY)
    with socket.socket() as lst, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        lst.bind(("127.0.0.1", 0))
        lst.listen(64)
        port = lst.getsockname()[1]
        u.bind(("127.0.0.1", port))  # the same number: one service, one port, two protocols
        loaders_exit(policy, [lst.fileno(), u.fileno()])

        start = time.monotonic_ns()
        left = {src: list(n) for src, n in SENT.items()}
        while any(s or d for s, d in left.values()):  # interleaved: every source in every round
            for src, todo in left.items():
                if todo[0]:
                    knock(src, port)
                    todo[0] -= 1
                if todo[1]:
                    datagram(src, port, src.encode())
                    todo[1] -= 1
        datagram("127.0.0.1", port, b"end")  # allowed, and after every refused one on the same path
        took = time.monotonic_ns() - start
        assert received(u, b"end") == [(b"end", "127.0.0.1")]  # none of the denied got through
        with socket.create_connection(("127.0.0.1", port), 2, source_address=("127.0.0.1", 0)):
            lst.accept()[0].close()  # the allowed source connects

        rows = refused_rows()
        assert {src: row["count"] for src, row in rows.items()} == {src: s + d for src, (s, d) in SENT.items() if s + d}
        for row in rows.values():
            assert row["first_seen"] <= row["last_seen"], row
        total = sum(s + d for s, d in SENT.values())
        assert ls_refused(port, "-t") == ls_refused(port, "-u") == total

        events = ring_events(bpffs)
        per_source = Counter(str(e.address) for e in events)
        assert set(per_source) == set(rows), events
        most = took // INTERVAL_NS + 1  # one per source per interval, however long sending took
        assert all(1 <= n <= most for n in per_source.values()), (per_source, took)
        assert {(e.reason, e.family) for e in events} == {(Reason.RULE, 4)}
        for src in per_source:
            stamps = [e.ts_ns for e in events if str(e.address) == src]
            assert all(b - a >= INTERVAL_NS for a, b in zip(stamps, stamps[1:])), (src, stamps)
            assert all(start <= t <= time.monotonic_ns() for t in stamps)

        # and the guard goes on counting: one more of each from a known source
        knock("127.0.0.2", port)
        datagram("127.0.0.2", port)
        datagram("127.0.0.1", port, b"end")
        received(u, b"end")
        assert refused_rows()["127.0.0.2"]["count"] == sum(SENT["127.0.0.2"]) + 2

