"""Shared pieces of the kernel-enforcement benchmarks (bench_flood.py, bench_filter_cost.py).

Each role runs in its own process, so the server, the allowed clients and the flood do not
share an interpreter lock; the roles are this file's subcommands:

    _kernel_bench.py server MODE POLICY_JSON [BACKLOG]   epoll echo server on 127.0.0.1,
        listen(BACKLOG) (default 4096); prints its port(s)
        MODE plain         accept everything
             kernel        the listener carries the compiled sockgate filter
             ebpf          the listener guarded by sockgate's eBPF backend (library
                           ``guard(..., backend="ebpf")``; pinned under $SOCKGATE_BPFFS),
                           which enforces POLICY_JSON's "rate_per_source" in the kernel
             pair          two listeners in one event loop, plain and guarded (prints both)
             pair-control  the same with two plain listeners (an A/A check of the method)
             accept-close  accept, decide the peer with sockgate's engine in user space,
                           close the denied (the most charitable accept-then-close)
             libwrap       accept, ask the system's libwrap (hosts_ctl(3), which reads
                           hosts.allow and hosts.deny files on every call, written from
                           POLICY_JSON into a temporary directory), close the denied: a
                           daemon with TCP Wrappers linked in, without logging refusals
             inetd-fork    accept, fork a child per connection that decides and then closes
                           or serves (inetd + tcpd, how TCP Wrappers is usually deployed;
                           without the exec, so still cheaper than the real thing)
    _kernel_bench.py alternate PORT,PORT SECONDS THREADS   THREADS loops of connect / 64-byte
        echo / close from 127.0.0.1, each thread taking the servers in turn, connection by
        connection; prints per server the count and the seconds spent
    _kernel_bench.py clients PORT SECONDS THREADS T0 [SOURCES]   the same loop against one
        server from CLOCK_MONOTONIC time T0 (from 127.0.0.1, or from each address of the
        loopback network SOURCES in turn); prints rate, p50/p99 latency and failures
    _kernel_bench.py flood PORT SRC START STOP MAX_ATTEMPTS ABANDON_MS WINDOW   the Python
        fallback of flood.c (same arguments and output), used when there is no C compiler

POLICY_JSON describes the policy as data ({"allow": [CIDR...], "default": "deny"}, optionally
"rate_per_source": [N, SECONDS] for ``limit rate N/SECONDS per source``, "deny_generated": N
prefixes denied first, "backend": "ebpf" in pair mode with "bpffs": a mounted bpf filesystem)
so every process builds the same ``Service`` without a policy file. Traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import json
import os
import random
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
LINGER0 = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = 24  # <linux/in.h>
PAYLOAD = b"x" * 64


def service_from(spec: dict[str, Any]) -> Any:
    """``allow`` CIDRs then ``default`` (and ``rate_per_source``); with ``"deny_generated": N``,
    first a rule denying N generated prefixes (``blocklist``) as a set file's ``NetList``."""
    from sockgate.policy.ir import Action, AddrMatch, Limits, Rate, Rule, Service
    from sockgate.policy.netlist import NetList
    from sockgate.policy.source import Span

    nets = tuple(ipaddress.ip_network(n) for n in spec["allow"])
    rules = [Rule(Action.ALLOW, AddrMatch(nets, "bench"), Span("bench", 1, 1), "allow bench")]
    if spec.get("deny_generated"):
        keys = blocklist(int(spec["deny_generated"]))
        rules.insert(0, Rule(Action.DENY, AddrMatch(NetList(keys), "@blocklist"), Span("bench", 1, 1), "deny @blocklist"))
    rate = spec.get("rate_per_source")
    limits = Limits(rate_per_source=Rate(int(rate[0]), float(rate[1]))) if rate else None
    return Service("bench", tuple(rules), Action(spec.get("default", "deny")), limits=limits)


def classic_capacity(svc: Any, banned: list[Any]) -> int:
    """How many of ``banned``, from the first, one classic program of ``svc`` holds (a binary
    search over compiles: a prefix that fits says every shorter one does)."""
    from sockgate.bpf import program as cbpf_program
    from sockgate.errors import CompileError

    def fits(n: int) -> bool:
        try:
            cbpf_program.compile_service(svc, banned=banned[:n])
            return True
        except CompileError:
            return False

    lo, hi = 0, len(banned)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def blocklist(n: int) -> list[int]:
    """``NetList`` keys of ``n`` distinct IPv4 prefixes from a fixed seed — a third /24s, the
    rest hosts, none in 127.0.0.0/8 — plus, in 127.0.0.0/8, the sibling of every prefix of
    127.0.0.1 from /9 to /32: the trie holds a node at every depth of the path a lookup for
    127.0.0.1 takes, the longest lookup there is, and still misses."""
    keys = []
    for i, p in enumerate(random.Random(13).sample(range(1 << 24), n + n // 200 + 1)):
        if p >> 16 == 127 or len(keys) == n:
            continue
        keys.append((p << 8) << 8 | 24 if i % 3 == 0 else ((p << 8) | 7) << 8 | 32)
    loopback = 0x7F000001
    for plen in range(9, 33):
        sibling = (loopback ^ (1 << (32 - plen))) >> (32 - plen) << (32 - plen)
        keys.append(sibling << 8 | plen)
    return keys


def attach_ebpf(lst: socket.socket, service: Any, bpffs: str | None) -> None:
    """Guard ``lst`` as the library does with ``backend="ebpf"`` (service state included), pinned
    under ``bpffs`` (else $SOCKGATE_BPFFS)."""
    from sockgate.guard import guard
    from sockgate.policy.ir import Policy

    if bpffs:
        os.environ["SOCKGATE_BPFFS"] = bpffs
    start = time.process_time()
    got = guard(Policy(services=(service,)), lst, "bench", backend="ebpf")
    print(f"eBPF filter {got.digest}: compiled, loaded and attached in {time.process_time() - start:.1f} s of CPU",
          file=sys.stderr, flush=True)


class Libwrap:
    """The system's TCP Wrappers library (libwrap.so.0, Debian package libwrap0, which tcpd
    depends on) pointed at hosts.allow / hosts.deny files made from POLICY_JSON: the
    ``hosts_ctl(daemon, name, addr, user)`` call a non-forking daemon makes per connection.
    Only address patterns are written, so libwrap makes no DNS lookup."""

    def __init__(self, spec: dict[str, Any], tmpdir: str) -> None:
        import ctypes

        if spec.get("default", "deny") != "deny" or not spec["allow"]:
            raise ValueError("libwrap mode: an allow list and default deny, as in bench_flood's POLICY")
        self.lib = ctypes.CDLL("libwrap.so.0")
        allow = " ".join(_libwrap_pattern(n) for n in spec["allow"])
        tables = {"hosts_allow_table": f"bench: {allow}\n", "hosts_deny_table": "ALL: ALL\n"}
        self.paths = []
        for name, text in tables.items():
            path = os.path.join(tmpdir, name)
            with open(path, "w") as f:
                f.write(text)
            # the library's globals point into these bytes: they live as long as this object,
            # which the accept loop holds until the server exits
            self.paths.append(path.encode())
            ctypes.c_char_p.in_dll(self.lib, name).value = self.paths[-1]
        self.lib.hosts_ctl.argtypes = [ctypes.c_char_p] * 4
        self.lib.hosts_ctl.restype = ctypes.c_int

    def allowed(self, addr: str) -> bool:
        return bool(self.lib.hosts_ctl(b"bench", b"unknown", addr.encode(), b"unknown"))


def has_libwrap() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libwrap.so.0")
    except OSError:
        return False
    return True


def _libwrap_pattern(cidr: str) -> str:
    net = ipaddress.ip_network(cidr)
    if net.version == 6:  # hosts_access(5): IPv6 addresses in brackets
        return f"[{net.network_address}]" + ("" if net.prefixlen == 128 else f"/{net.prefixlen}")
    if net.prefixlen == 32:
        return str(net.network_address)
    return f"{net.network_address}/{net.netmask}"


def serve(mode: str, spec: dict[str, Any], backlog: int = 4096) -> None:
    import tempfile

    from sockgate.decide import decide_resolved
    from sockgate.peers import Peer
    from sockgate.resolve import resolve_service

    svc = resolve_service(service_from(spec))  # resolved once, as a daemon would

    def by_policy(addr: str) -> bool:  # the user-space check of accept-close and inetd-fork
        return bool(decide_resolved(svc, Peer.parse(addr)).allowed)

    allowed = by_policy
    if mode == "libwrap":
        tmp = tempfile.TemporaryDirectory(prefix="sockgate-libwrap-")  # removed when serve returns
        allowed = Libwrap(spec, tmp.name).allowed
    if mode == "inetd-fork":
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    # "pair": one process, one event loop, two listeners (plain first, then guarded), so the
    # two differ only by the filter and share the server's CPU exactly
    guarded = {"plain": [False], "kernel": [True], "ebpf": [True], "pair": [False, True],
               "pair-control": [False, False]}.get(mode, [False])
    listeners = {}
    for g in guarded:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", 0))
        if g and (mode == "ebpf" or spec.get("backend") == "ebpf"):
            attach_ebpf(lst, svc.service, spec.get("bpffs"))
        elif g:
            from sockgate.bpf import compile_resolved
            from sockgate.linux import filter as kfilter

            kfilter.attach(lst, compile_resolved(svc).encode())  # (svc is resolved already)
        lst.listen(backlog)
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
                _accept_all(listeners[fd], ep, conns, mode, allowed)
            elif fd == sys.stdin.fileno():
                return
            else:
                _echo(conns, fd, ep)


def _accept_all(lst: socket.socket, ep: Any, conns: dict[int, socket.socket], mode: str,
                allowed: Callable[[str], bool]) -> None:
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
            _fork_serve(c, allowed)
            continue
        if mode in ("accept-close", "libwrap") and not allowed(addr[0]):
            c.close()  # the TCP Wrappers way: the handshake has already happened
            continue
        c.setblocking(False)
        conns[c.fileno()] = c
        ep.register(c.fileno(), select.EPOLLIN)


def _fork_serve(c: socket.socket, allowed: Callable[[str], bool]) -> None:
    if os.fork():
        c.close()
        return
    try:  # the child: tcpd's check, then the service (an echo) for an allowed peer
        if allowed(c.getpeername()[0]):
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


def echo_once(port: int, timeout: float, source: str | None = None) -> None:
    """One short connection: connect to 127.0.0.1:port (from ``source``), send PAYLOAD, read
    the echo, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(PAYLOAD)
        got = 0
        while got < len(PAYLOAD):
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed early")
            got += len(chunk)


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
            echo_once(ports[k], timeout=5)
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


def flood(port: int, start: float, stop: float, max_attempts: int, abandon: float = 0.020,
          window: int = 16384, source: str = "127.0.0.2") -> dict[str, float]:
    """The Python stand-in for flood.c (same arguments, same JSON): unpaced connects from
    ``source`` between the CLOCK_MONOTONIC times ``start`` and ``stop``, each closed with RST
    ``abandon`` seconds after it started; when ``window`` are in flight, wait for the oldest."""
    if stop - start > 120 or not source.startswith("127."):
        raise ValueError("flood: at most 120 s, from 127.0.0.0/8")
    inflight: collections.deque[tuple[float, socket.socket]] = collections.deque()
    counts = {"attempts": 0, "eaddrnotavail": 0, "emfile": 0, "other_errors": 0, "window_full": 0}
    time.sleep(max(0.0, start - time.monotonic()))
    while (now := time.monotonic()) < stop and counts["attempts"] < max_attempts:
        while inflight and inflight[0][0] <= now:
            inflight.popleft()[1].close()
        if len(inflight) >= window:
            counts["window_full"] += 1
            time.sleep(max(0.0, min(stop, inflight[0][0]) - now))
            continue
        try:
            s = socket.socket()
        except OSError:
            counts["emfile"] += 1
            continue
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
        err = s.connect_ex(("127.0.0.1", port))
        if err in (0, errno.EINPROGRESS):
            inflight.append((time.monotonic() + abandon, s))
            counts["attempts"] += 1
            continue
        s.close()
        counts["eaddrnotavail" if err in (errno.EADDRNOTAVAIL, errno.EAGAIN) else "other_errors"] += 1
    for _, s in inflight:
        s.close()
    span = min(time.monotonic(), stop) - start
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {**counts, "rate": counts["attempts"] / span if span > 0 else 0.0, "window": window,
            "cpu_share": (ru.ru_utime + ru.ru_stime) / span if span > 0 else 0.0}


def loopback_sources(cidr: str | None) -> list[str]:
    """The usable addresses of a loopback network (only 127.0.0.0/8 is accepted)."""
    if not cidr:
        return []
    net = ipaddress.ip_network(cidr)
    if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")) \
            or net.num_addresses > 65536:
        raise ValueError(f"client sources: a loopback network of at most 65,536 addresses, not {cidr}")
    return [str(a) for a in (net.hosts() if net.num_addresses > 2 else net)]


def clients(port: int, seconds: float, threads: int, t0: float, sources: str | None = None) -> dict[str, float]:
    """THREADS loops of connect / 64-byte echo / close from 127.0.0.1 (or from the addresses of
    ``sources`` in turn, thread i starting at the i-th) between the
    CLOCK_MONOTONIC times ``t0`` and ``t0 + seconds``; the rate counts the connections that
    completed in that window, the latency percentiles are theirs. ``stalls`` counts those
    that took >= 0.9 s: their SYN was dropped (a full accept queue drops SYNs) and resent
    after the 1 s initial RTO; there are too few of them to move a p99, but each costs a
    client thread a second. A connect still waiting when the window ends is not counted; one
    that takes longer than 2 s (its SYN dropped twice) is a failure."""
    time.sleep(max(0.0, t0 - time.monotonic()))
    stop = t0 + seconds
    lats: list[list[float]] = [[] for _ in range(threads)]
    fails = [0] * threads

    addrs = loopback_sources(sources)

    def loop(i: int) -> None:
        k = i
        while (t1 := time.monotonic()) < stop:
            src = addrs[k % len(addrs)] if addrs else None
            k += threads
            try:
                echo_once(port, timeout=2, source=src)
            except OSError:
                fails[i] += 1
                continue
            if (t2 := time.monotonic()) <= stop:
                lats[i].append(t2 - t1)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    done = sorted(x for d in lats for x in d)

    def pct(q: float) -> float:
        return done[min(len(done) - 1, int(len(done) * q))] * 1e6 if done else 0.0

    return {"count": len(done), "rate": len(done) / seconds, "p50_us": pct(0.50), "p99_us": pct(0.99),
            "max_us": done[-1] * 1e6 if done else 0.0, "stalls": sum(x >= 0.9 for x in done),
            "failures": sum(fails)}


def tcp_ext(*names: str) -> dict[str, int]:
    """Counters from /proc/net/netstat's TcpExt lines (this network namespace, all sockets)."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    table = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    return {n: table.get(n, 0) for n in names}


# ------------------------------------------------------------------------------------------
# The parent side: start roles as processes


def _role(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, os.path.join(HERE, "_kernel_bench.py"), *args], text=True, **kw)


class Server:
    def __init__(self, mode: str, spec: dict[str, Any], backlog: int = 4096) -> None:
        self.proc = _role("server", mode, json.dumps(spec), str(backlog), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
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


def build_flood(tmpdir: str) -> list[str] | None:
    """Compile flood.c with the machine's C compiler into ``tmpdir``; None if there is none."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    exe = os.path.join(tmpdir, "flood")
    subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "flood.c")], check=True, timeout=120)
    return [exe]


def python_flood() -> list[str]:
    return [sys.executable, os.path.join(HERE, "_kernel_bench.py"), "flood"]


def run_clients(port: int, seconds: float, threads: int = 4, flood_cmd: list[str] | None = None,
                max_attempts: int = 20_000_000, window: int = 16384, sources: str | None = None) -> dict[str, float]:
    """The client loop for ``seconds`` against ``port``; with ``flood_cmd``, under a flood
    that starts 0.5 s before the clients (so they meet it in its steady state) and stops
    0.2 s after them. Returns the clients' numbers, the flood's, and the listen-queue
    overflow counters of the namespace over the run."""
    t0 = time.monotonic() + 1.0  # every process started and waiting by then
    fl = None
    if flood_cmd is not None:
        fargs = [str(port), "127.0.0.2", repr(t0 - 0.5), repr(t0 + seconds + 0.2), str(max_attempts), "20", str(window)]
        fl = subprocess.Popen([*flood_cmd, *fargs], stdout=subprocess.PIPE, text=True)
    before = tcp_ext("ListenOverflows", "ListenDrops")
    try:
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "_kernel_bench.py"), "clients", str(port), str(seconds), str(threads), repr(t0),
             *([sources] if sources else [])],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )
        result: dict[str, float] = json.loads(out.stdout)
        if fl is not None:
            for k, v in json.loads(fl.communicate(timeout=30)[0]).items():
                result[f"flood_{k}"] = v
    finally:
        if fl is not None:
            if fl.poll() is None:
                fl.kill()
            fl.wait()
            if fl.stdout is not None:
                fl.stdout.close()
    after = tcp_ext("ListenOverflows", "ListenDrops")
    result.update({k: float(after[k] - before[k]) for k in after})
    time.sleep(1.0)  # let the server drain (and forked children exit) before the next run
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
        serve(argv[1], json.loads(argv[2]), int(argv[3]) if len(argv) > 3 else 4096)
    elif role == "alternate":
        print(json.dumps(alternate([int(p) for p in argv[1].split(",")], float(argv[2]), int(argv[3]))))
    elif role == "clients":
        print(json.dumps(clients(int(argv[1]), float(argv[2]), int(argv[3]), float(argv[4]), argv[5] if len(argv) > 5 else None)))
    elif role == "flood":  # the same arguments as flood.c; only 127.0.0.0/8 accepted
        a = argv[1:]
        if not (a[1].startswith("127.") and len(a) == 7):
            sys.exit("flood: PORT SRC(127.x) START STOP MAX_ATTEMPTS ABANDON_MS WINDOW")
        print(json.dumps(flood(int(a[0]), float(a[2]), float(a[3]), int(a[4]), float(a[5]) / 1000, int(a[6]), a[1])), flush=True)
    else:
        sys.exit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
