"""kernel.transaction: all-or-nothing over many sockets, with a failure injected at every
step; the previous programs come back newest first, and a failed restore is reported."""

from __future__ import annotations

import errno
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.bpf import BPF_K, BPF_RET, encode, stmt
from sockgate.errors import AdapterError, UsageError
from sockgate.kernel import Attached, BpfFilter, ChangeKind, ClassicFilter, NoFilter, Slot, Step
from sockgate.kernel.cbpf import ClassicLoaded
from sockgate.policy.parser import parse_policy
from sockgate.resolve import resolve
from support.fakekernel import FakeOps, fake_kernel

POLICY = parse_policy("service old {\n allow 10.0.0.0/8\n default deny\n}\nservice new {\n allow 10.1.0.0/16\n default deny\n}\n")
KERNEL = fake_kernel(FakeOps())
OLD = KERNEL.load(KERNEL.compile(resolve(POLICY, "old")))
NEW = KERNEL.load(KERNEL.compile(resolve(POLICY, "new")))
assert isinstance(OLD, ClassicLoaded)
FOREIGN = encode((stmt(BPF_RET | BPF_K, 0xFFFFFFFF),))

INITIAL = st.sampled_from(["none", "ours", "foreign", "ebpf", "locked"])


def attached(kind: str) -> Attached:
    return {"none": NoFilter(), "ours": ClassicFilter(OLD.raw), "foreign": ClassicFilter(FOREIGN),
            "ebpf": BpfFilter(), "locked": ClassicFilter(OLD.raw)}[kind]


def setup(kinds: list[str]) -> FakeOps:
    ops = FakeOps()
    for fd, kind in enumerate(kinds):
        ops.attached[fd] = attached(kind)
        if kind == "locked":
            ops.locked.add(fd)
    return ops


def refused(kinds: list[str], detach: list[bool]) -> bool:
    """What phase 1 refuses: a change on a locked socket; an eBPF program (no backend here
    claims it) changed on any socket but the last one changed."""
    changing = [kind for kind, d in zip(kinds, detach) if not (d and kind == "none")]
    return "locked" in changing or "ebpf" in changing[:-1]


@settings(max_examples=300, deadline=None)
@given(
    kinds=st.lists(INITIAL, min_size=1, max_size=6),
    detach_bits=st.integers(0, 63),
    fail=st.integers(0, 6),
    restore_fails=st.booleans(),
)
def test_a_failure_at_any_step_leaves_every_socket_as_it_was(kinds: list[str], detach_bits: int, fail: int, restore_fails: bool) -> None:
    detach = [bool(detach_bits >> i & 1) for i in range(len(kinds))]
    ops = setup(kinds)
    before = dict(ops.attached)
    steps = [Step(Slot(fd, f"fd {fd}"), None if detach[fd] else NEW) for fd in range(len(kinds))]
    changing = [fd for fd, kind in enumerate(kinds) if not (detach[fd] and kind == "none")]
    ops.fail_at = {fail}
    if restore_fails and fail >= 1:
        ops.fail_at.add(fail + 1)  # the first restore, of the newest change, fails too
    kernel = fake_kernel(ops)

    if refused(kinds, detach):
        with pytest.raises(AdapterError):
            kernel.apply(steps)
        assert ops.log == [] and ops.attached == before  # nothing touched
        return
    if fail >= len(changing):  # no failure: every socket changed as asked
        applied = kernel.apply(steps)
        assert [a.slot for a in applied] == [s.slot for s in steps]
        for a, fd in zip(applied, range(len(kinds))):
            want = NoFilter() if detach[fd] else ClassicFilter(NEW.raw)
            assert ops.attached[fd] == want
            assert a.change == (ChangeKind.UNCHANGED if fd not in changing else _kind(kinds[fd], detach[fd]))
        return

    with pytest.raises(AdapterError, match="injected failure") as raised:
        kernel.apply(steps)
    changes = ops.log[: fail + 1]
    restores = ops.log[fail + 1 :]
    assert [fd for _, fd, _ in changes] == changing[: fail + 1]
    # newest first, every socket changed before the failing one
    assert [fd for _, fd, _ in restores] == list(reversed(changing[:fail]))
    assert all(label.startswith("restore the previous filter on") for _, _, label in restores)
    if restore_fails and fail >= 1:
        newest = changing[fail - 1]
        assert f"rolling back failed too, so these sockets may keep the new filter: fd {newest}" in str(raised.value)
        assert {fd: a for fd, a in ops.attached.items() if fd != newest} == {fd: a for fd, a in before.items() if fd != newest}
    else:
        assert "rolling back" not in str(raised.value)
        assert ops.attached == before


def _kind(kind: str, detach: bool) -> ChangeKind:
    if detach:
        return ChangeKind.DETACHED
    return {"none": ChangeKind.ATTACHED, "ours": ChangeKind.RELOADED}.get(kind, ChangeKind.REPLACED)


def test_before_is_what_each_socket_had() -> None:
    ops = setup(["none", "ours", "foreign"])
    applied = fake_kernel(ops).apply([Step(Slot(fd, f"fd {fd}"), NEW) for fd in range(3)])
    assert [(a.before.state, a.before.service, a.change.value) for a in applied] == [
        ("none", None, "attached"), ("sockgate", "old", "reloaded"), ("foreign", None, "replaced"),
    ]
    assert applied[1].before.backend == "cbpf" and applied[2].before.instructions == 1


def test_a_locked_filter_is_refused_by_name() -> None:
    ops = setup(["none", "locked"])
    with pytest.raises(AdapterError, match=r"^fd 1: the socket's filter is locked \(SO_LOCK_FILTER\); it cannot be changed"):
        fake_kernel(ops).apply([Step(Slot(fd, f"fd {fd}"), NEW) for fd in range(2)])
    assert ops.log == []


def test_a_locked_socket_without_filter_is_left_alone_by_detach() -> None:
    ops = setup(["none"])
    ops.locked.add(0)
    (a,) = fake_kernel(ops).apply([Step(Slot(0, "fd 0"), None)])
    assert a.change is ChangeKind.UNCHANGED and a.before.locked and ops.log == []


def test_an_ebpf_program_that_could_not_be_put_back_is_refused_unless_last() -> None:
    ops = setup(["ebpf", "none"])
    with pytest.raises(AdapterError, match=r"fd 0 has a foreign filter \(eBPF program\), which could not be put back"):
        fake_kernel(ops).apply([Step(Slot(fd, f"fd {fd}"), NEW) for fd in range(2)])
    ops = setup(["none", "ebpf"])
    applied = fake_kernel(ops).apply([Step(Slot(fd, f"fd {fd}"), NEW) for fd in range(2)])
    assert [a.change.value for a in applied] == ["attached", "replaced"]
    ops = setup(["ebpf", "none"])  # the last change: nothing after it can fail
    applied = fake_kernel(ops).apply([Step(Slot(0, "fd 0"), NEW), Step(Slot(1, "fd 1"), None)])
    assert [a.change.value for a in applied] == ["replaced", "unchanged"]


def test_a_unix_socket_is_refused_before_anything_changes() -> None:
    ops = setup(["none", "none"])
    ops.families[1] = socket.AF_UNIX
    with pytest.raises(UsageError, match=r"^fd 1 is a Unix socket: a kernel address filter guards IPv4/IPv6 sockets only"):
        fake_kernel(ops).apply([Step(Slot(fd, f"fd {fd}"), NEW) for fd in range(2)])
    assert ops.log == []


def test_a_tcp_refusal_says_what_to_do() -> None:
    ops = setup(["none"])
    ops.tcp.add(0)
    ops.fail_at, ops.errno = {0}, errno.EPERM
    with pytest.raises(AdapterError) as raised:
        fake_kernel(ops).apply([Step(Slot(0, "tcp://0.0.0.0:22", advice="run it as root"), NEW)])
    assert str(raised.value) == (
        "attach filter for new to tcp://0.0.0.0:22: injected failure: this kernel lets only CAP_NET_ADMIN"
        " attach a filter to a TCP socket (UDP needs no privilege): run it as root"
    )
    assert raised.value.errno == errno.EPERM


def test_an_interrupt_is_rolled_back_too() -> None:
    ops = setup(["ours", "none"])

    real = ops.attach_classic

    def interrupted(fd: int, raw: bytes, label: str) -> None:
        if fd == 1:
            raise KeyboardInterrupt
        real(fd, raw, label)

    ops.attach_classic = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        fake_kernel(ops).apply([Step(Slot(fd, f"fd {fd}"), NEW) for fd in range(2)])
    assert ops.attached[0] == ClassicFilter(OLD.raw)
