"""What one source sees of a port: ``open``, ``closed``, ``filtered`` — the verdicts of nmap.

TCP (as ``nmap -sT``): a non-blocking ``connect`` from an optional source address, awaited at
most ``timeout`` seconds. The handshake completing is ``open``; a reset (ECONNREFUSED) is
``closed``; silence until the timeout, or an ICMP unreachable from a router or host
(EHOSTUNREACH, ENETUNREACH, EACCES…) is ``filtered``. A sockgate guard drops a denied SYN in
the kernel before any SYN-ACK, so a denied source sees ``filtered``, like a firewall drop.

UDP (as ``nmap -sU``): a connected datagram socket with ``IP_RECVERR`` sends the payload (empty
by default), a few times within the timeout. A datagram back is ``open``; an ICMP *port*
unreachable from the target is ``closed``; any other ICMP unreachable is ``filtered``;
silence is ``open|filtered`` — an open port that does not answer the payload and a dropped
datagram look the same from outside.

ICMP echo lives in ``sockgate.linux.icmp`` (ping sockets, raw sockets as a fallback);
``probe_icmp`` here only resolves the host and wraps it. Every probe ends within its timeout
(TCP, UDP) or within count × (timeout + interval) (ICMP).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from sockgate.errors import AdapterError, UsageError
from sockgate.linux import icmp

OPEN = "open"
CLOSED = "closed"
FILTERED = "filtered"
OPEN_FILTERED = "open|filtered"
STATES = (OPEN, CLOSED, FILTERED, OPEN_FILTERED)

DEFAULT_TIMEOUT = 2.0
MAX_TIMEOUT = 600.0
UDP_TRIES = 2

# connect() errors that mean "something on the path answered no", not "the port said no".
_FILTERED_ERRNOS = {
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EACCES: "administratively prohibited",
    errno.EPERM: "blocked locally (EPERM)",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTDOWN: "host down",
}


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict. ``rtt`` is seconds from the first packet to the deciding answer
    (None when nothing answered); ``reason`` says what decided it."""

    proto: str  # "tcp" | "udp"
    host: str
    address: str
    port: int
    state: str
    reason: str
    rtt: float | None
    source: str | None
    reply: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "source": self.source,
            "state": self.state,
            "reason": self.reason,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "reply_hex": None if self.reply is None else self.reply.hex(),
        }


@dataclass(frozen=True)
class IcmpResult:
    host: str
    ping: icmp.PingResult

    @property
    def state(self) -> str:
        return "up" if self.ping.replies else "no reply"

    def to_json(self) -> dict[str, Any]:
        p = self.ping
        rtts = [r.rtt * 1000 for r in p.replies]
        return {
            "proto": "icmp",
            "host": self.host,
            "address": p.address,
            "source": p.source,
            "method": p.method,
            "state": self.state,
            "sent": p.sent,
            "received": p.received,
            "rtt_ms": [round(r, 3) for r in rtts],
            "rtt_min_ms": round(min(rtts), 3) if rtts else None,
            "rtt_avg_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
            "rtt_max_ms": round(max(rtts), 3) if rtts else None,
        }


def target_address(host: str, port: int, kind: int, source: str | None = None) -> tuple[int, tuple[Any, ...]]:
    """``(family, sockaddr)`` for ``host``; with a source, the family the source belongs to."""
    want = socket.AF_UNSPEC
    if source is not None:
        want = socket.AF_INET6 if ":" in source else socket.AF_INET
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(h, port, want, kind, 0, socket.AI_NUMERICSERV)
    except socket.gaierror as e:
        fam = {socket.AF_INET: " as IPv4", socket.AF_INET6: " as IPv6"}.get(want, "")
        raise UsageError(f"cannot resolve host {host!r}{fam}: {e.strerror}") from e
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _check(port: int, timeout: float) -> None:
    if not 0 < port < 65536:
        raise UsageError(f"port must be 1-65535, got {port}")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise UsageError(f"timeout must be > 0 and <= {MAX_TIMEOUT:g} seconds, got {timeout:g}")


def _bind(sock: socket.socket, source: str | None) -> None:
    if source is None:
        return
    try:
        sock.bind((source, 0))
    except OSError as e:
        hint = " (not an address of this host)" if e.errno == errno.EADDRNOTAVAIL else ""
        raise AdapterError(f"bind source {source}: {e.strerror}{hint}", errno=e.errno, target=source) from e


def probe_tcp(host: str, port: int, *, source: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """Connect to ``host``:``port`` (from ``source``) and report open / closed / filtered."""
    _check(port, timeout)
    family, addr = target_address(host, port, socket.SOCK_STREAM, source)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        _bind(sock, source)
        start = time.monotonic()
        err = sock.connect_ex(addr)
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            if not _poll(poller, start + timeout):
                return ProbeResult("tcp", host, addr[0], port, FILTERED, "no answer (timeout)", None, source)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        rtt = time.monotonic() - start
        if err == 0:
            # close with a reset (SO_LINGER on, 0 s): a probe leaves no TIME-WAIT behind
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return ProbeResult("tcp", host, addr[0], port, OPEN, "syn-ack", rtt, source)
        if err == errno.ECONNREFUSED:
            return ProbeResult("tcp", host, addr[0], port, CLOSED, "reset", rtt, source)
        if err in _FILTERED_ERRNOS:
            return ProbeResult("tcp", host, addr[0], port, FILTERED, _FILTERED_ERRNOS[err], rtt, source)
        raise AdapterError(f"connect to {host} port {port}: {errno.errorcode.get(err, err)}", errno=err)


def _poll(poller: "select.poll", deadline: float) -> list[tuple[int, int]]:
    while (left := deadline - time.monotonic()) > 0:
        events = poller.poll(max(1, int(left * 1000)))
        if events:
            return events
    return []


def probe_udp(
    host: str,
    port: int,
    *,
    source: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    payload: bytes = b"",
    tries: int = UDP_TRIES,
) -> ProbeResult:
    """Send ``payload`` to ``host``:``port`` (from ``source``) ``tries`` times within ``timeout``;
    report open / closed / filtered / open|filtered."""
    _check(port, timeout)
    family, addr = target_address(host, port, socket.SOCK_DGRAM, source)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        _bind(sock, source)
        icmp.enable_errors(sock)
        try:
            sock.connect(addr)
        except OSError as e:
            if e.errno in _FILTERED_ERRNOS:  # no route from here: nothing can answer
                return ProbeResult("udp", host, addr[0], port, FILTERED, _FILTERED_ERRNOS[e.errno], None, source)
            raise AdapterError(f"connect UDP socket to {host} port {port}: {e.strerror}", errno=e.errno) from e
        return _udp_exchange(sock, host, addr[0], port, source, timeout, payload, max(1, tries))


def _udp_exchange(
    sock: socket.socket,
    host: str,
    address: str,
    port: int,
    source: str | None,
    timeout: float,
    payload: bytes,
    tries: int,
) -> ProbeResult:
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR)
    start = time.monotonic()
    for attempt in range(tries):
        try:
            sock.send(payload)
        except OSError:
            pass  # a pending ICMP error (ECONNREFUSED...) is read from the error queue below
        if _poll(poller, start + timeout * (attempt + 1) / tries) or attempt == tries - 1:
            verdict = _udp_answer(sock)
            if verdict is not None:
                state, reason, reply = verdict
                rtt = time.monotonic() - start
                return ProbeResult("udp", host, address, port, state, reason, rtt, source, reply)
    return ProbeResult("udp", host, address, port, OPEN_FILTERED, "no answer (timeout)", None, source)


def _udp_answer(sock: socket.socket) -> tuple[str, str, bytes | None] | None:
    err = icmp.read_error(sock)
    if err is not None:
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # clear the pending error
        if err.port_unreachable:
            return CLOSED, err.describe(), None
        return FILTERED, err.describe(), None
    try:
        data = sock.recv(65535, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except ConnectionRefusedError:
        return CLOSED, "port unreachable (ECONNREFUSED)", None
    except OSError:
        return None
    return OPEN, "udp reply", data


def probe_icmp(
    host: str, *, source: str | None = None, count: int = 3, timeout: float = 1.0, interval: float = 0.2
) -> IcmpResult:
    """ICMP echo to ``host``: ping socket when allowed, raw socket as root otherwise."""
    if not 0 < timeout <= MAX_TIMEOUT:
        raise UsageError(f"timeout must be > 0 and <= {MAX_TIMEOUT:g} seconds, got {timeout:g}")
    if not 1 <= count <= icmp.MAX_COUNT:
        raise UsageError(f"count must be between 1 and {icmp.MAX_COUNT}, got {count}")
    _family, addr = target_address(host, 0, socket.SOCK_DGRAM, source)
    return IcmpResult(host, icmp.ping(addr[0], source=source, count=count, timeout=timeout, interval=interval))
