"""ICMP: echo (ping) round trips, and the ICMP errors a UDP socket was sent (``IP_RECVERR``).

Echo. An unprivileged *ping socket* (``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)``, and
``IPPROTO_ICMPV6`` for IPv6) lets a process send echo requests without CAP_NET_RAW: the
kernel picks the identifier (the socket's "port"), fills in the checksum and hands back only
the matching replies, without IP header. Who may open one is decided by the
``net.ipv4.ping_group_range`` sysctl (per network namespace, also for IPv6): the caller's
group must be in the range, and the default ``1 0`` admits nobody. When the kernel refuses
(EACCES), we fall back to a *raw* ICMP socket, which needs CAP_NET_RAW (root): then we write
the identifier and the IPv4 checksum ourselves (the kernel computes ICMPv6 checksums on raw
sockets, RFC 3542 §3.1), skip the IPv4 header on receipt, and ignore every ICMP message that
is not our own reply (a raw socket sees all of them, our own requests on loopback included).
The result says which kind of socket was used.

Errors. With ``IP_RECVERR`` / ``IPV6_RECVERR`` set, an ICMP error about a datagram we sent is
queued on the socket and read with ``recvmsg(MSG_ERRQUEUE)`` as a ``struct
sock_extended_err`` (<linux/errqueue.h>) followed by the address of the host that sent it.

Everything here is built by hand on the socket module: no library in the dependency set
speaks ICMP, and the packets are eight bytes of header.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass

from sockgate.errors import AdapterError
from sockgate.linux._errors import translated

# <linux/in.h>, <linux/in6.h>
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_IPV6 = 41
# <linux/errqueue.h>: struct sock_extended_err { u32 ee_errno; u8 ee_origin, ee_type, ee_code,
# ee_pad; u32 ee_info; u32 ee_data; } then the offender's sockaddr (SO_EE_OFFENDER).
SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
# RFC 792 / RFC 4443
ICMP_ECHO_REPLY, ICMP_DEST_UNREACH, ICMP_ECHO = 0, 3, 8
ICMP_PORT_UNREACH = 3
ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 1, 128, 129
ICMPV6_PORT_UNREACH = 4
ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence

_UNREACH_V4 = {
    0: "net unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    4: "fragmentation needed",
    9: "net administratively prohibited",
    10: "host administratively prohibited",
    13: "communication administratively prohibited",
}
_UNREACH_V6 = {
    0: "no route to destination",
    1: "communication administratively prohibited",
    3: "address unreachable",
    4: "port unreachable",
    5: "source address failed policy",
    6: "reject route",
}

MAX_COUNT = 1000
PING_SOCKET = "ping socket"
RAW_SOCKET = "raw socket"


@dataclass(frozen=True)
class IcmpError:
    """One queued ICMP error: which kind, and which host sent it."""

    family: int
    type: int
    code: int
    offender: str | None
    errno: int

    @property
    def port_unreachable(self) -> bool:
        if self.family == socket.AF_INET6:
            return self.type == ICMPV6_DEST_UNREACH and self.code == ICMPV6_PORT_UNREACH
        return self.type == ICMP_DEST_UNREACH and self.code == ICMP_PORT_UNREACH

    def describe(self) -> str:
        table = _UNREACH_V6 if self.family == socket.AF_INET6 else _UNREACH_V4
        unreach = ICMPV6_DEST_UNREACH if self.family == socket.AF_INET6 else ICMP_DEST_UNREACH
        kind = table.get(self.code, f"code {self.code}") if self.type == unreach else f"type {self.type} code {self.code}"
        name = "icmp6" if self.family == socket.AF_INET6 else "icmp"
        return f"{name} {kind}" + (f" from {self.offender}" if self.offender else "")


def enable_errors(sock: socket.socket) -> None:
    """Queue ICMP errors on ``sock`` (IP_RECVERR / IPV6_RECVERR) so ``read_error`` can name them."""
    with translated(f"enable IP_RECVERR on fd {sock.fileno()}"):
        if sock.family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)


def read_error(sock: socket.socket) -> IcmpError | None:
    """The oldest queued error of ``sock`` (MSG_ERRQUEUE), or None when the queue is empty."""
    try:
        _, ancdata, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(512), socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError as e:
        raise AdapterError(f"read error queue of fd {sock.fileno()}: {os.strerror(e.errno or 0)}", errno=e.errno) from e
    for level, kind, data in ancdata:
        if (level, kind) in ((socket.SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
            return _parse_extended_err(data)
    return None


def _parse_extended_err(data: bytes) -> IcmpError:
    ee_errno, origin, etype, code, _pad, _info, _data = SOCK_EXTENDED_ERR.unpack_from(data)
    family = socket.AF_INET6 if origin == SO_EE_ORIGIN_ICMP6 else socket.AF_INET
    return IcmpError(family, etype, code, _offender(data[SOCK_EXTENDED_ERR.size :]), ee_errno)


def _offender(sa: bytes) -> str | None:
    if len(sa) < 2:
        return None
    fam = struct.unpack_from("=H", sa)[0]
    if fam == socket.AF_INET and len(sa) >= 8:
        return socket.inet_ntop(socket.AF_INET, sa[4:8])
    if fam == socket.AF_INET6 and len(sa) >= 24:
        return socket.inet_ntop(socket.AF_INET6, sa[8:24])
    return None


# --- echo -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EchoReply:
    seq: int
    rtt: float  # seconds
    source: str


@dataclass(frozen=True)
class PingResult:
    address: str
    source: str | None
    method: str  # PING_SOCKET | RAW_SOCKET
    sent: int
    replies: tuple[EchoReply, ...]

    @property
    def received(self) -> int:
        return len(self.replies)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    kind = ICMPV6_ECHO_REQUEST if family == socket.AF_INET6 else ICMP_ECHO
    header = ICMP_HEADER.pack(kind, 0, 0, ident, seq)
    return ICMP_HEADER.pack(kind, 0, checksum(header + payload), ident, seq) + payload


def parse_echo_reply(family: int, packet: bytes, raw: bool) -> tuple[int, int] | None:
    """``(identifier, sequence)`` of an echo reply, None for any other ICMP message."""
    if raw and family == socket.AF_INET:
        if not packet:
            return None
        packet = packet[(packet[0] & 0x0F) * 4 :]
    if len(packet) < ICMP_HEADER.size:
        return None
    kind, code, _ck, ident, seq = ICMP_HEADER.unpack_from(packet)
    want = ICMPV6_ECHO_REPLY if family == socket.AF_INET6 else ICMP_ECHO_REPLY
    return (ident, seq) if kind == want and code == 0 else None


def open_echo_socket(family: int) -> tuple[socket.socket, str]:
    """A ping socket when ping_group_range allows it, else a raw socket (root); says which."""
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), PING_SOCKET
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM):
            raise AdapterError(f"open ping socket: {os.strerror(e.errno or 0)}", errno=e.errno) from e
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), RAW_SOCKET
    except OSError as e:
        raise AdapterError(
            f"ICMP echo needs a ping socket or a raw socket: net.ipv4.ping_group_range ({_ping_range()})"
            f" does not include group {os.getegid()}, and raw sockets need CAP_NET_RAW",
            errno=e.errno,
        ) from e


def _ping_range() -> str:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            return " ".join(f.read().split())
    except OSError:
        return "unreadable"


def ping(
    address: str, *, source: str | None = None, count: int = 3, timeout: float = 1.0, interval: float = 0.2
) -> PingResult:
    """Send ``count`` echo requests to ``address`` (a literal), each awaited at most ``timeout``
    seconds, ``interval`` seconds apart. Total time is bounded by count × (timeout + interval)."""
    if not 1 <= count <= MAX_COUNT:
        raise AdapterError(f"ping count must be between 1 and {MAX_COUNT}, got {count}")
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock, method = open_echo_socket(family)
    with sock:
        if source is not None:
            with translated(f"bind ICMP socket to {source}"):
                sock.bind((source, 0))
        ident = secrets.randbelow(0xFFFF) + 1
        replies = []
        for seq in range(1, count + 1):
            reply = _one_echo(sock, family, method == RAW_SOCKET, address, ident, seq, timeout)
            if reply is not None:
                replies.append(reply)
            if seq < count:
                time.sleep(interval)
    return PingResult(address, source, method, count, tuple(replies))


def _one_echo(
    sock: socket.socket, family: int, raw: bool, address: str, ident: int, seq: int, timeout: float
) -> EchoReply | None:
    payload = struct.pack("!d", time.time()) + b"sockgate-probe"
    start = time.monotonic()
    with translated(f"send ICMP echo to {address}"):
        sock.sendto(echo_request(family, ident, seq, payload), (address, 0))
    deadline = start + timeout
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if not poller.poll(left * 1000):
            break
        try:
            packet, peer = sock.recvfrom(65535, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:  # an ICMP error for a ping socket: no reply for this one
            continue
        got = parse_echo_reply(family, packet, raw)
        # a ping socket only delivers our own identifier (the kernel rewrote it); a raw one sees all
        if got is not None and got[1] == seq and (got[0] == ident or not raw):
            return EchoReply(seq, time.monotonic() - start, peer[0])
    return None
