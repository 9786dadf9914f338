"""No pacing on a loopback leg: which relay sockets leave BBR, and for what.

A relay direction that turns out to carry bulk data (a read filled the 64 KiB copy buffer:
``relay.py``, ``pump_bulk`` in ``_lane.c``) looks at its destination socket: if the socket's
peer is this host (a loopback address, IPv4-mapped or not, or the socket's own address) and
its congestion control is BBR, it switches to the proxy's ``--loopback-cc`` (``auto``: cubic,
else reno; ``keep``: never). BBR paces every segment with a timer (on a device with no
qdisc of its own, as loopback, TCP paces internally); on a path with no queue and no loss to
protect, that buys nothing and costs a stream most of its rate: on a 2-CPU machine one
relayed 1-stream transfer made 19–20 Gbit/s paced and 29–32 unpaced, and a direct loopback
stream 33 against 70 (docs/benchmarks.md, "Issue 16: pacing on loopback"). Short exchanges,
remote legs and every other congestion control keep what the system or the operator chose (a
route's ``congctl bbr`` is switched like any BBR, unless the route locks it: then the kernel
refuses); a switch the kernel refuses leaves the socket as it was.

The decision reads the addresses the socket shows, which are those before any NAT: a
loopback or own address that netfilter rewrites to another machine (``route_localnet`` with
a DNAT, a container platform's hairpin) counts as this host, and that leg loses BBR; run
such a proxy with ``--loopback-cc keep``. What a wrong guess can cost is a congestion
control, never a byte or a decision. A peer elsewhere cannot make the guess for its own
connection: a SYN that claims a loopback or own source address gets its SYN-ACK sent over
loopback, so the handshake never completes.

The C relay (``_lane.c``: ``same_host``, ``pump_bulk``) does the same; the tests hold both
to it, on real sockets and over generated addresses (tests/kernel/test_relay_pacing.py).
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import os
import re
import socket

from sockgate.errors import UsageError
from sockgate.policy.forward import unmapped_address

_CC_NAME = re.compile(r"[a-z0-9_]{1,15}")  # TCP_CA_NAME_MAX 16 with the NUL (_lane.c checks it too)
_AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"
LOOPBACK_CC_AUTO = ("cubic", "reno")  # --loopback-cc auto: the first of these this process may set


def same_host(peer: str, local: str) -> bool:
    """A TCP peer at ``peer`` reached from ``local`` (address texts, as ``getpeername`` and
    ``getsockname`` give them) is this host: a loopback address, IPv4-mapped or not, or the
    socket's own address (zones not compared: both ends of a connection share one)."""
    try:
        p = ipaddress.ip_address(peer.partition("%")[0])
        return unmapped_address(p).is_loopback or p == ipaddress.ip_address(local.partition("%")[0])
    except ValueError:
        return False


def unpace(s: _socket.socket, cc: bytes) -> bool:
    """Switch a TCP socket to this host off BBR to ``cc`` (module doc); True if it switched.
    Any failure leaves the socket as it was."""
    try:
        if not s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).startswith(b"bbr"):
            return False
        if not same_host(s.getpeername()[0], s.getsockname()[0]):
            return False
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc)
    except OSError:
        return False
    return True


def available() -> frozenset[str] | None:
    """The congestion controls the kernel has loaded; None if it does not say."""
    try:
        with open(_AVAILABLE, encoding="ascii") as f:
            return frozenset(f.read(4096).split())
    except (OSError, ValueError):
        return None


def choose_cc(wanted: str, auto: tuple[str, ...] = LOOPBACK_CC_AUTO) -> bytes:
    """The congestion control name ``--loopback-cc`` means, b"" for none (``keep``): ``auto``
    the first of ``auto`` that is loaded and that the kernel lets this process set (none, or
    no IPv4 socket to try it on: b""), else a name that must be loaded
    (``tcp_available_congestion_control``, which must be readable: a name is never a reason
    for the kernel to load a module) and settable, tried on a throwaway socket. ``UsageError``
    otherwise."""
    if wanted == "keep":
        return b""
    names = auto if wanted == "auto" else (wanted,)
    if wanted != "auto":
        if not _CC_NAME.fullmatch(wanted):
            raise UsageError(f"--loopback-cc {wanted!r}: not a congestion control name (auto, keep, or e.g. cubic, reno)")
        if wanted.startswith("bbr"):
            raise UsageError(f"--loopback-cc {wanted}: paces as BBR does; use keep to leave BBR in place")
    loaded = available()
    if loaded is None and wanted != "auto":
        raise UsageError(f"--loopback-cc {wanted}: cannot read {_AVAILABLE} to see that it is loaded; use auto or keep")
    names = tuple(n for n in names if loaded is None or n in loaded)
    last: OSError | None = None
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        if wanted == "auto":
            return b""  # no IPv4 here (RestrictAddressFamilies=AF_UNIX): no TCP leg to unpace either
        raise UsageError(f"--loopback-cc {wanted}: cannot try it: {os.strerror(e.errno or 0)}") from None
    with probe:
        for name in names:
            try:
                probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
                return name.encode()
            except OSError as e:
                last = e
    if wanted == "auto":
        return b""
    if last is None or last.errno == errno.ENOENT:
        raise UsageError(f"--loopback-cc {wanted}: not loaded in this kernel (net.ipv4.tcp_available_congestion_control;"
                         f" modprobe tcp_{wanted} first)")
    raise UsageError(f"--loopback-cc {wanted}: {os.strerror(last.errno or 0)} (net.ipv4.tcp_allowed_congestion_control"
                     " lists what a process without CAP_NET_ADMIN may set)")
