"""Classic BPF socket filters: attach, detach, lock, and read back (``SO_GET_FILTER``).

Thin adapter over setsockopt/getsockopt; takes fds (or socket objects) and encoded programs
(``struct sock_filter`` arrays, as ``sockgate.bpf`` encodes them). ``attach`` replaces any
filter already on the socket in one ``setsockopt``: the kernel swaps the pointer under RCU,
so there is no instant without a filter.

``ctypes`` builds ``struct sock_fprog`` because the socket module has no way to pass a pointer
inside a struct to ``setsockopt``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

from sockgate.errors import AdapterError
from sockgate.linux._errors import translated
from sockgate.linux.fd import Sockish, fileno

# <asm-generic/socket.h>
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_GET_FILTER = SO_ATTACH_FILTER
SO_LOCK_FILTER = 44
SOL_SOCKET = socket.SOL_SOCKET

SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter { __u16 code; __u8 jt, jf; __u32 k; }
BPF_MAXINSNS = 4096  # <linux/bpf_common.h>

_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }  <linux/filter.h>
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach(s: Sockish, program: bytes, what: str = "") -> None:
    """Attach (or atomically replace) the classic BPF ``program`` on socket ``s``."""
    if len(program) % SOCK_FILTER.size or not program:
        raise AdapterError("a BPF program is a non-empty array of 8-byte instructions")
    n = len(program) // SOCK_FILTER.size
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(n, ctypes.cast(buf, ctypes.c_void_p))
    fd = fileno(s)
    with translated(what or f"attach filter ({n} instructions) to fd {fd}"):
        _setsockopt(fd, SO_ATTACH_FILTER, ctypes.byref(prog), ctypes.sizeof(prog))


def detach(s: Sockish, what: str = "") -> bool:
    """Remove the filter; False when there was none."""
    fd = fileno(s)
    try:
        with translated(what or f"detach filter from fd {fd}"):
            _setsockopt(fd, SO_DETACH_FILTER, ctypes.byref(ctypes.c_int(0)), ctypes.sizeof(ctypes.c_int))
    except AdapterError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def lock(s: Sockish) -> None:
    """Lock the filter (SO_LOCK_FILTER): nobody can change or remove it for the socket's life."""
    fd = fileno(s)
    with translated(f"lock filter on fd {fd}"):
        _setsockopt(fd, SO_LOCK_FILTER, ctypes.byref(ctypes.c_int(1)), ctypes.sizeof(ctypes.c_int))


def is_locked(s: Sockish) -> bool:
    fd = fileno(s)
    with translated(f"read SO_LOCK_FILTER of fd {fd}"):
        val = ctypes.c_int(0)
        ln = ctypes.c_uint32(ctypes.sizeof(val))
        if _libc.getsockopt(fd, SOL_SOCKET, SO_LOCK_FILTER, ctypes.byref(val), ctypes.byref(ln)) != 0:
            _raise_errno()
        return bool(val.value)


def get(s: Sockish) -> bytes | None:
    """The attached program as encoded bytes, or None when the socket has no filter.

    SO_GET_FILTER with a zero length returns the instruction count; a second call with room
    for them copies the program (``sk_get_filter``, net/core/filter.c). The count is in
    instructions, not bytes."""
    fd = fileno(s)
    with translated(f"read filter of fd {fd}"):
        ln = ctypes.c_uint32(0)
        if _libc.getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, None, ctypes.byref(ln)) != 0:
            _raise_errno()
        count = ln.value
        if count == 0:
            return None
        buf = ctypes.create_string_buffer(count * SOCK_FILTER.size)
        ln = ctypes.c_uint32(count)
        if _libc.getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, buf, ctypes.byref(ln)) != 0:
            _raise_errno()
        return buf.raw[: ln.value * SOCK_FILTER.size]


def _setsockopt(fd: int, opt: int, ptr: object, size: int) -> None:
    if _libc.setsockopt(fd, SOL_SOCKET, opt, ptr, size) != 0:
        _raise_errno()


def _raise_errno() -> None:
    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))
