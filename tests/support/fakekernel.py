"""A ``FilterOps`` without sockets: fd -> (what is attached, locked), a log of every change,
and failures injected at chosen changes (tests/core/test_kernel_*.py, test_guard.py); and a
real backend's attach made to fail once (``failing_attach``, for the kernel tests' rollbacks)."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from typing import Any, Iterator

from sockgate.errors import AdapterError
from sockgate.kernel import Attached, ClassicFilter, Kernel, NoFilter
from sockgate.kernel.cbpf import ClassicBackend


@dataclass
class FakeOps:
    attached: dict[int, Attached] = field(default_factory=dict)
    locked: set[int] = field(default_factory=set)
    families: dict[int, int] = field(default_factory=dict)  # default AF_INET
    tcp: set[int] = field(default_factory=set)
    fail_at: set[int] = field(default_factory=set)  # indexes into log (0-based) that raise
    errno: int | None = None  # of the injected failures
    log: list[tuple[str, int, str]] = field(default_factory=list)  # (op, fd, label) of each change tried

    def read(self, fd: int) -> Attached:
        return self.attached.get(fd, NoFilter())

    def is_locked(self, fd: int) -> bool:
        return fd in self.locked

    def lock(self, fd: int, label: str) -> None:
        self._tried("lock", fd, label)
        self.locked.add(fd)

    def family(self, fd: int, label: str) -> int:
        return self.families.get(fd, socket.AF_INET)

    def is_tcp(self, fd: int) -> bool:
        return fd in self.tcp

    def _tried(self, op: str, fd: int, label: str) -> None:
        self.log.append((op, fd, label))
        if len(self.log) - 1 in self.fail_at:
            raise AdapterError(f"{label}: injected failure", errno=self.errno, target=label)

    def attach_classic(self, fd: int, raw: bytes, label: str) -> None:
        self._tried("attach", fd, label)
        self.attached[fd] = ClassicFilter(raw)

    def detach(self, fd: int, label: str) -> bool:
        self._tried("detach", fd, label)
        had = not isinstance(self.attached.get(fd, NoFilter()), NoFilter)
        self.attached[fd] = NoFilter()
        return had


@contextlib.contextmanager
def failing_attach(backend: type[Any], nth: int) -> Iterator[list[str]]:
    """``backend.attach`` (a class's: every instance) raising ``AdapterError("LABEL: injected
    failure")`` on its ``nth`` call from now, the others attaching for real; yields the labels
    of the calls, and puts the real ``attach`` back on exit."""
    real = backend.attach
    calls: list[str] = []

    def flaky(self: Any, fd: int, program: Any, label: str) -> None:
        calls.append(label)
        if len(calls) == nth:
            raise AdapterError(f"{label}: injected failure")
        real(self, fd, program, label)

    backend.attach = flaky
    try:
        yield calls
    finally:
        backend.attach = real


def fake_kernel(ops: FakeOps) -> Kernel:
    return Kernel([ClassicBackend(ops)], ops)
