"""``sockgate attach`` / ``detach``: guard the sockets of running processes in place.

The sockets are reached through ``pidfd_getfd`` duplicates. Every target is duplicated and
checked — a TCP or UDP socket, not locked, no foreign or modified filter unless forced, no
SO_REUSEPORT group left partly guarded — before any is changed; the change itself is one
all-or-nothing transaction of the kernel seam (``Kernel.apply``), which puts each socket's
previous program back if a later one fails. The checks whose messages carry command-line
advice (``--force``, ``--port``) are made here; the seam refuses what no caller may do.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from sockgate import cutoff
from sockgate.errors import AdapterError, SockgateError, UsageError
from sockgate.guard import Guarded, chosen_backend, compile_guard, require_kernel
from sockgate.kernel import Applied, GuardInfo, Kernel, Loaded, Slot, Step, default_kernel
from sockgate.kernel.transaction import locked_error
from sockgate.inventory import Target, same_address
from sockgate.linux import fdinfo, pidfd, sockdiag
from sockgate.policy.ir import Policy
from sockgate.resolve import ResolvedService, resolve

ATTACH_ADVICE = "run `sockgate attach` as root or with that capability"


@dataclass(frozen=True)
class Change:
    """What ``guard_sockets`` / ``unguard_sockets`` did to one socket."""

    pid: int
    fd: int
    proto: str
    local: str
    action: str  # "attached" | "reloaded" | "replaced" | "detached" | "unchanged"
    before: GuardInfo

    def as_dict(self) -> dict[str, Any]:
        b = self.before
        before = {"state": b.state, "instructions": b.instructions, "service": b.service, "digest": b.digest, "locked": b.locked}
        return {"pid": self.pid, "fd": self.fd, "proto": self.proto, "local": self.local, "action": self.action, "before": before}


@dataclass(frozen=True)
class _Held:
    ref: Target
    dup: int
    before: GuardInfo


@dataclass(frozen=True)
class Ended:
    """The established connections an attach ended because the policy denies their peer."""

    count: int = 0
    problems: tuple[str, ...] = ()  # listeners not checked, and why


def guard_sockets(
    policy: Policy, service: str, targets: Sequence[tuple[int, int]], force: bool = False, backend: str = "auto",
    keep_established: bool = False,
) -> tuple[Guarded, list[Change], Ended]:
    """Guard every (pid, fd) in ``targets`` with ``service``'s program from ``backend``, or
    none of them; then (unless ``keep_established``) end the established connections on the
    TCP listeners among them whose peer the policy denies (sockgate.cutoff)."""
    require_kernel()
    kernel = default_kernel()
    why = chosen_backend(backend).why
    program = kernel.load(compile_guard(policy, service, backend))
    if not targets:
        raise UsageError("no sockets to guard")
    with _borrow_all(kernel, targets) as held:
        _check_changeable(held, force)
        _refuse_partial_groups(held)
        applied = _apply(kernel, held, program)
        ended = Ended() if keep_established else _end_denied(resolve(policy, service), held)
    return Guarded.of(program.compiled, why), applied, ended


def _end_denied(service: ResolvedService, held: Sequence[_Held]) -> Ended:
    listeners, problems = [], []
    for h in held:
        s = h.ref.sock
        if s.proto != "tcp" or s.state != sockdiag.TCP_LISTEN or s.local_addr is None or s.local_port is None:
            continue
        if not cutoff.in_this_netns(h.dup):
            problems.append(f"{h.ref.describe()}: in another network namespace, its established connections were not checked")
            continue
        listeners.append(cutoff.TcpListener(ipaddress.ip_address(s.local_addr), s.local_port))
    try:
        return Ended(cutoff.end_denied(service, listeners), tuple(problems))
    except SockgateError as e:
        return Ended(0, (*problems, f"established connections the policy denies were not ended: {e}"))


def unguard_sockets(targets: Sequence[tuple[int, int]], force: bool = False) -> list[Change]:
    """Remove sockgate's filter from every target (foreign ones too with ``force``), or none."""
    require_kernel()
    kernel = default_kernel()
    if not targets:
        raise UsageError("no sockets to detach from")
    with _borrow_all(kernel, targets) as held:
        _check_changeable([h for h in held if h.before.state != "none"], force)
        return _apply(kernel, held, None)


def _apply(kernel: Kernel, held: Sequence[_Held], program: Loaded | None) -> list[Change]:
    applied = kernel.apply([Step(Slot(h.dup, h.ref.describe(), ATTACH_ADVICE), program) for h in held])
    return [_change(h.ref, a) for h, a in zip(held, applied)]


def _change(ref: Target, a: Applied) -> Change:
    return Change(ref.pid, ref.fd, ref.sock.proto, ref.sock.local_text(), a.change.value, a.before)


@contextlib.contextmanager
def _borrow_all(kernel: Kernel, targets: Sequence[tuple[int, int]]) -> Iterator[list[_Held]]:
    """Duplicate every (pid, fd), check it is an IP socket, read its filter; one entry per
    distinct socket. All duplicates are closed on exit."""
    held: list[_Held] = []
    seen: set[tuple[int, int]] = set()
    try:
        for pid, fd in targets:
            h = _hold(kernel, pid, fd, seen)
            if h is not None:
                held.append(h)
        yield held
    finally:
        for h in held:
            os.close(h.dup)


def _hold(kernel: Kernel, pid: int, fd: int, seen: set[tuple[int, int]]) -> _Held | None:
    """Our duplicate of ``pid``'s ``fd`` with what it is; None for a socket already held."""
    dup = pidfd.getfd(pid, fd)
    try:
        ident = fdinfo.identity(dup)
        if ident in seen:
            os.close(dup)
            return None
        ref = Target(pid, fd, fdinfo.describe_fd(dup, pid, fd))
        if ref.sock.proto not in ("tcp", "udp"):
            raise UsageError(
                f"{ref.describe()}: a kernel address filter guards TCP and UDP sockets only"
                " (Unix peers are decided by credentials: use `sockgate proxy`)"
            )
        h = _Held(ref, dup, kernel.read(dup))
    except BaseException:
        os.close(dup)
        raise
    seen.add(ident)
    return h


def _check_changeable(held: Sequence[_Held], force: bool) -> None:
    for h in held:
        what = h.ref.describe()
        if h.before.locked:
            raise locked_error(what)
        if h.before.state in ("foreign", "modified") and not force:
            raise AdapterError(
                f"{what} already has {h.before.describe()}; nothing was changed (use --force to replace it)",
                target=what,
            )


def _refuse_partial_groups(held: Sequence[_Held]) -> None:
    """An SO_REUSEPORT group guarded in part lets through every client the kernel happens to
    hand to an unguarded member: refuse unless every socket at the same address is a target."""
    ours = {fdinfo.identity(h.dup) for h in held}
    inodes = {ino for _, ino in ours}  # the dump's inode is the socket's: held, so not reused
    checked: set[tuple[str, str]] = set()  # one table scan per address, not per member
    for h in held:
        s = h.ref.sock
        if (s.proto, s.local_text()) in checked:
            continue
        checked.add((s.proto, s.local_text()))
        for other in same_address(h.ref):
            if other.sock.inode in inodes or _same_socket(other, ours):
                continue  # the same socket, shared by another process (fork)
            raise AdapterError(
                f"{h.ref.describe()} shares {s.proto} {s.local_text()} with pid {other.pid} fd {other.fd}"
                " (an SO_REUSEPORT group: the kernel spreads clients over all of its sockets);"
                f" nothing was changed: guard the whole group with --port {s.local_port}"
                + ("" if s.proto == "tcp" else f" --proto {s.proto}"),
                target=h.ref.describe(),
            )


def _same_socket(other: Target, ours: set[tuple[int, int]]) -> bool:
    """Whether ``other`` is one of the sockets held (looked at through a duplicate; one we
    cannot look at counts as another member)."""
    try:
        with pidfd.borrowed(other.pid, other.fd) as dup:
            return fdinfo.identity(dup) in ours
    except SockgateError:
        return False
