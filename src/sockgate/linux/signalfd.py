"""Signals as a readable descriptor: ``signalfd(2)``.

A long-running command waits in one of three loops (a plain ``select``, a ``selectors`` loop
next to its listeners, asyncio); a descriptor is the one wake-up source all three can watch.
Unlike ``signal.set_wakeup_fd``'s self-pipe, which carries only the signal number, each
record keeps the sender's ``si_code`` and ``si_pid``: ``sockgate run`` must tell a signal a
terminal sent to the whole foreground group (``SI_KERNEL``, the command got its own copy) from
one sent to it alone. Python 3.11 has no ``signal.signalfd``, so it goes through libc.

The caller blocks the signals first (``pthread_sigmask``, in every thread): an unblocked
signal is delivered the ordinary way and never reaches the descriptor.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from typing import Iterable

from sockgate.linux._errors import translated
from sockgate.linux.fd import drain

# <linux/signalfd.h>: the flags are O_CLOEXEC and O_NONBLOCK
SFD_CLOEXEC = os.O_CLOEXEC
SFD_NONBLOCK = os.O_NONBLOCK
# struct signalfd_siginfo, 128 bytes: ssi_signo, errno, code, pid, uid, fd, tid, band,
# overrun, trapno, status, int, ptr, utime, stime, addr, addr_lsb, then padding
SIGNALFD_SIGINFO = struct.Struct("=IiiIIiIIIIiiQQQQH46x")
_SIGSET_BYTES = 128  # glibc's sigset_t; signalfd passes the kernel its first 8

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class SigInfo:
    """One delivered signal: its number, how it was sent (``si_code``), by whom, and for
    SIGCHLD the child's status."""

    signo: int
    code: int = 0
    pid: int = 0
    uid: int = 0
    status: int = 0


def _sigset(signals: Iterable[int]) -> ctypes.Array[ctypes.c_char]:
    mask = ctypes.create_string_buffer(_SIGSET_BYTES)
    _libc.sigemptyset(mask)
    for sig in signals:
        _libc.sigaddset(mask, int(sig))
    return mask


def open_signalfd(signals: Iterable[int]) -> int:
    """A non-blocking, close-on-exec descriptor that reads ``signals`` (already blocked)."""
    fd = _libc.signalfd(-1, _sigset(signals), SFD_CLOEXEC | SFD_NONBLOCK)
    if fd < 0:
        e = ctypes.get_errno()
        with translated("signalfd"):
            raise OSError(e, os.strerror(e))
    return int(fd)


def read_pending(fd: int) -> list[SigInfo]:
    """Every signal queued on ``fd`` now (empty when none is)."""
    out: list[SigInfo] = []
    for data in drain(fd, SIGNALFD_SIGINFO.size * 16, "read signalfd"):
        for off in range(0, len(data) - SIGNALFD_SIGINFO.size + 1, SIGNALFD_SIGINFO.size):
            f = SIGNALFD_SIGINFO.unpack_from(data, off)
            out.append(SigInfo(signo=f[0], code=f[2], pid=f[3], uid=f[4], status=f[10]))
    return out
