"""No pacing on a loopback leg: which relay sockets leave BBR, and for what.

A relay direction that turns out to carry bulk data (a read filled the 64 KiB copy buffer:
``relay.py``, ``pump_bulk`` in ``_lane.c``) looks at its destination socket: if the socket's
peer is this host (a loopback address, IPv4-mapped or not, or the socket's own address) and
its congestion control is BBR, it switches to the proxy's ``--loopback-cc`` (``auto``: cubic,
else reno; ``keep``: never). BBR paces every segment with a timer (on a device with no
qdisc of its own, as loopback, TCP paces internally); on a path with no queue and no loss to
protect, that buys nothing and costs a stream most of its rate: on a 2-CPU machine one
relayed 1-stream transfer made 19–20 Gbit/s paced and 29–32 unpaced, and a direct loopback
stream 33 against 70 (docs/benchmarks.md, "Pacing on loopback"). Short exchanges, remote legs
and every other congestion control keep what the system or the operator chose; a switch the
kernel refuses leaves the socket as it was: it is a matter of speed, not of safety. Remote
peers cannot pose as this host: the kernel drops packets from loopback or local source
addresses that arrive on another interface (martians), and IPv4-mapped IPv6 sources.

The C relay (``_lane.c``, ``same_host`` and ``pump_bulk``) does the same; the tests hold both
to it on real sockets (tests/kernel/test_relay_pacing.py).
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import os
import re
import socket

from sockgate.errors import UsageError

_CC_NAME = re.compile(r"[a-z0-9_]{1,15}")  # TCP_CA_NAME_MAX 16 with the NUL


def same_host(peer: str, local: str) -> bool:
    """A TCP peer at ``peer`` reached from ``local`` (address texts, as ``getpeername`` and
    ``getsockname`` give them) is this host: a loopback address, IPv4-mapped or not, or the
    socket's own address. (Packets from elsewhere cannot carry either: the kernel drops
    loopback and local sources arriving on other interfaces as martians.)"""
    try:
        p = ipaddress.ip_address(peer.partition("%")[0])
    except ValueError:
        return False
    if isinstance(p, ipaddress.IPv6Address) and p.ipv4_mapped is not None:
        if p.ipv4_mapped.is_loopback:
            return True
    return p.is_loopback or peer == local


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


LOOPBACK_CC_AUTO = ("cubic", "reno")  # --loopback-cc auto: the first of these this process may set


def choose_cc(wanted: str) -> bytes:
    """The congestion control name ``--loopback-cc`` means (``keep``: b"", none), tried on a
    throwaway socket: ``auto`` the first of ``LOOPBACK_CC_AUTO`` the kernel lets this process
    set (b"" if none), a name that must be settable. ``UsageError`` for a name that is not."""
    if wanted == "keep":
        return b""
    names = LOOPBACK_CC_AUTO if wanted == "auto" else (wanted,)
    if wanted != "auto" and not _CC_NAME.fullmatch(wanted):
        raise UsageError(f"--loopback-cc {wanted!r}: not a congestion control name (auto, keep, or e.g. cubic, reno)")
    last: OSError | None = None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        for name in names:
            try:
                probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
                return name.encode()
            except OSError as e:
                last = e
    if wanted == "auto":
        return b""
    why = "not available in this kernel" if last is not None and last.errno == errno.ENOENT else (
        os.strerror(last.errno) if last is not None and last.errno else "refused")
    raise UsageError(f"--loopback-cc {wanted}: {why} (net.ipv4.tcp_available_congestion_control, "
                     "tcp_allowed_congestion_control)")
