"""The library entry points over a kernel of fake sockets: compile first, then one step of
the seam's transaction with the library's advice; refusals before anything is touched."""

from __future__ import annotations

import errno

import pytest

from sockgate import guard as guard_mod
from sockgate.errors import AdapterError, UnsupportedInKernel, UnsupportedPlatform, UsageError
from sockgate.kernel import ClassicFilter, NoFilter
from sockgate.policy.parser import parse_policy
from support.fakekernel import FakeOps, fake_kernel

POLICY = parse_policy("service web {\n allow 10.0.0.0/8\n default deny\n}\nservice named {\n allow host .example.com\n default deny\n}\n")


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> FakeOps:
    ops = FakeOps()
    monkeypatch.setattr(guard_mod, "default_kernel", lambda: fake_kernel(ops))
    return ops


def test_guard_attaches_one_program_and_reads_it_back(ops: FakeOps) -> None:
    g = guard_mod.guard(POLICY, 7, "web")
    assert (g.service, g.digest) == ("web", guard_mod.compile_guard(POLICY, "web").digest)
    assert ops.log == [("attach", 7, "attach filter for web to fd 7")]
    info = guard_mod.guard_of(7)
    assert (info.state, info.service, info.digest, info.instructions) == ("sockgate", "web", g.digest, g.instructions)
    assert guard_mod.unguard(7) is True and guard_mod.unguard(7) is False
    assert ops.attached[7] == NoFilter()


def test_a_tcp_refusal_carries_the_library_advice(ops: FakeOps) -> None:
    ops.tcp.add(3)
    ops.fail_at, ops.errno = {0}, errno.EPERM
    with pytest.raises(AdapterError, match="CAP_NET_ADMIN.*: guard it as root or with that capability"):
        guard_mod.guard(POLICY, 3, "web")


def test_refusals_touch_nothing(ops: FakeOps) -> None:
    ops.attached[5] = ClassicFilter(b"\x06\0\0\0\xff\xff\xff\xff")
    with pytest.raises(UsageError, match=r"no service 'nope'.*web, named"):
        guard_mod.guard(POLICY, 5, "nope")
    with pytest.raises(UnsupportedInKernel, match="a kernel filter sees only the source address"):
        guard_mod.guard(POLICY, 5, "named")
    ops.locked.add(5)
    with pytest.raises(AdapterError, match="^fd 5: the socket's filter is locked"):
        guard_mod.guard(POLICY, 5, "web")
    assert ops.log == []


def test_what_is_not_a_socket_is_refused(ops: FakeOps) -> None:
    with pytest.raises(UsageError, match="not a socket or file descriptor"):
        guard_mod.guard(POLICY, "fd 3", "web")  # type: ignore[arg-type]


def test_unsupported_platform(ops: FakeOps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_mod, "_UNSUPPORTED", "kernel enforcement needs Linux")
    with pytest.raises(UnsupportedPlatform, match="needs Linux"):
        guard_mod.guard(POLICY, 3, "web")
    with pytest.raises(UnsupportedPlatform):
        guard_mod.guard_of(3)
    assert ops.log == []
