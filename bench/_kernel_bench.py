"""Shared pieces of the kernel-enforcement benchmarks (bench_flood.py, bench_filter_cost.py).

Each role runs in its own process, so the server, the allowed clients and the flood do not
share an interpreter lock; the roles are this file's subcommands:

    _kernel_bench.py server MODE POLICY_JSON   epoll echo server on 127.0.0.1; prints its port
        MODE plain         accept everything
             kernel        the listener carries the compiled sockgate filter
             accept-close  accept, decide the peer in user space, close the denied (libwrap
                           linked into the daemon, the most charitable TCP Wrappers setup)
             inetd-fork    accept, fork a child per connection that decides and then closes
                           or serves (inetd + tcpd, how TCP Wrappers is usually deployed;
                           without the exec, so still cheaper than the real thing)
    _kernel_bench.py clients PORT SECONDS THREADS   connect / 64-byte echo / close loops from
        127.0.0.1; prints {"conns": n, "rate": per s, "p99_us": ...}
    _kernel_bench.py flood PORT SECONDS    unpaced non-blocking connects from 127.0.0.2, each
        abandoned (RST) after 20 ms, at most 4,096 in flight; prints {"attempts": n}

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
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", 0))
    if mode == "kernel":
        from sockgate.bpf import compile_service
        from sockgate.linux import filter as kfilter

        kfilter.attach(lst, compile_service(svc).encode())
    lst.listen(int(os.environ.get("SGT_BACKLOG", "4096")))
    lst.setblocking(False)
    print(lst.getsockname()[1], flush=True)
    ep = select.epoll()
    ep.register(lst.fileno(), select.EPOLLIN)
    ep.register(sys.stdin.fileno(), select.EPOLLIN)  # EOF on stdin: stop
    conns: dict[int, socket.socket] = {}
    while True:
        for fd, _ in ep.poll():
            if fd == lst.fileno():
                _accept_all(lst, ep, conns, mode, svc, Peer, decide_service)
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


def clients(port: int, seconds: float, threads: int) -> dict[str, float]:
    stop = time.monotonic() + seconds
    lat: list[list[float]] = [[] for _ in range(threads)]
    fails = [0] * threads

    def loop(i: int) -> None:
        mine = lat[i]
        while (t0 := time.monotonic()) < stop:
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
            mine.append(time.monotonic() - t0)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    every = sorted(x for lst in lat for x in lst)
    p99 = every[int(len(every) * 0.99)] if every else 0.0
    return {"conns": len(every), "rate": len(every) / seconds, "p99_us": p99 * 1e6, "failures": sum(fails)}


def flood(port: int, seconds: float, source: str = "127.0.0.2", abandon: float = 0.020, cap: int = 4096) -> dict[str, int]:
    """Unpaced connects from ``source``; each is closed with RST after ``abandon`` seconds."""
    stop = time.monotonic() + seconds
    inflight: collections.deque[tuple[float, socket.socket]] = collections.deque()
    attempts = 0
    while (now := time.monotonic()) < stop:
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
    return {"attempts": attempts}


# ------------------------------------------------------------------------------------------
# The parent side: start roles as processes


def _role(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, os.path.join(HERE, "_kernel_bench.py"), *args], text=True, **kw)


class Server:
    def __init__(self, mode: str, spec: dict[str, Any]) -> None:
        self.proc = _role("server", mode, json.dumps(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

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


def run_clients(port: int, seconds: float, threads: int = 4, with_flood: bool = False) -> dict[str, float]:
    """One measurement; with ``with_flood`` a flood runs from 0.3 s before the clients start
    until they stop, and its attempt rate is reported as ``flood_rate``."""
    fl = _role("flood", str(port), str(seconds + 0.6), stdout=subprocess.PIPE) if with_flood else None
    try:
        if fl is not None:
            time.sleep(0.3)  # let the flood reach full speed first
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "_kernel_bench.py"), "clients", str(port), str(seconds), str(threads)],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )
        result: dict[str, float] = json.loads(out.stdout)
        if fl is not None:
            assert fl.stdout is not None
            result["flood_rate"] = json.loads(fl.communicate(timeout=30)[0])["attempts"] / (seconds + 0.6)
            time.sleep(1.0)  # let the server drain what the flood left before the next run
    finally:
        if fl is not None:
            fl.kill()
            fl.wait()
            if fl.stdout is not None:
                fl.stdout.close()
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
    elif role == "clients":
        print(json.dumps(clients(int(argv[1]), float(argv[2]), int(argv[3]))))
    elif role == "flood":
        print(json.dumps(flood(int(argv[1]), float(argv[2]))), flush=True)
    else:
        sys.exit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
