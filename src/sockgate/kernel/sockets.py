"""``FilterOps`` on real sockets: the ``linux.filter`` adapter, with what a read-back means
(``SO_GET_FILTER`` answers EACCES for an eBPF program, which is then known to be there but
not what it is)."""

from __future__ import annotations

import errno
import socket

from sockgate.errors import AdapterError
from sockgate.kernel.reading import Attached, BpfFilter, ClassicFilter, NoFilter
from sockgate.linux import bpfsys
from sockgate.linux import filter as kfilter


class LinuxFilterOps:
    def read(self, fd: int) -> Attached:
        try:
            raw = kfilter.get(fd)
        except AdapterError as e:
            if e.errno == errno.EACCES:  # an eBPF program: its cookie lets the backend recognise it
                return BpfFilter(cookie=bpfsys.socket_cookie(fd))
            raise
        return NoFilter() if raw is None else ClassicFilter(raw)

    def is_locked(self, fd: int) -> bool:
        return kfilter.is_locked(fd)

    def family(self, fd: int, label: str) -> int:
        try:
            s = socket.socket(fileno=fd)
        except OSError as e:
            why = "not an open file descriptor" if e.errno == errno.EBADF else "not a socket"
            raise AdapterError(f"{label}: {why}", errno=e.errno, target=label) from None
        try:
            return int(s.family)
        finally:
            s.detach()  # the fd stays the caller's

    def is_tcp(self, fd: int) -> bool:
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            return False
        try:
            return s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET, socket.AF_INET6)
        finally:
            s.detach()

    def attach_classic(self, fd: int, raw: bytes, label: str) -> None:
        kfilter.attach(fd, raw, label)

    def detach(self, fd: int, label: str) -> bool:
        return kfilter.detach(fd, label)

    def lock(self, fd: int, label: str) -> None:
        try:
            kfilter.lock(fd)
        except AdapterError as e:
            raise AdapterError(f"{label}: {str(e).split(': ', 1)[-1]}", errno=e.errno, target=label) from e


LINUX_OPS = LinuxFilterOps()
