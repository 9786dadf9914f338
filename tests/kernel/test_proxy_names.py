"""Host-name rules in `sockgate proxy` against a resolver the peers make slow, for real.

The proxy runs in its own mount namespace where /etc/resolv.conf names a tiny DNS server on a
loopback address that answers every query — thousands of PTR lookups for sources on
127.1.0.0/16 — NXDOMAIN, late; /etc/hosts names the clients that should be served. That is a
peer controlling how slowly its own reverse DNS answers, through the C library's resolver.
"""

from __future__ import annotations

import heapq
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from support.proxyproc import SRC, EchoServer, ProxyProc, connect, roundtrip, wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a mount namespace for resolv.conf)"),
]


class SlowDNS:
    """A DNS server on ``(address, 53)`` answering every query NXDOMAIN ``delay`` seconds
    late; counts queries and the most it held unanswered at once."""

    def __init__(self, address: str, delay: float) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.delay = delay
        self.queries = 0
        self.most_outstanding = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def nxdomain(query: bytes) -> bytes:
        """The query's id and question, QR and RA set, RCODE 3 (RFC 1035 section 4.1.1)."""
        qid, flags = struct.unpack("!HH", query[:4])
        end = 12
        while query[end]:
            end += 1 + query[end]
        end += 1 + 4  # the root label, QTYPE and QCLASS
        return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7900) | 0x0080 | 3, 1, 0, 0, 0) + query[12:end]

    def answer(self, query: bytes) -> tuple[float, bytes]:
        """How late, and what, to answer ``query``."""
        return self.delay, self.nxdomain(query)

    def _run(self) -> None:
        due: list[tuple[float, int, bytes, tuple[str, int]]] = []
        while not self.stopping:
            wait = min(0.1, max(0.0, due[0][0] - time.monotonic())) if due else 0.1
            if select.select([self.sock], [], [], wait)[0]:
                query, client = self.sock.recvfrom(4096)
                self.queries += 1
                delay, answer = self.answer(query)
                heapq.heappush(due, (time.monotonic() + delay, self.queries, answer, client))
                self.most_outstanding = max(self.most_outstanding, len(due))
            while due and due[0][0] <= time.monotonic():
                _, _, answer, to = heapq.heappop(due)
                self.sock.sendto(answer, to)
        self.sock.close()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)


class ZoneDNS(SlowDNS):
    """A DNS server with a zone of its own: ``records`` maps (name, QTYPE) to (RDATA, delay);
    a name it has answers NODATA for other types, any other name NXDOMAIN, at once."""

    def __init__(self, address: str, records: dict[tuple[str, int], tuple[bytes, float]]) -> None:
        self.records = records
        super().__init__(address, 0.0)

    @staticmethod
    def encode(name: str) -> bytes:
        return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"

    def answer(self, query: bytes) -> tuple[float, bytes]:
        labels, end = [], 12
        while query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode().lower())
            end += 1 + query[end]
        qtype = struct.unpack("!H", query[end + 1 : end + 3])[0]
        name = ".".join(labels)
        found = self.records.get((name, qtype))
        if found is None:
            known = any(n == name for n, _ in self.records)
            reply = self.nxdomain(query)
            return 0.0, reply if not known else reply[:3] + bytes([reply[3] & 0xF0]) + reply[4:]  # NODATA: RCODE 0
        rdata, delay = found
        qid, flags = struct.unpack("!HH", query[:4])
        head = struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7900) | 0x0080, 1, 1, 0, 0)
        rr = struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata  # the name: a pointer to the question's
        return delay, head + query[12 : end + 5] + rr


def _ptr(address: str) -> str:
    return ".".join(reversed(address.split("."))) + ".in-addr.arpa"


def _rx_queue(port: int) -> int:
    """Bytes waiting in the receive queue of the UDP socket bound to ``port`` (/proc/net/udp)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port:
            return int(f[4].split(":")[1], 16)
    return 0


@pytest.fixture
def slow_dns() -> Iterator[SlowDNS]:
    d = SlowDNS(f"127.53.{os.getpid() % 250}.1", delay=2.5)
    yield d
    d.close()


def _resolver_namespace(tmp_path: Path, dns: SlowDNS, hosts: str) -> list[str]:
    """A command prefix: a private mount namespace whose resolv.conf, hosts and nsswitch.conf
    are the test's (files first, then the slow server)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {dns.sock.getsockname()[0]}\noptions timeout:4 attempts:1\n")
    (tmp_path / "hosts").write_text(hosts)
    nss = [ln for ln in Path("/etc/nsswitch.conf").read_text().splitlines() if not ln.startswith("hosts:")]
    (tmp_path / "nsswitch.conf").write_text("\n".join([*nss, "hosts: files dns", ""]))
    script = ('mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/hosts && '
              'mount --bind "$3" /etc/nsswitch.conf && shift 3 && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            str(resolv), str(tmp_path / "hosts"), str(tmp_path / "nsswitch.conf")]


def test_slow_names_of_one_service_starve_neither_another_nor_the_exit(tmp_path: Path, slow_dns: SlowDNS) -> None:
    echo = EchoServer()
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    backend.bind(("127.0.0.1", 0))
    backend.settimeout(5)
    pol = tmp_path / "p.conf"
    pol.write_text(f"""
        service slow udp/5353 {{
            listen udp://127.0.0.1:0
            forward udp://127.0.0.1:{backend.getsockname()[1]}
            allow host .good.test
            default deny
        }}
        service fast tcp/80 {{
            listen tcp://127.0.0.1:0
            forward tcp://127.0.0.1:{echo.port}
            allow host fast.test
            default deny
        }}
        """)
    hosts = "127.0.0.1 localhost\n127.0.0.9 fast.test\n127.0.0.10 ok.good.test\n"
    p = ProxyProc([str(pol), "--name-timeout", "1", "--drain-timeout", "1"], tmp_path / "proxy.log",
                  prefix=_resolver_namespace(tmp_path, slow_dns, hosts))
    try:
        udp_port, tcp_port = (int(a.rsplit(":", 1)[1]) for a in p.ready())
        ok = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with ok:  # a client of the flooded service, named before the flood
            ok.bind(("127.0.0.10", 0))
            ok.sendto(b"before", ("127.0.0.1", udp_port))
            assert backend.recvfrom(100)[0] == b"before"
        # 3,000 datagrams from distinct sources whose PTR lookups all answer late
        for i in range(3000):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((f"127.1.{i // 250}.{i % 250 + 1}", 0))
                s.sendto(b"flood", ("127.0.0.1", udp_port))
            if i % 100 == 99:  # let the proxy read them rather than overflow its buffer
                wait_for(lambda: _rx_queue(udp_port) == 0, timeout=10)
        wait_for(lambda: slow_dns.queries >= 4)  # the slow lookups run
        for n in range(3):  # another service, whose client's name is in /etc/hosts, is served
            with connect(tcp_port, "127.0.0.9", timeout=5) as c:  # (named within --name-timeout)
                assert roundtrip(c, b"fast%d" % n) == b"fast%d" % n
        ok = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with ok:  # and the flooded service's own client, whose name is cached, still is
            ok.bind(("127.0.0.10", 0))
            ok.sendto(b"after", ("127.0.0.1", udp_port))
            assert backend.recvfrom(100)[0] == b"after"
        fast = p.wait_record(service="fast", decision="allow")
        assert fast["peer"].startswith("fast.test[127.0.0.9:")
        # over its bounds the flooded service refuses (fail closed), and says why
        refused = wait_for(lambda: (r := p.find(service="slow", decision="deny", rule="limit")) and len(r) > 2000 and r)
        assert "host-name lookups of this service are at their bound" in refused[0]["reason"]
        assert slow_dns.most_outstanding <= 4  # the lane's threads: no more queries at once
        # SIGTERM ends the process within the drain timeout, lookups still hanging
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        try:
            code = p.proc.wait(1 + 3)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the proxy was still running {time.monotonic() - t0:.1f}s after SIGTERM with --drain-timeout 1")
        assert code == 0 and p.find(event="notice", message="stopped")
    finally:
        p.close()
        backend.close()
        echo.close()


def test_tcp_clients_over_the_name_queue_are_refused_and_waiting_ones_go_at_sigterm(tmp_path: Path, slow_dns: SlowDNS) -> None:
    echo = EchoServer()
    pol = tmp_path / "p.conf"
    pol.write_text(f"""
        service web tcp/80 {{
            listen tcp://127.0.0.1:0
            forward tcp://127.0.0.1:{echo.port}
            allow host .good.test
            default deny
        }}
        """)
    p = ProxyProc([str(pol), "--name-queue", "2", "--name-timeout", "30", "--drain-timeout", "10"], tmp_path / "proxy.log",
                  prefix=_resolver_namespace(tmp_path, slow_dns, "127.0.0.1 localhost\n"))
    clients: list[socket.socket] = []
    try:
        port = int(p.ready()[0].rsplit(":", 1)[1])
        for i in range(1, 11):
            clients.append(connect(port, f"127.1.0.{i}", timeout=5))
        # 4 lookups run, 2 wait, and the other 4 clients are refused at once
        wait_for(lambda: len(p.find(decision="deny", rule="limit")) == 4)
        wait_for(lambda: slow_dns.queries == 4)
        refused = {r["peer"].rsplit(":", 1)[0] for r in p.find(decision="deny", rule="limit")}
        assert refused == {f"127.1.0.{i}" for i in range(7, 11)}
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)  # the 6 that wait for a name are not admitted: refused now
        assert p.proc.wait(5) == 0
        assert time.monotonic() - t0 < 2.0  # neither the 30 s name timeout nor the drain
        stopped = p.find(decision="deny", rule="shutdown")
        assert {r["peer"].rsplit(":", 1)[0] for r in stopped} == {f"127.1.0.{i}" for i in range(1, 7)}
        for c in clients:
            try:
                assert c.recv(10) == b""
            except ConnectionResetError:
                pass
    finally:
        for c in clients:
            c.close()
        p.close()
        echo.close()


LATE = 2.5  # the PTR answer's delay: past --name-timeout 1, within resolv.conf's timeout 4


@pytest.fixture
def evil_zone() -> Iterator[ZoneDNS]:
    """The attacker's reverse zone answers 127.0.0.5 and 127.0.0.8 late, 127.0.0.6 at once;
    its forward names answer at once; 127.0.0.7 has no PTR record (NXDOMAIN, at once)."""
    ptr, a = 12, 1
    records: dict[tuple[str, int], tuple[bytes, float]] = {}
    for host, name, delay in (("127.0.0.5", "attacker.evil.com", LATE), ("127.0.0.6", "mallory.evil.com", 0.0),
                              ("127.0.0.8", "trusted.evil.com", LATE)):
        records[(_ptr(host), ptr)] = (ZoneDNS.encode(name), delay)
        records[(name, a)] = (socket.inet_aton(host), 0.0)
    d = ZoneDNS(f"127.53.{os.getpid() % 250}.2", records)
    yield d
    d.close()


def _served(port: int, src: str) -> bool:
    try:
        with connect(port, src, timeout=10) as c:
            return roundtrip(c, b"hi") == b"hi"
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return False


def test_a_late_reverse_lookup_does_not_turn_off_a_deny_by_name(tmp_path: Path, evil_zone: ZoneDNS) -> None:
    """libwrap waits for the resolver, gets attacker.evil.com and denies; the proxy, which
    stops waiting at --name-timeout, must not let the client in as nameless."""
    echo = EchoServer()
    pol = tmp_path / "p.conf"
    pol.write_text(f"""
        service sshd tcp/22 {{
            listen tcp://127.0.0.1:0
            forward tcp://127.0.0.1:{echo.port}
            allow 127.0.0.8
            deny host .evil.com
            default allow
        }}
        """)
    prefix = _resolver_namespace(tmp_path, evil_zone, "127.0.0.1 localhost\n")
    p = ProxyProc([str(pol), "--name-timeout", "1"], tmp_path / "proxy.log", prefix=prefix)
    try:
        port = int(p.ready()[0].rsplit(":", 1)[1])
        assert not _served(port, "127.0.0.5")  # PTR past the timeout: refused, fail closed
        late = p.wait_record(decision="deny", rule="limit")
        assert late["peer"].startswith("127.0.0.5:") and "did not finish in time" in late["reason"]
        assert not _served(port, "127.0.0.6")  # PTR in time: refused by the rule
        assert p.wait_record(decision="deny", rule=f"{pol}:6")["peer"].startswith("mallory.evil.com[127.0.0.6:")
        assert _served(port, "127.0.0.7")  # no PTR at all: unknown, which the policy allows
        assert _served(port, "127.0.0.8")  # late too, but allowed whatever its name
        wait_for(lambda: len(p.find(event="decision", decision="allow")) == 2)  # (the log is written in batches)
        allowed = [r["peer"].rsplit(":", 1)[0] for r in p.find(event="decision", decision="allow")]
        assert allowed == ["127.0.0.7", "127.0.0.8"]
        # `sockgate check` gives up at --timeout too: it says so and does not grant
        check = subprocess.run([*prefix, sys.executable, "-m", "sockgate", "check", str(pol), "--service", "sshd",
                                "--client", "127.0.0.5", "--timeout", "1"], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PYTHONPATH": SRC})
        assert check.returncode == 1, check.stderr
        assert "access:   denied" in check.stdout and "timed out" in check.stdout
    finally:
        p.close()
        echo.close()
