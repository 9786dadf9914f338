"""Another process's file descriptors: ``pidfd_open(2)`` + ``pidfd_getfd(2)``.

``getfd(pid, fd)`` returns our own duplicate of the target's descriptor (same open file, so
a filter attached to it is attached to the target's socket). Needs ptrace access to the target
(root, or the same user where Yama's ptrace_scope allows it). Python 3.11 has
``os.pidfd_open`` but no ``pidfd_getfd``, so that one goes through ``syscall(2)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import select
from typing import Iterator

from sockgate.errors import AdapterError
from sockgate.linux._errors import translated

# syscall numbers, <asm/unistd.h> (pidfd_getfd is 438 on every architecture since 5.6)
SYS_PIDFD_GETFD = 438
SYS_PIDFD_OPEN = 434

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@contextlib.contextmanager
def pidfd(pid: int) -> Iterator[int]:
    with translated(f"pidfd_open pid {pid}"):
        fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        os.close(fd)


def getfd(pid: int, target_fd: int) -> int:
    """A duplicate (close-on-exec) of ``target_fd`` of process ``pid``. Caller closes it."""
    if pid == os.getpid():
        with translated(f"dup fd {target_fd}"):
            return os.dup(target_fd)
    with pidfd(pid) as pfd:
        return getfd_from(pfd, pid, target_fd)


def getfd_from(pfd: int, pid: int, target_fd: int) -> int:
    """Like ``getfd`` through an already open pidfd ``pfd`` of ``pid`` (one pidfd, many fds)."""
    res = _libc.syscall(SYS_PIDFD_GETFD, pfd, target_fd, 0)
    if res < 0:
        e = ctypes.get_errno()
        what = f"pidfd_getfd pid {pid} fd {target_fd}"
        if e in (errno.EPERM, errno.EACCES):
            raise AdapterError(
                f"{what}: permission denied (needs ptrace rights over the process: root, or the same"
                f" user with kernel.yama.ptrace_scope allowing it)",
                errno=e,
                target=what,
            )
        if e == errno.EBADF:
            raise AdapterError(f"{what}: process {pid} has no fd {target_fd}", errno=e, target=what)
        if e == errno.ENOSYS:
            raise AdapterError(f"{what}: pidfd_getfd needs Linux 5.6 or newer ({platform.release()})", errno=e)
        raise AdapterError(f"{what}: {os.strerror(e)}", errno=e, target=what)
    return int(res)


def exited(pfd: int) -> bool:
    """Whether the process of pidfd ``pfd`` has exited (its pid may then be another's)."""
    poller = select.poll()
    poller.register(pfd, select.POLLIN)
    return bool(poller.poll(0))


@contextlib.contextmanager
def borrowed(pid: int, target_fd: int) -> Iterator[int]:
    """``with borrowed(pid, fd) as ours:`` — the duplicate is closed on exit."""
    fd = getfd(pid, target_fd)
    try:
        yield fd
    finally:
        os.close(fd)


class PidfdCache:
    """Many descriptors of many processes through one pidfd per process.

    ``dup(pid, fd)`` returns our duplicate (caller closes it); a process whose pidfd could not
    be opened raises the same ``AdapterError`` for every later fd without asking again.
    ``close()`` (or leaving the ``with`` block) closes the pidfds."""

    def __init__(self) -> None:
        self._pidfds: dict[int, int | AdapterError] = {}

    def __enter__(self) -> "PidfdCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dup(self, pid: int, target_fd: int) -> int:
        if pid == os.getpid():
            with translated(f"dup fd {target_fd}"):
                return os.dup(target_fd)
        return getfd_from(self.pidfd(pid), pid, target_fd)

    def pidfd(self, pid: int) -> int:
        """The pidfd of ``pid``, opened on first use (it names that process for its life)."""
        got = self._pidfds.get(pid)
        if got is None:
            try:
                with translated(f"pidfd_open pid {pid}"):
                    got = os.pidfd_open(pid)
            except AdapterError as e:
                got = e
            self._pidfds[pid] = got
        if isinstance(got, AdapterError):
            raise got
        return got

    def close(self) -> None:
        for v in self._pidfds.values():
            if isinstance(v, int):
                os.close(v)
        self._pidfds.clear()
