"""The proxy's reload is one transaction on real sockets: a failure at the second listener's
attach, or a locked filter found before any change, leaves every listener with its old program
and every service as it was; a reload without the fault then puts the new programs on all.

In process: a ``Proxy`` over a kernel whose classic backend fails its Nth attach once armed,
its runners started on a fresh loop (not run: the kernel completes a handshake that its filter
lets through whether or not the proxy accepts), then ``proxy.reload()`` called directly."""

from __future__ import annotations

import errno
import io
import socket
from typing import Iterator

import pytest

from sockgate.errors import AdapterError
from sockgate.kernel import Kernel, Loaded, default_kernel
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.sockets import LINUX_OPS
from sockgate.linux import filter as kfilter
from sockgate.log import Log
from sockgate.policy.parser import parse_policy
from sockgate.proxy.server import Proxy, new_loop
from sockgate.proxy.spec import ProxySpec
from sockgate.resolve import resolve_service
from sockgate.urls import parse_url

NAMES = ("a", "b", "c")


class FaultyClassic(ClassicBackend):
    """Classic BPF whose ``fail_on``-th attach (counted once armed) fails with EIO."""

    def __init__(self) -> None:
        super().__init__(LINUX_OPS)
        self.fail_on: int | None = None
        self.attaches = 0

    def attach(self, fd: int, program: Loaded, label: str) -> None:
        if self.fail_on is not None:
            self.attaches += 1
            if self.attaches == self.fail_on:
                raise AdapterError(f"{label}: injected failure", errno=errno.EIO, target=label)
        super().attach(fd, program, label)


def specs(source: str) -> list[ProxySpec]:
    text = "".join(f"service {n} {{\n allow {source}\n}}\n" for n in NAMES)
    return [
        ProxySpec(s, (parse_url("tcp://127.0.0.1:0"),), parse_url("tcp://127.0.0.1:9"))
        for s in parse_policy(text, "p.conf").services
    ]


OLD, NEW = specs("127.0.0.1"), specs("127.0.0.2")


class Running:
    def __init__(self) -> None:
        self.backend = FaultyClassic()
        self.out = io.StringIO()
        self.wanted = OLD
        self.proxy = Proxy(OLD, log=Log("json", self.out), loader=lambda: self.wanted, inherit=False,
                           use_uvloop=False, kernel=Kernel([self.backend], LINUX_OPS))
        self.proxy.open()
        self.loop = self.proxy.loop = new_loop(False)
        for r in self.proxy.runners.values():
            r.start(self.loop, r.listeners)

    def listeners(self) -> list[socket.socket]:
        return [lst.sock for r in self.proxy.runners.values() for lst in r.listeners]

    def digests(self) -> list[str | None]:
        return [default_kernel().read(s.fileno()).digest for s in self.listeners()]

    def ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for s in self.listeners()]

    def close(self) -> None:
        for r in self.proxy._all():
            r.stop_accepting()
        self.proxy.pipes.close()
        self.loop.close()


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running()
    yield r
    r.close()


def connects(port: int, source: str) -> bool:
    """Whether the listener's filter lets a SYN from ``source`` through (the handshake ends
    in the kernel); a dropped SYN is retried, so a short timeout means refused."""
    with socket.socket() as c:
        c.bind((source, 0))
        c.settimeout(0.5)
        try:
            c.connect(("127.0.0.1", port))
        except (socket.timeout, ConnectionRefusedError):
            return False
        return True


def digest_of(spec: ProxySpec) -> str:
    return default_kernel().compile(resolve_service(spec.service).kernel_part, backend="cbpf").digest  # FaultyClassic's


def errors(r: Running) -> list[str]:
    r.proxy.log.flush()
    return [line for line in r.out.getvalue().splitlines() if '"error"' in line]


def test_a_failure_at_the_second_attach_leaves_the_old_programs_on_every_listener(running: Running) -> None:
    old = running.digests()
    assert old == [digest_of(s) for s in OLD]
    services = [r.service for r in running.proxy.runners.values()]
    running.backend.fail_on = 2
    running.wanted = NEW
    running.proxy.reload()
    assert running.backend.attaches == 2  # the first changed, the second failed (and the first was put back)
    assert running.digests() == old
    assert [r.service for r in running.proxy.runners.values()] == services
    assert all(connects(p, "127.0.0.1") for p in running.ports())  # allowed by the old policy, still
    [line] = errors(running)
    assert "reload failed, the running policy stays" in line and "injected failure" in line

    running.backend.fail_on = None
    running.proxy.reload()
    assert running.digests() == [digest_of(s) for s in NEW] != old
    assert [r.service for r in running.proxy.runners.values()] == [s.service for s in NEW]
    assert all(connects(p, "127.0.0.2") for p in running.ports())
    assert not connects(running.ports()[0], "127.0.0.1")
    assert len(errors(running)) == 1


def test_a_locked_listener_refuses_the_reload_before_any_change(running: Running) -> None:
    old = running.digests()
    kfilter.lock(running.listeners()[1])
    running.backend.fail_on = 99  # counts, never fails
    running.wanted = NEW
    running.proxy.reload()
    assert running.backend.attaches == 0  # refused while reading, before the first attach
    assert running.digests() == old
    [line] = errors(running)
    assert "locked (SO_LOCK_FILTER)" in line and "reload failed, the running policy stays" in line
