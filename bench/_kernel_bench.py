"""Shared pieces of the kernel-enforcement benchmarks (bench_flood.py, bench_filter_cost.py).

Each role runs in its own process, so the server, the allowed clients and the flood do not
share an interpreter lock; the roles are this file's subcommands:

    _kernel_bench.py server MODE POLICY_JSON   epoll echo server on 127.0.0.1; prints its port(s)
        MODE plain         accept everything
             kernel        the listener carries the compiled sockgate filter
             pair          two listeners in one event loop, plain and guarded (prints both)
             pair-control  the same with two plain listeners (an A/A check of the method)
             accept-close  accept, decide the peer in user space, close the denied (libwrap
                           linked into the daemon, the most charitable TCP Wrappers setup)
             inetd-fork    accept, fork a child per connection that decides and then closes
                           or serves (inetd + tcpd, how TCP Wrappers is usually deployed;
                           without the exec, so still cheaper than the real thing)
    _kernel_bench.py alternate PORT,PORT SECONDS THREADS   THREADS loops of connect / 64-byte
        echo / close from 127.0.0.1, each thread taking the servers in turn, connection by
        connection; prints per server the count and the seconds spent
    _kernel_bench.py flood PORT SECONDS T0 PERIOD   unpaced non-blocking connects from
        127.0.0.2, each abandoned (RST) after 20 ms, at most 4,096 in flight, during every
        other PERIOD-long phase from T0 (CLOCK_MONOTONIC); prints {"attempts": n, "rate": ...}
    _kernel_bench.py phased PORT SECONDS THREADS T0 PERIOD GUARD   the client loop, its
        connections counted by the phase (quiet / flood) they finished in

POLICY_JSON describes the policy as data ({"allow": [CIDR...], "default": "deny"}) so every
process builds the same ``Service`` without a policy file. Traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
LINGER0 = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = 24  # <linux/in.h>
PAYLOAD = b"x" * 64


def service_from(spec: dict[str, Any]) -> Any:
    from sockgate.policy.ir import Action, AddrMatch, Rule, Service
    from sockgate.policy.source import Span

    nets = tuple(ipaddress.ip_network(n) for n in spec["allow"])
    rule = Rule(Action.ALLOW, AddrMatch(nets, "bench"), Span("bench", 1, 1), "allow bench")
    return Service("bench", (rule,), Action(spec.get("default", "deny")))


def serve(mode: str, spec: dict[str, Any]) -> None:
    from sockgate.decide import Peer, decide_service

    svc = service_from(spec)
    if mode == "inetd-fork":
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    # "pair": one process, one event loop, two listeners (plain first, then guarded), so the
    # two differ only by the filter and share the server's CPU exactly
    guarded = {"plain": [False], "kernel": [True], "pair": [False, True], "pair-control": [False, False]}.get(mode, [False])
    listeners = {}
    for g in guarded:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", 0))
        if g:
            from sockgate.bpf import compile_service
            from sockgate.linux import filter as kfilter

            kfilter.attach(lst, compile_service(svc).encode())
        lst.listen(4096)
        lst.setblocking(False)
        listeners[lst.fileno()] = lst
    print(",".join(str(x.getsockname()[1]) for x in listeners.values()), flush=True)
    ep = select.epoll()
    for fd in listeners:
        ep.register(fd, select.EPOLLIN)
    ep.register(sys.stdin.fileno(), select.EPOLLIN)  # EOF on stdin: stop
    conns: dict[int, socket.socket] = {}
    while True:
        for fd, _ in ep.poll():
            if fd in listeners:
                _accept_all(listeners[fd], ep, conns, mode, svc, Peer, decide_service)
            elif fd == sys.stdin.fileno():
                return
            else:
                _echo(conns, fd, ep)


def _accept_all(lst: socket.socket, ep: Any, conns: dict[int, socket.socket], mode: str, svc: Any, Peer: Any, decide: Any) -> None:
    while True:
        try:
            c, addr = lst.accept()
        except BlockingIOError:
            return
        except OSError as e:  # ECONNABORTED etc. from flood connections
            if e.errno in (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                return
            raise
        if mode == "inetd-fork":
            _fork_serve(c, svc, Peer, decide)
            continue
        if mode == "accept-close" and not decide(svc, Peer.parse(addr[0])).allowed:
            c.close()  # the TCP Wrappers way: the handshake has already happened
            continue
        c.setblocking(False)
        conns[c.fileno()] = c
        ep.register(c.fileno(), select.EPOLLIN)


def _fork_serve(c: socket.socket, svc: Any, Peer: Any, decide: Any) -> None:
    if os.fork():
        c.close()
        return
    try:  # the child: tcpd's check, then the service (an echo) for an allowed peer
        if decide(svc, Peer.parse(c.getpeername()[0])).allowed:
            c.setblocking(True)
            while data := c.recv(4096):
                c.sendall(data)
    except OSError:
        pass
    finally:
        os._exit(0)


def _echo(conns: dict[int, socket.socket], fd: int, ep: Any) -> None:
    c = conns[fd]
    try:
        data = c.recv(4096)
    except (BlockingIOError, ConnectionError):
        data = b""
    if data:
        try:
            c.sendall(data)
            return
        except OSError:
            pass
    ep.unregister(fd)
    del conns[fd]
    c.close()


def alternate(ports: list[int], seconds: float, threads: int) -> dict[str, list[float]]:
    """Like ``clients``, but each thread's connections go to ``ports`` in turn, so every
    server sees the same machine load at the same moments; returns per port the number of
    connections and the seconds they took (a closed loop's rate is 1 / mean time)."""
    stop = time.monotonic() + seconds
    spent = [[0.0] * len(ports) for _ in range(threads)]
    count = [[0] * len(ports) for _ in range(threads)]

    def loop(i: int) -> None:
        k = i % len(ports)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            with socket.create_connection(("127.0.0.1", ports[k]), timeout=5) as s:
                s.sendall(PAYLOAD)
                got = 0
                while got < len(PAYLOAD):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed early")
                    got += len(chunk)
            spent[i][k] += time.perf_counter() - t0
            count[i][k] += 1
            k = (k + 1) % len(ports)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {
        "count": [sum(c[k] for c in count) for k in range(len(ports))],
        "seconds": [sum(x[k] for x in spent) for k in range(len(ports))],
    }


def flood(port: int, seconds: float, t0: float, period: float, source: str = "127.0.0.2",
          abandon: float = 0.020, cap: int = 4096) -> dict[str, float]:
    """Unpaced connects from ``source`` during the odd ``period``-long phases counted from
    ``t0`` (a CLOCK_MONOTONIC time shared with the clients), silence in the even ones; each
    connect is closed with RST after ``abandon`` seconds."""
    stop = t0 + seconds
    inflight: collections.deque[tuple[float, socket.socket]] = collections.deque()
    attempts = 0
    while (now := time.monotonic()) < stop:
        if now < t0:
            time.sleep(t0 - now)
            continue
        phase = int((now - t0) / period)
        if phase % 2 == 0:  # quiet: nothing in flight, wait for the next phase
            while inflight:
                inflight.popleft()[1].close()
            time.sleep(max(0.0, min(stop, t0 + (phase + 1) * period) - now))
            continue
        while inflight and (inflight[0][0] <= now or len(inflight) >= cap):
            inflight.popleft()[1].close()
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
        err = s.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EADDRNOTAVAIL):
            s.close()
            raise OSError(err, os.strerror(err))
        inflight.append((now + abandon, s))
        attempts += 1
    for _, s in inflight:
        s.close()
    return {"attempts": attempts, "rate": attempts / (seconds / 2)}


def phased_clients(port: int, seconds: float, threads: int, t0: float, period: float, guard: float) -> dict[str, float]:
    """The client loop from ``t0`` for ``seconds``; connections are counted by the phase they
    finished in (even = quiet, odd = flood), leaving out the first ``guard`` seconds of each
    phase (the server draining what the previous phase left)."""
    while time.monotonic() < t0:
        time.sleep(0.001)
    stop = t0 + seconds
    done: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
    fails = [0] * threads

    def loop(i: int) -> None:
        while (t1 := time.monotonic()) < stop:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(PAYLOAD)
                    got = 0
                    while got < len(PAYLOAD):
                        chunk = s.recv(4096)
                        if not chunk:
                            raise ConnectionError("closed early")
                        got += len(chunk)
            except OSError:
                fails[i] += 1
                continue
            t2 = time.monotonic()
            done[i].append((t2, t2 - t1))

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    phases: dict[int, list[float]] = {0: [], 1: []}
    for t_end, lat in (x for d in done for x in d):
        pos = (t_end - t0) / period
        if pos - int(pos) >= guard / period and t_end < stop:
            phases[int(pos) % 2].append(lat)
    counted = (seconds / period / 2) * (period - guard)  # seconds of each kind counted
    out: dict[str, float] = {"failures": sum(fails)}
    for k, name in ((0, "quiet"), (1, "flood")):
        lats = sorted(phases[k])
        out[f"{name}_rate"] = len(lats) / counted
        out[f"{name}_p99_us"] = lats[int(len(lats) * 0.99)] * 1e6 if lats else 0.0
    return out


# ------------------------------------------------------------------------------------------
# The parent side: start roles as processes


def _role(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, os.path.join(HERE, "_kernel_bench.py"), *args], text=True, **kw)


class Server:
    def __init__(self, mode: str, spec: dict[str, Any]) -> None:
        self.proc = _role("server", mode, json.dumps(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.ports = [int(p) for p in self.proc.stdout.readline().split(",")]
        self.port = self.ports[0]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def run_phased(port: int, seconds: float, threads: int = 4, period: float = 1.0, guard: float = 0.2) -> dict[str, float]:
    """Clients for ``seconds`` while a flood alternates on and off every ``period`` seconds:
    both kinds of phase in one run, so slow swings of the machine's load hit both alike."""
    t0 = time.monotonic() + 1.0  # both processes started and ready by then
    args = [str(port), str(seconds), str(threads), repr(t0), str(period), str(guard)]
    fl = _role("flood", str(port), str(seconds), repr(t0), str(period), stdout=subprocess.PIPE)
    try:
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "_kernel_bench.py"), "phased", *args],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )
        result: dict[str, float] = json.loads(out.stdout)
        result["flood_attempts_per_s"] = json.loads(fl.communicate(timeout=60)[0])["rate"]
    finally:
        fl.kill()
        fl.wait()
        if fl.stdout is not None:
            fl.stdout.close()
    time.sleep(1.0)  # let the server drain before the next run
    return result


def run_alternate(ports: list[int], seconds: float, threads: int = 4) -> dict[str, list[float]]:
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "_kernel_bench.py"), "alternate", ",".join(map(str, ports)), str(seconds), str(threads)],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )
    result: dict[str, list[float]] = json.loads(out.stdout)
    return result


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def machine() -> str:
    import platform

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} vCPU {cpu}, Linux {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str]) -> None:
    role = argv[0]
    if role == "server":
        serve(argv[1], json.loads(argv[2]))
    elif role == "alternate":
        print(json.dumps(alternate([int(p) for p in argv[1].split(",")], float(argv[2]), int(argv[3]))))
    elif role == "phased":
        a = argv[1:]
        print(json.dumps(phased_clients(int(a[0]), float(a[1]), int(a[2]), float(a[3]), float(a[4]), float(a[5]))))
    elif role == "flood":
        print(json.dumps(flood(int(argv[1]), float(argv[2]), float(argv[3]), float(argv[4]))), flush=True)
    else:
        sys.exit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
