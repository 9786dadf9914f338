"""Change the filters of many sockets all-or-nothing: written once, for every caller.

``apply`` works in three phases:

1. read every socket, change none: refuse a non-IP socket (a filter reads the IP header and
   would drop every message of a Unix peer), a locked filter, and — on every socket changed
   but the last — a previous program no backend can put back. If anything is refused, no socket has
   been touched.
2. change them in order. One change is one ``setsockopt``, which the kernel applies
   atomically, so a failed change leaves that socket as it was.
3. if a change fails, put back what each changed socket had, newest first, and raise the
   error. A restore that fails too is not swallowed: it is appended to the error, naming
   the sockets that may keep the new program.

The transaction knows sockets only through ``FilterOps`` and programs only through the
backends, so its rollback is tested by injecting a failure at every step
(tests/core/test_kernel_transaction.py).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, replace
from enum import Enum
from typing import Sequence

from sockgate.errors import AdapterError, SockgateError, UsageError
from sockgate.kernel.backend import Backend, FilterOps, Loaded
from sockgate.kernel.reading import Attached, GuardInfo, NoFilter, unclaimed

# Linux commit 5d39580f68e6 (in 6.18 here) made SO_ATTACH_FILTER on TCP sockets require
# CAP_NET_ADMIN; UDP sockets still take a filter from anybody. Worded once, here, with the
# advice of whoever asked (``Slot.advice``), so that no caller has to wrap and repeat it.
TCP_NEEDS_NET_ADMIN = "this kernel lets only CAP_NET_ADMIN attach a filter to a TCP socket (UDP needs no privilege)"


@dataclass(frozen=True)
class Slot:
    """One socket: our descriptor of it, how errors name it ("fd 5", "tcp://0.0.0.0:22",
    "pid 812 fd 6 (tcp 0.0.0.0:80)"), and what to do if the kernel refuses a TCP filter."""

    fd: int
    label: str
    advice: str = ""


@dataclass(frozen=True)
class Step:
    slot: Slot
    program: Loaded | None  # None: remove the filter


class ChangeKind(str, Enum):
    ATTACHED = "attached"
    RELOADED = "reloaded"
    REPLACED = "replaced"
    DETACHED = "detached"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Applied:
    slot: Slot
    before: GuardInfo
    change: ChangeKind


@dataclass(frozen=True)
class _Checked:
    step: Step
    before: Attached
    info: GuardInfo
    owner: Backend | None  # the backend that claimed the previous program (restores it)
    change: ChangeKind


def identify(backends: Sequence[Backend], attached: Attached, locked: bool) -> tuple[GuardInfo, Backend | None]:
    """Whose ``attached`` is, and the backend that claimed it (None: nobody)."""
    for b in backends:
        info = b.recognise(attached)
        if info is not None:
            return replace(info, locked=locked), b
    return replace(unclaimed(attached), locked=locked), None


def read(backends: Sequence[Backend], ops: FilterOps, fd: int, lock: bool = True) -> GuardInfo:
    locked = ops.is_locked(fd) if lock else False
    return identify(backends, ops.read(fd), locked)[0]


def locked_error(label: str) -> AdapterError:
    return AdapterError(
        f"{label}: the socket's filter is locked (SO_LOCK_FILTER); it cannot be changed or"
        " removed until the socket is closed",
        errno=errno.EPERM,
        target=label,
    )


def apply(backends: Sequence[Backend], ops: FilterOps, steps: Sequence[Step]) -> tuple[Applied, ...]:
    """Apply every step or none (module docstring); one ``Applied`` per step, in order."""
    checked = [_check(backends, ops, s) for s in steps]
    _refuse_unrestorable([c for c in checked if c.change is not ChangeKind.UNCHANGED][:-1])
    done: list[_Checked] = []
    try:
        for c in checked:
            if c.change is not ChangeKind.UNCHANGED:
                _change(backends, ops, c.step)
                done.append(c)
    except BaseException as e:
        failures = _rollback(ops, done)
        if failures and isinstance(e, AdapterError):
            raise AdapterError(f"{e}{_note(failures)}", errno=e.errno, target=e.target) from e
        if failures:
            e.add_note(_note(failures).removeprefix("; "))
        raise
    return tuple(Applied(c.step.slot, c.info, c.change) for c in checked)


def _check(backends: Sequence[Backend], ops: FilterOps, step: Step) -> _Checked:
    slot = step.slot
    if step.program is not None:
        _refuse_not_ip(ops.family(slot.fd, slot.label), slot.label)
    locked = ops.is_locked(slot.fd)
    attached = ops.read(slot.fd)
    info, owner = identify(backends, attached, locked)
    change = _change_kind(step, info)
    if change is not ChangeKind.UNCHANGED and locked:
        raise locked_error(slot.label)
    return _Checked(step, attached, info, owner, change)


def _refuse_unrestorable(before_last: Sequence[_Checked]) -> None:
    """Every change but the last may have to be undone: its previous program must be one a
    backend claimed (and so can put back), or none."""
    for c in before_last:
        if c.owner is None and not isinstance(c.before, NoFilter):
            raise AdapterError(
                f"{c.step.slot.label} has {c.info.describe()}, which could not be put back if a later"
                " socket failed; nothing was changed",
                target=c.step.slot.label,
            )


def _change_kind(step: Step, before: GuardInfo) -> ChangeKind:
    if step.program is None:
        return ChangeKind.UNCHANGED if before.state == "none" else ChangeKind.DETACHED
    if before.state == "none":
        return ChangeKind.ATTACHED
    return ChangeKind.RELOADED if before.state == "sockgate" else ChangeKind.REPLACED


def _refuse_not_ip(family: int, label: str) -> None:
    if family not in (socket.AF_INET, socket.AF_INET6):
        kind = "a Unix socket" if family == socket.AF_UNIX else f"a socket of family {family}"
        raise UsageError(
            f"{label} is {kind}: a kernel address filter guards IPv4/IPv6 sockets only (it would drop"
            " every message of a peer that has no IP address); decide Unix peers by their credentials"
            " with sockgate.peer() and sockgate.check(), or put `sockgate proxy` in front"
        )


def _change(backends: Sequence[Backend], ops: FilterOps, step: Step) -> None:
    slot, program = step.slot, step.program
    if program is None:
        ops.detach(slot.fd, f"detach filter from {slot.label}")
        return
    backend = named(backends, program.compiled.backend)
    try:
        backend.attach(slot.fd, program, f"attach filter for {program.compiled.service} to {slot.label}")
    except AdapterError as e:
        if e.errno == errno.EPERM and ops.is_tcp(slot.fd):
            advice = f": {slot.advice}" if slot.advice else ""
            raise AdapterError(f"{e}: {TCP_NEEDS_NET_ADMIN}{advice}", errno=e.errno, target=e.target) from e
        raise


def named(backends: Sequence[Backend], name: str) -> Backend:
    for b in backends:
        if b.name == name:
            return b
    raise UsageError(f"no {name} backend here (have: {', '.join(b.name for b in backends) or 'none'})")


def _rollback(ops: FilterOps, done: Sequence[_Checked]) -> list[tuple[str, SockgateError]]:
    """Put back each changed socket's previous program, newest first; the failures."""
    failures = []
    for c in reversed(done):
        label = f"restore the previous filter on {c.step.slot.label}"
        try:
            if isinstance(c.before, NoFilter):
                ops.detach(c.step.slot.fd, label)
            elif c.owner is not None:
                c.owner.restore(c.step.slot.fd, c.before, label)
            else:  # phase 1 lets this through only on the last change, which is never undone
                raise AdapterError(f"{label}: no backend can put back {c.info.describe()}")
        except SockgateError as e:
            failures.append((c.step.slot.label, e))
    return failures


def _note(failures: Sequence[tuple[str, SockgateError]]) -> str:
    return "; rolling back failed too, so these sockets may keep the new filter: " + "; ".join(
        f"{label} ({err})" for label, err in failures
    )
