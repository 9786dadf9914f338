"""``sockgate proxy --workers --cpu-affinity --accept-by-cpu``: workers pinned to one CPU
each, and (opt-in) handed the TCP connections their CPU processed (``SO_INCOMING_CPU`` on
their own ``SO_REUSEPORT`` listeners) — checked in the real kernel with clients pinned to
each CPU, and the worker holding each accepted socket found through /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sockgate.linux import cpus
from support.proxyproc import EchoServer, ProxyProc, connect, roundtrip, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux CPU affinity and SO_INCOMING_CPU")

ALLOWED = cpus.allowed()


@pytest.fixture(autouse=True)
def two_cpus() -> None:
    """Steering and pinning show only with two CPUs to choose from (the CI machine has two)."""
    assert len(ALLOWED) >= 2, f"these tests need two CPUs in the affinity mask, found {ALLOWED}"


def start(procs: list[ProxyProc], tmp_path: Path, echo: EchoServer, *args: str) -> ProxyProc:
    p = ProxyProc(["--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}", *args],
                  tmp_path / f"proxy{len(procs)}.log")
    procs.append(p)
    p.ready()
    return p


def workers(p: ProxyProc, n: int) -> list[int]:
    """The proxy's worker processes (its children), once all ``n`` exist."""
    def children() -> list[int]:
        text = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text()
        return [int(x) for x in text.split()]
    wait_for(lambda: len(children()) == n)
    return children()


def affinity(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def holder(workers: list[int], client_port: int, server_port: int) -> int:
    """The worker holding the accepted end of the live connection 127.0.0.1:``client_port``
    → 127.0.0.1:``server_port`` (an earlier connection from the same port may linger in
    TIME-WAIT, with no socket behind it)."""
    loopback = "0100007F"
    found = [f[9] for f in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
             if f[1] == f"{loopback}:{server_port:04X}" and f[2] == f"{loopback}:{client_port:04X}" and f[3] == "01"]
    assert len(found) == 1 and found[0] != "0", f"no one accepted socket for client port {client_port}: {found}"
    inode = found[0]
    for pid in workers:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError(f"no worker holds socket {inode}")


def from_cpu(cpu: int, port: int, count: int) -> list[socket.socket]:
    """``count`` connections made by a thread pinned to ``cpu`` (the handshake is processed
    on the sender's CPU on loopback), each echoed once and left open."""
    out: list[socket.socket] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # this thread only
            for i in range(count):
                s = connect(port)
                out.append(s)
                assert roundtrip(s, b"c%d" % i) == b"c%d" % i
        except BaseException as e:  # reported by the test's thread
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive() and not err, err
    return out


def pinned_workers(p: ProxyProc, n: int) -> dict[int, int]:
    """Each worker's CPU, once every one of the ``n`` has pinned itself (right after its fork)."""
    out = {}
    for pid in workers(p, n):
        wait_for(lambda: len(affinity(pid)) == 1)
        out[pid] = next(iter(affinity(pid)))
    return out


def holders_of(cpu: int, port: int, pids: list[int], count: int) -> list[int]:
    """The worker holding each of ``count`` connections made (and echoed) on ``cpu``."""
    conns = from_cpu(cpu, port, count)
    try:
        return [holder(pids, s.getsockname()[1], port) for s in conns]
    finally:
        for s in conns:
            s.close()


def assert_steered(pinned: dict[int, int], port: int, per_cpu: int = 12) -> None:
    for cpu in ALLOWED[:4]:
        for w in holders_of(cpu, port, list(pinned), per_cpu):
            assert pinned[w] == cpu, f"a connection made on CPU {cpu} went to the worker on CPU {pinned[w]}"


def test_pinned_workers_accept_by_cpu(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    n = max(2, len(ALLOWED))
    p = start(procs, tmp_path, echo, "--workers", str(n), "--cpu-affinity", "auto", "--accept-by-cpu")
    pinned = pinned_workers(p, n)
    want = [ALLOWED[i % len(ALLOWED)] for i in range(n)]
    notice = p.find(event="notice", message="listening")[0]
    assert notice["cpus"] == ",".join(map(str, want)) and notice["accept"] == "by-cpu"
    assert sorted(pinned.values()) == sorted(want)
    assert affinity(p.pid) == set(ALLOWED)  # the parent, which only forwards signals, is not
    assert_steered(pinned, p.tcp_port())
    assert p.stop() == 0


def test_pinned_without_accept_by_cpu_the_hash_spreads(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    """Pinning alone does not steer: one CPU's connections reach every worker (the hash)."""
    p = start(procs, tmp_path, echo, "--workers", "2", "--cpu-affinity", "auto")
    pinned = pinned_workers(p, 2)
    assert set(holders_of(ALLOWED[0], p.tcp_port(), list(pinned), 24)) == set(pinned)


def test_default_is_unpinned_and_a_list_pins_even_one(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    p = start(procs, tmp_path, echo, "--workers", "2")
    for pid in workers(p, 2):
        assert affinity(pid) == set(ALLOWED)
    assert "cpus" not in p.find(event="notice", message="listening")[0]
    one = start(procs, tmp_path, echo, "--cpu-affinity", "auto")  # auto: pins only workers
    with connect(one.tcp_port()) as s:
        assert roundtrip(s, b"x") == b"x"
    assert affinity(one.pid) == set(ALLOWED)
    last = start(procs, tmp_path, echo, "--cpu-affinity", str(ALLOWED[-1]))
    assert affinity(last.pid) == {ALLOWED[-1]}
    assert last.find(event="notice", message="listening")[0]["cpus"] == str(ALLOWED[-1])
    with connect(last.tcp_port()) as s:
        assert roundtrip(s, b"z") == b"z"


def test_a_list_pins_in_its_order_and_auto_counts_it(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    order = list(reversed(ALLOWED))
    p = start(procs, tmp_path, echo, "--workers", "auto", "--cpu-affinity", ",".join(map(str, order)))
    assert sorted(pinned_workers(p, len(order)).values()) == sorted(order)
    assert p.find(event="notice", message="listening")[0]["cpus"] == ",".join(map(str, order))
    with connect(p.tcp_port()) as s:
        assert roundtrip(s, b"y") == b"y"
    single = start(procs, tmp_path, echo, "--workers", "auto", "--cpu-affinity", str(ALLOWED[0]))
    assert single.find(event="notice", message="listening")[0].get("workers") is None  # one: no fork
    assert affinity(single.pid) == {ALLOWED[0]}


def test_a_cpu_with_no_worker_is_still_served(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    """Every worker steered to one CPU: connections another CPU processed match no socket and
    the kernel hashes them over the group — none is black-holed."""
    p = start(procs, tmp_path, echo, "--workers", "2", "--cpu-affinity", str(ALLOWED[0]), "--accept-by-cpu")
    pinned = pinned_workers(p, 2)
    assert set(holders_of(ALLOWED[-1], p.tcp_port(), list(pinned), 24)) == set(pinned)  # each echoed: served


def test_a_service_added_by_reload_is_steered_in_each_worker(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    body = f"service t tcp/1 {{\n listen tcp://127.0.0.1:0\n forward tcp://127.0.0.1:{echo.port}\n allow all\n}}\n"
    pol = tmp_path / "w.conf"
    pol.write_text(body)
    p = ProxyProc([str(pol), "--workers", "2", "--cpu-affinity", "auto", "--accept-by-cpu"], tmp_path / "reload.log")
    procs.append(p)
    p.ready()
    pinned = pinned_workers(p, 2)
    pol.write_text(body + f"service a tcp/2 {{\n listen tcp://127.0.0.1:{port}\n forward tcp://127.0.0.1:{echo.port}\n"
                          " allow 127.0.0.1\n default deny\n}\n")
    p.signal(signal.SIGHUP)
    wait_for(lambda: len(p.find(event="notice", message="policy reloaded")) == 2)
    assert_steered(pinned, port, 8)
    assert p.find(event="error") == []


def test_udp_is_not_steered_a_flow_stays_one(tmp_path: Path, procs: list[ProxyProc]) -> None:
    """A UDP reuseport group picks a socket per datagram: steered, one client's datagrams
    processed on two CPUs would become two upstream flows. UDP listeners keep the hash."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as backend, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        backend.bind(("127.0.0.1", 0))
        backend.settimeout(3)
        p = ProxyProc(["--listen", "udp://127.0.0.1:0", "--forward", f"udp://127.0.0.1:{backend.getsockname()[1]}",
                       "--workers", "2", "--cpu-affinity", "auto", "--accept-by-cpu"], tmp_path / "udp.log")
        procs.append(p)
        p.ready()
        pinned_workers(p, 2)
        port = p.tcp_port()
        c.bind(("127.0.0.1", 0))
        c.settimeout(3)
        sources = set()
        for i in range(8):
            send_from(ALLOWED[i % len(ALLOWED)], c, ("127.0.0.1", port), b"d%d" % i)
            data, src = backend.recvfrom(100)
            assert data == b"d%d" % i
            sources.add(src)
            backend.sendto(data, src)
            assert c.recv(100) == data
        assert len(sources) == 1, f"one client became {len(sources)} upstream flows"


def send_from(cpu: int, sock: socket.socket, to: tuple[str, int], data: bytes) -> None:
    def run() -> None:
        os.sched_setaffinity(0, {cpu})  # this thread: on loopback the datagram is processed here
        sock.sendto(data, to)
    t = threading.Thread(target=run)
    t.start()
    t.join(5)
    assert not t.is_alive()


@pytest.mark.parametrize(("args", "why"), [
    (["--cpu-affinity", str(max(ALLOWED) + 1)], "is not one this process may run on"),
    (["--cpu-affinity", "1-0"], "is not within 0-8191 (low to high)"),
    (["--cpu-affinity", "0,,1"], "expected a CPU or CPU range"),
    (["--cpu-affinity", "\u00b2"], "expected a CPU or CPU range"),
    (["--cpu-affinity", "1" * 5000], "is not within 0-8191"),
    (["--cpu-affinity", ",".join(["0-8191"] * 5)], "more than 32768 CPUs"),
    (["--workers", "two"], "expected a number from 1 to 1024 or auto"),
    (["--workers", "0"], "expected a number from 1 to 1024 or auto"),
    (["--workers", "1" * 5000], "expected a number from 1 to 1024 or auto"),
    (["--workers", "1", "--cpu-affinity", "auto", "--accept-by-cpu"], "--accept-by-cpu needs pinned workers"),
    (["--accept-by-cpu"], "--accept-by-cpu needs pinned workers"),
])
def test_bad_affinity_or_workers_is_a_one_line_refusal(echo: EchoServer, args: list[str], why: str) -> None:
    out = subprocess.run([sys.executable, "-m", "sockgate", "proxy", "--listen", "tcp://127.0.0.1:0", "--forward",
                          f"tcp://127.0.0.1:{echo.port}", "--workers", "2", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert why in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
