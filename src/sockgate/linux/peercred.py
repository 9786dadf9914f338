"""Who is on the other end of a connected socket, as a ``peers.Peer``.

Unix domain sockets carry the peer's credentials as the kernel recorded them at ``connect``
time (or ``socketpair``):

* ``SO_PEERCRED``  — ``struct ucred { pid, uid, gid }`` (<linux/socket.h>, socket(7));
* ``SO_PEERGROUPS`` — the peer's supplementary groups, an array of ``gid_t`` (Linux 4.13);
* ``SO_PEERPIDFD`` — a pidfd for the peer process (Linux 6.5). A pid alone can be recycled
  between the moment it is read and the moment ``/proc/PID/exe`` is read; with the pidfd the
  executable is read and then the pidfd is checked to still name a live process, so the path
  belongs to the peer and not to a process that took its pid. Without it (older kernels) the
  pid from ``SO_PEERCRED`` is used as is.

The executable is the one thing here the kernel did *not* record at ``connect``: it is read
from the process as it is now, and the process may have called ``execve`` since. Nothing the
kernel exposes says whether it has (``/proc/PID/stat`` start time survives an exec, and so do
the pid and the pidfd). What can be seen is an exec that *gained privilege*: ``SO_PEERCRED``
holds the effective uid and gid of ``connect`` time, and a set-user-ID or set-group-ID exec
changes the process's effective ids. So ``exe`` is reported only when

1. ``/proc/PID/exe`` is the very file found at its path from here (same device and inode): a
   replaced or deleted program, or one in another mount namespace that only *looks* like the
   path (a private mount over ``/usr/bin``), has no known executable;
2. the process's effective uid and gid (``/proc/PID/status``) are still those of ``connect``;
3. the executable read after that is the one read before it.

Between 1 and 2 the reader opens ``/proc/PID/auxv``, which takes the process's
``exec_update_lock`` (``mm_access``, kernel/fork.c) even when the open is refused. ``execve``
holds that lock for writing from the moment the new program becomes visible (``exec_mmap``)
until its credentials are committed (``setup_new_exec``; fs/exec.c, Linux 5.11, and
``cred_guard_mutex`` before): so an exec that was half done when the executable was read has
its new credentials in place when they are read, and is caught by 2. Otherwise ``exe`` is
None — unknown — and no ``exe`` rule matches. What remains (an exec of a program with no
privilege over the caller's own) is stated in docs/proxy.md.

IP sockets give the peer's address and port (``getpeername``) and the local address the
connection came in on (``getsockname``, for ``daemon@host`` rules).

By hand, and why: the pid a pidfd names is only published in ``/proc/self/fdinfo/<pidfd>``
(its ``Pid:`` line; ``-1`` once the process has exited), which psutil does not read; and
Python's ``getsockopt`` caps its buffer at 1024 bytes, too small for a full group list, so
``SO_PEERGROUPS`` goes through ``ctypes``.
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
from typing import Iterator

from sockgate.errors import AdapterError, PeerError
from sockgate.linux._errors import translated
from sockgate.linux.fd import Sockish
from sockgate.peers import Peer

# <asm-generic/socket.h>
SO_PEERCRED = 17
SO_PEERGROUPS = 59
SO_PEERPIDFD = 77
UCRED = struct.Struct("=iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
GID_T = 4
NGROUPS_MAX = 65536  # <linux/limits.h>

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


def credentials(s: _socket.socket) -> tuple[int, int, int, tuple[int, ...]]:
    """pid, uid, gid and supplementary groups the kernel recorded at ``connect`` (no ``/proc``
    read: nothing about the process as it is now)."""
    fd = s.fileno()
    with translated(f"SO_PEERCRED fd {fd}"):
        pid, uid, gid = UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, UCRED.size))
    if pid == 0 and uid == 0xFFFFFFFF:
        raise PeerError(f"fd {fd}: no peer credentials (not connected)")
    return pid, uid, gid, peer_groups(fd)


def unix_peer(s: _socket.socket) -> Peer:
    pid, uid, gid, groups = credentials(s)
    exe: str | None = None
    pidfd = _peer_pidfd(s)
    if pidfd is None:
        exe = _program(pid, uid, gid) if pid > 0 else None
    else:
        try:
            pid, exe = _pid_and_exe(pidfd, pid, uid, gid)
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


def _pid_and_exe(pidfd: int, fallback_pid: int, uid: int, gid: int) -> tuple[int, str | None]:
    pid = _pidfd_pid(pidfd)
    if pid is None:
        pid = fallback_pid
    if pid <= 0:
        return fallback_pid, None  # the peer has exited; its pid may be anyone's now
    exe = _program(pid, uid, gid)
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


def _program(pid: int, uid: int, gid: int) -> str | None:
    """The executable of ``pid`` if it can stand for the process that connected with effective
    ``uid`` and ``gid`` (see the module docstring); None otherwise."""
    first = _image(pid)
    if first is None:
        return None
    _exec_barrier(pid)
    if _effective_ids(pid) != (uid, gid):
        return None  # a set-user-ID/set-group-ID exec (or setuid()) since connect
    if _image(pid) != first:
        return None  # it exec'd while being read
    return first[0]


def _image(pid: int) -> tuple[str, int, int] | None:
    """``/proc/PID/exe`` as (path, st_dev, st_ino), when that path names that very file here."""
    link = f"/proc/{pid}/exe"
    try:
        path = os.readlink(link)
        running = os.stat(link)
        there = os.stat(path)
    except (OSError, ValueError):
        return None  # gone, a kernel thread, no permission, or the path leads nowhere
    if (running.st_dev, running.st_ino) != (there.st_dev, there.st_ino):
        return None  # replaced, deleted (" (deleted)"), or another mount namespace's file
    return path, running.st_dev, running.st_ino


def _exec_barrier(pid: int) -> None:
    """Wait for an ``execve`` of ``pid`` that is under way to commit its credentials: opening
    ``auxv`` takes its ``exec_update_lock`` (``mm_access``), refused or not."""
    try:
        os.close(os.open(f"/proc/{pid}/auxv", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        pass


def _effective_ids(pid: int) -> tuple[int, int] | None:
    """The effective uid and gid in ``/proc/PID/status`` (``Uid:``/``Gid:`` real, effective,
    saved, filesystem; proc(5)), as this process's user namespace sees them."""
    ids: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("Uid:", "Gid:")):
                    ids[line[:3]] = int(line.split()[2])
    except (OSError, ValueError, IndexError):
        return None
    if len(ids) != 2:
        return None
    return ids["Uid"], ids["Gid"]
