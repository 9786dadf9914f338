"""Who is on the other end of a connected socket, as a ``decide.Peer``.

Unix domain sockets carry the peer's credentials as the kernel recorded them at ``connect``
time (or ``socketpair``):

* ``SO_PEERCRED``  — ``struct ucred { pid, uid, gid }`` (<linux/socket.h>, socket(7));
* ``SO_PEERGROUPS`` — the peer's supplementary groups, an array of ``gid_t`` (Linux 4.13);
* ``SO_PEERPIDFD`` — a pidfd for the peer process (Linux 6.5). A pid alone can be recycled
  between the moment it is read and the moment ``/proc/PID/exe`` is read; with the pidfd the
  executable is read and then the pidfd is checked to still name a live process, so the path
  belongs to the peer and not to a process that took its pid. Without it (older kernels) the
  pid from ``SO_PEERCRED`` is used as is.

IP sockets give the peer's address and port (``getpeername``) and the local address the
connection came in on (``getsockname``, for ``daemon@host`` rules).

By hand, and why: the pid a pidfd names is only published in ``/proc/self/fdinfo/<pidfd>``
(its ``Pid:`` line; ``-1`` once the process has exited), which psutil does not read; and
Python's ``getsockopt`` caps its buffer at 1024 bytes, too small for a full group list, so
``SO_PEERGROUPS`` goes through ``ctypes``. The executable path is read with psutil.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import select
import _socket
import socket
import struct
from typing import Iterator, Union

from sockgate.decide import Peer
from sockgate.errors import AdapterError, PeerError
from sockgate.linux._errors import translated

# <asm-generic/socket.h>
SO_PEERCRED = 17
SO_PEERGROUPS = 59
SO_PEERPIDFD = 77
UCRED = struct.Struct("=iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
GID_T = 4
NGROUPS_MAX = 65536  # <linux/limits.h>

Sockish = Union[_socket.socket, int]

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def borrowed_socket(s: Sockish) -> Iterator[_socket.socket]:
    """A socket object for ``s`` without taking ownership of a bare fd."""
    if isinstance(s, _socket.socket):  # socket.socket too
        yield s
        return
    with translated(f"fd {s}"):
        obj = socket.socket(fileno=s)
    try:
        yield obj
    finally:
        obj.detach()


def peer_of(conn: Sockish) -> Peer:
    """The peer of a connected socket: credentials for AF_UNIX, address/port for IP."""
    with borrowed_socket(conn) as s:
        if s.family == socket.AF_UNIX:
            return unix_peer(s)
        if s.family in (socket.AF_INET, socket.AF_INET6):
            return ip_peer(s)
        raise PeerError(f"fd {s.fileno()}: not a Unix or IP socket (family {s.family})")


def ip_peer(s: _socket.socket) -> Peer:
    try:
        remote = s.getpeername()
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise PeerError(f"fd {s.fileno()}: not connected, so it has no peer") from None
        raise AdapterError(f"getpeername fd {s.fileno()}: {e.strerror}", errno=e.errno) from e
    with translated(f"getsockname fd {s.fileno()}"):
        local = s.getsockname()
    return Peer(
        address=ipaddress.ip_address(remote[0].split("%", 1)[0]),
        port=int(remote[1]),
        server_address=ipaddress.ip_address(local[0].split("%", 1)[0]),
    )


def unix_peer(s: _socket.socket) -> Peer:
    fd = s.fileno()
    with translated(f"SO_PEERCRED fd {fd}"):
        pid, uid, gid = UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, UCRED.size))
    if pid == 0 and uid == 0xFFFFFFFF:
        raise PeerError(f"fd {fd}: no peer credentials (not connected)")
    groups = peer_groups(fd)
    exe: str | None = None
    pidfd = _peer_pidfd(s)
    if pidfd is None:
        exe = _exe(pid) if pid > 0 else None
    else:
        try:
            pid, exe = _pid_and_exe(pidfd, pid)
        finally:
            os.close(pidfd)
    return Peer(uid=uid, gid=gid, groups=frozenset(groups), pid=pid if pid > 0 else None, exe=exe)


def peer_groups(fd: int) -> tuple[int, ...]:
    """SO_PEERGROUPS; an empty tuple where the kernel does not have it."""
    size = 64 * GID_T
    while True:
        buf = ctypes.create_string_buffer(size)
        ln = ctypes.c_uint32(size)
        if _libc.getsockopt(fd, socket.SOL_SOCKET, SO_PEERGROUPS, buf, ctypes.byref(ln)) == 0:
            n = ln.value // GID_T
            return struct.unpack(f"={n}I", buf.raw[: n * GID_T])
        e = ctypes.get_errno()
        if e == errno.ERANGE and ln.value > size and ln.value <= NGROUPS_MAX * GID_T:
            size = ln.value  # the kernel says how much it needs
            continue
        if e in (errno.ENOPROTOOPT, errno.EINVAL, errno.ENODATA):
            return ()
        raise AdapterError(f"SO_PEERGROUPS fd {fd}: {os.strerror(e)}", errno=e)


def _peer_pidfd(s: _socket.socket) -> int | None:
    try:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
    except OSError as e:
        if e.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.ENODATA, errno.ESRCH):
            return None  # before Linux 6.5, or the peer has already gone
        raise AdapterError(f"SO_PEERPIDFD fd {s.fileno()}: {e.strerror}", errno=e.errno) from e
    fd = int.from_bytes(raw[:4], "little", signed=True)
    return fd if fd >= 0 else None


def _pid_and_exe(pidfd: int, fallback_pid: int) -> tuple[int, str | None]:
    pid = _pidfd_pid(pidfd)
    if pid is None:
        pid = fallback_pid
    if pid <= 0:
        return fallback_pid, None  # the peer has exited; its pid may be anyone's now
    exe = _exe(pid)
    if _pidfd_exited(pidfd):
        return pid, None
    return pid, exe


def _pidfd_pid(pidfd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _pidfd_exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited (pidfd_open(2))."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _exe(pid: int) -> str | None:
    # psutil is imported here, not at the top: servers call peer() after dropping privileges,
    # when modules they never imported may no longer be readable.
    import psutil

    try:
        return psutil.Process(pid).exe() or None
    except (psutil.Error, OSError):
        return None
