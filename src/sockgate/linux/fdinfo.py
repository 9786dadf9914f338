"""What one descriptor is, asked of the socket itself through our duplicate of it.

The tables (``linux.sockdiag``) list the sockets of our network namespace; a descriptor
duplicated with ``pidfd_getfd`` answers for itself, in any namespace: that it really is a socket
(``fstat``, which also gives its owner), its family, type and protocol (``SO_PROTOCOL``), local and peer address, whether it
listens (``SO_ACCEPTCONN``), whether others may bind the same address (``SO_REUSEPORT``, or
``SO_REUSEADDR`` for UDP), its cookie (``SO_COOKIE``), and its identity (device and inode of
the socket), so a socket shared by several processes — a listener inherited across ``fork``,
as pre-forking servers do — is counted once. The answer is a ``sockdiag.Sock``, the same record
the tables give.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from typing import Any, Callable

from sockgate.errors import AdapterError
from sockgate.linux._errors import translated
from sockgate.linux.sockdiag import TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, UNIX_TYPES, Sock

# <asm-generic/socket.h>
SO_ACCEPTCONN = getattr(socket, "SO_ACCEPTCONN", 30)
SO_COOKIE = getattr(socket, "SO_COOKIE", 57)
IPPROTO_MPTCP = 262  # <uapi/linux/in.h>
_COOKIE = struct.Struct("=Q")
_FAMILIES = {int(socket.AF_INET): "ipv4", int(socket.AF_INET6): "ipv6", int(socket.AF_UNIX): "unix"}


def describe_fd(dup: int, pid: int, fd: int) -> Sock:
    """What our duplicate ``dup`` of ``pid``'s ``fd`` is; refuses what is not a socket."""
    with translated(f"fstat pid {pid} fd {fd}"):
        st = os.fstat(dup)
    if not stat.S_ISSOCK(st.st_mode):
        raise AdapterError(f"pid {pid} fd {fd} is not a socket", errno=errno.ENOTSOCK, target=f"pid {pid} fd {fd}")
    s = socket.socket(fileno=dup)
    try:
        return _describe(s, st.st_ino, st.st_uid)
    finally:
        s.detach()


def _describe(s: socket.socket, inode: int, uid: int) -> Sock:
    fam = int(s.family)
    family = _FAMILIES.get(fam, f"family {fam}")
    proto = _proto(fam, int(s.type), s.proto)
    kind = UNIX_TYPES.get(int(s.type), "raw")
    listening = proto in ("tcp", "unix") and bool(s.getsockopt(socket.SOL_SOCKET, SO_ACCEPTCONN))
    local, peer = _name(s.getsockname), _name(s.getpeername)
    state = TCP_LISTEN if listening else TCP_ESTABLISHED if peer is not None else TCP_CLOSE
    reuse = proto in ("tcp", "udp") and bool(
        s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        or (proto == "udp" and s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
    )
    if family == "unix":
        name = _unix_name(local)
        return Sock("unix", family, kind, state, inode, uid, unix_name=name, reuse=False, cookie=_cookie(s))
    (laddr, lport, ifindex), (paddr, pport, _) = _inet(local), _inet(peer)
    v6only = bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)) if family == "ipv6" else None
    return Sock(
        proto, family, kind, state, inode, uid, laddr, lport, paddr, pport,
        v6only=v6only, ifindex=ifindex, reuse=reuse, cookie=_cookie(s),
    )


def _proto(family: int, type_: int, proto: int) -> str:
    if family == socket.AF_UNIX:
        return "unix"
    if family not in (socket.AF_INET, socket.AF_INET6):
        return f"family {family}"
    if type_ == socket.SOCK_STREAM and proto in (0, socket.IPPROTO_TCP, IPPROTO_MPTCP):
        return "tcp"
    if type_ == socket.SOCK_DGRAM and proto in (0, socket.IPPROTO_UDP):
        return "udp"
    if type_ == socket.SOCK_DGRAM and proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
        return "icmp"  # a ping socket: no service to guard
    if type_ == socket.SOCK_RAW:
        return "raw"
    return f"ip protocol {proto}"


def _name(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except OSError:  # not connected, or no name
        return None


def _inet(addr: object) -> tuple[str | None, int | None, int]:
    """(address, port, interface index) of a getsockname/getpeername tuple; Python appends
    ``%scope`` to a link-local IPv6 address, the tables give the interface index instead."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return None, None, 0
    host, port = str(addr[0]), int(addr[1])
    scope = int(addr[3]) if len(addr) >= 4 else 0
    return host.split("%", 1)[0], port, scope


def _unix_name(addr: object) -> str | None:
    """A path, or ``@name`` for the abstract namespace (later NULs as @, like ss and sockdiag)."""
    if isinstance(addr, bytes):
        if not addr:
            return None
        return "@" + addr[1:].replace(b"\0", b"@").decode("utf-8", "backslashreplace")
    return str(addr) if addr else None


def _cookie(s: socket.socket) -> int | None:
    try:
        return int(_COOKIE.unpack(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, _COOKIE.size))[0])
    except OSError:  # before Linux 4.12
        return None


def identity(dup: int) -> tuple[int, int]:
    """(device, inode) of the socket behind ``dup``: equal for the same socket in any process."""
    with translated(f"fstat fd {dup}"):
        st = os.fstat(dup)
    return (st.st_dev, st.st_ino)
