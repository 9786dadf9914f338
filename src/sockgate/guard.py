"""Library entry points: put a compiled policy on a socket, read it back, take it off.

``guard(policy, sock, service)`` first resolves the service and compiles it completely (every
rule validated, the program sized against the kernel's limits); only then does it make one
``setsockopt(SO_ATTACH_FILTER)``, which replaces any filter already there atomically (the
kernel swaps the program under RCU: no packet ever sees the socket unfiltered). So a bad
policy raises before the socket is touched, and guarding again with a new policy is a reload.

``guard_of`` reads the filter back (``SO_GET_FILTER``) and recognises sockgate's programs by
the marker the compiler puts in them: the service name and the program's digest, recomputed
from the code read back (``bpf.classify``, the one reading ``ls`` shares): a marker in front of
other code is *modified*, and ``attach``/``detach`` treat it as foreign.

``guard_sockets`` / ``unguard_sockets`` do the same for sockets of running processes, reached
through ``pidfd_getfd`` duplicates (``sockgate attach`` / ``detach``). They are transactions:
every target is duplicated and checked (a socket, not locked, no foreign filter unless
forced, no SO_REUSEPORT group left partly unguarded) before any is changed, and if a change fails the ones already made are undone by
putting each socket's previous program back.

Kernel enforcement is Linux-only: the platform is chosen once, at import. Elsewhere these
functions raise ``UnsupportedPlatform``, and ``sockgate.check`` / the proxy still decide in user
space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence, Union

from sockgate.decide import Peer
from sockgate.errors import AdapterError, SockgateError, UnsupportedPlatform, UsageError
from sockgate.policy.ir import Policy

if TYPE_CHECKING:
    from sockgate.bpf import Program
    from sockgate.bpf.marker import FilterState as GuardState
    from sockgate.linux.procsock import SockRef

Sockish = Union[socket.socket, int]

if sys.platform == "linux":
    _UNSUPPORTED: str | None = None
else:  # pragma: no cover - exercised by monkeypatching _UNSUPPORTED in tests
    _UNSUPPORTED = (
        f"kernel enforcement needs Linux (classic BPF socket filters); on {sys.platform} sockgate"
        " still decides in user space: use sockgate.check() or `sockgate proxy`"
    )


@dataclass(frozen=True)
class Guarded:
    """What ``guard`` attached."""

    service: str
    digest: str
    instructions: int


@dataclass(frozen=True)
class GuardInfo:
    """A socket's filter as read back: sockgate's (service + digest), modified (a sockgate
    marker in front of other code: service and digest are only claimed), foreign, or none."""

    state: GuardState
    instructions: int = 0
    service: str | None = None
    digest: str | None = None
    locked: bool = False

    def describe(self) -> str:
        lock = ", locked" if self.locked else ""
        if self.state == "sockgate":
            return f"sockgate service {self.service} (digest {self.digest}, {self.instructions} instructions{lock})"
        if self.state == "modified":
            return (
                f"a modified sockgate filter (its marker claims service {self.service}, digest"
                f" {self.digest}, but the code differs; {self.instructions} instructions{lock})"
            )
        if self.state == "foreign":
            return f"a foreign filter ({self.instructions} instructions{lock})"
        return f"no filter{lock}"


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
        d = asdict(self)
        d["before"] = asdict(self.before)
        return d


def _require_kernel() -> None:
    if _UNSUPPORTED is not None:
        raise UnsupportedPlatform(_UNSUPPORTED)


def _fd(s: Sockish) -> int:
    if isinstance(s, int):
        return s
    fileno = getattr(s, "fileno", None)
    if fileno is None:
        raise UsageError(f"not a socket or file descriptor: {s!r}")
    fd = fileno()
    if not isinstance(fd, int) or fd < 0:
        raise UsageError(f"socket is closed: {s!r}")
    return fd


# ---------------------------------------------------------------------------------------------
# Compile completely before anything is touched


def compile_guard(policy: Policy, service: str) -> "Program":
    """The program for ``service``: raises (PolicyError, UnsupportedInKernel, CompileError,
    UsageError for an unknown service) without touching any socket."""
    from sockgate.bpf import compile_service

    return compile_service(policy.require_service(service))


def guard(policy: Policy, sock: Sockish, service: str) -> Guarded:
    """Attach ``policy``'s filter for ``service`` to ``sock`` (a socket object or an fd).

    Replaces whatever filter the socket had, in one atomic step; raises ``AdapterError`` when
    the socket's filter is locked. Nothing is attached if compiling fails."""
    _require_kernel()
    program = compile_guard(policy, service)
    fd = _fd(sock)
    _refuse_not_ip(fd, f"fd {fd}")
    _refuse_locked(fd, f"fd {fd}")
    return _install(fd, program, f"attach filter for {service} to fd {fd}")


def unguard(sock: Sockish) -> bool:
    """Remove the socket's filter (whoever put it there); False when it had none."""
    _require_kernel()
    from sockgate.linux import filter as kfilter

    fd = _fd(sock)
    _refuse_locked(fd, f"fd {fd}")
    return kfilter.detach(fd)


def guard_of(sock: Sockish) -> GuardInfo:
    """Read the socket's filter back and say whose it is."""
    _require_kernel()
    return _read_guard(_fd(sock))


def peer(conn: Sockish) -> Peer:
    """The peer of a connected socket: Unix credentials (uid, gid, groups, pid, exe) through
    SO_PEERCRED / SO_PEERGROUPS / SO_PEERPIDFD, or an IP peer's address and port."""
    from sockgate.linux import peercred

    fd = _fd(conn)
    if _UNSUPPORTED is not None:
        with peercred.borrowed_socket(fd) as s:
            if s.family == socket.AF_UNIX:
                raise UnsupportedPlatform(f"Unix peer credentials: {_UNSUPPORTED}")
    return peercred.peer_of(fd)


# Linux commit 5d39580f68e6 (in 6.18 here) made SO_ATTACH_FILTER on TCP sockets require
# CAP_NET_ADMIN; UDP sockets still take a filter from anybody.
# The refusal is worded once, here, with advice that depends on who asked (the library,
# `sockgate run`, `sockgate attach`), so that no caller has to wrap and repeat it.
TCP_NEEDS_NET_ADMIN = "this kernel lets only CAP_NET_ADMIN attach a filter to a TCP socket (UDP needs no privilege)"
LIBRARY_ADVICE = (
    "guard it as root or with that capability, e.g. with `sockgate run`, which binds and guards"
    " as root and then drops privileges"
)
ATTACH_ADVICE = "run `sockgate attach` as root or with that capability"


def _install(fd: int, program: "Program", what: str, advice: str = LIBRARY_ADVICE) -> Guarded:
    from sockgate.linux import filter as kfilter

    try:
        kfilter.attach(fd, program.encode(), what)
    except AdapterError as e:
        if e.errno == errno.EPERM and _is_tcp(fd):
            raise AdapterError(f"{e}: {TCP_NEEDS_NET_ADMIN}: {advice}", errno=e.errno, target=e.target) from e
        raise
    return Guarded(program.service, program.digest, len(program.insns))


def guard_listener(policy: Policy, sock: socket.socket, service: str, what: str, advice: str) -> Guarded:
    """``guard`` for sockgate's own listeners: ``what`` names the socket in errors (its URL,
    not an fd number of ours) and ``advice`` says what to do about a TCP refusal."""
    _require_kernel()
    program = compile_guard(policy, service)
    fd = _fd(sock)
    _refuse_not_ip(fd, what)
    _refuse_locked(fd, what)
    return _install(fd, program, f"attach filter for {service} to {what}", advice)


def _refuse_not_ip(fd: int, what: str) -> None:
    """A filter reads the IP header: on a Unix socket it would see none and drop every
    message, so only IPv4/IPv6 sockets are guarded (``attach`` refuses the same way)."""
    try:
        s = socket.socket(fileno=fd)
    except OSError as e:
        why = "not an open file descriptor" if e.errno == errno.EBADF else "not a socket"
        raise AdapterError(f"{what}: {why}", errno=e.errno, target=what) from None
    try:
        family = s.family
    finally:
        s.detach()  # the fd stays the caller's
    if family not in (socket.AF_INET, socket.AF_INET6):
        kind = "a Unix socket" if family == socket.AF_UNIX else f"a socket of family {int(family)}"
        raise UsageError(
            f"{what} is {kind}: a kernel address filter guards IPv4/IPv6 sockets only (it would drop"
            " every message of a peer that has no IP address); decide Unix peers by their credentials"
            " with sockgate.peer() and sockgate.check(), or put `sockgate proxy` in front"
        )


def _is_tcp(fd: int) -> bool:
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        return s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET, socket.AF_INET6)
    finally:
        s.detach()  # the fd stays the caller's


def _read_guard(fd: int) -> GuardInfo:
    from sockgate.bpf import classify
    from sockgate.linux import filter as kfilter

    locked = kfilter.is_locked(fd)
    r = classify(kfilter.get(fd))
    return GuardInfo(r.state, r.instructions, r.service, r.digest, locked)


def _refuse_locked(fd: int, what: str) -> None:
    from sockgate.linux import filter as kfilter

    if kfilter.is_locked(fd):
        raise AdapterError(
            f"{what}: the socket's filter is locked (SO_LOCK_FILTER); it cannot be changed or"
            " removed until the socket is closed",
            errno=errno.EPERM,
            target=what,
        )


# ---------------------------------------------------------------------------------------------
# Sockets of running processes (sockgate attach / detach)


@dataclass
class _Held:
    ref: "SockRef"
    dup: int
    before: GuardInfo
    raw: bytes | None


@contextlib.contextmanager
def _borrow_all(targets: Sequence[tuple[int, int]]) -> Iterator[list[_Held]]:
    """Duplicate every (pid, fd), check it is an IP socket, read its filter; one entry per
    distinct socket. All duplicates are closed on exit."""
    held: list[_Held] = []
    seen: set[tuple[int, int]] = set()
    try:
        for pid, fd in targets:
            h = _hold(pid, fd, seen)
            if h is not None:
                held.append(h)
        yield held
    finally:
        for h in held:
            os.close(h.dup)


def _hold(pid: int, fd: int, seen: set[tuple[int, int]]) -> _Held | None:
    """Our duplicate of ``pid``'s ``fd`` with what it is; None for a socket already held."""
    from sockgate.linux import filter as kfilter
    from sockgate.linux import pidfd, procsock

    dup = pidfd.getfd(pid, fd)
    try:
        ident = procsock.identity(dup)
        if ident in seen:
            os.close(dup)
            return None
        ref = procsock.inspect_dup(dup, pid, fd)
        if ref.proto not in ("tcp", "udp"):
            raise UsageError(
                f"{ref.describe()}: a kernel address filter guards TCP and UDP sockets only"
                " (Unix peers are decided by credentials: use `sockgate proxy`)"
            )
        h = _Held(ref, dup, _read_guard(dup), kfilter.get(dup))
    except BaseException:
        os.close(dup)
        raise
    seen.add(ident)
    return h


def _check_changeable(held: Sequence[_Held], force: bool) -> None:
    for h in held:
        what = h.ref.describe()
        if h.before.locked:
            _refuse_locked(h.dup, what)
        if h.before.state in ("foreign", "modified") and not force:
            raise AdapterError(
                f"{what} already has {h.before.describe()}; nothing was changed (use --force to replace it)",
                target=what,
            )


def _refuse_partial_groups(held: Sequence[_Held]) -> None:
    """An SO_REUSEPORT group guarded in part lets through every client the kernel happens to
    hand to an unguarded member: refuse unless every socket at the same address is a target."""
    from sockgate.linux import pidfd, procsock

    ours = {procsock.identity(h.dup) for h in held}
    checked: set[tuple[str, str]] = set()  # one table scan per address, not per member
    for h in held:
        if (h.ref.proto, h.ref.local) in checked:
            continue
        checked.add((h.ref.proto, h.ref.local))
        for other in procsock.same_address(h.ref):
            try:
                with pidfd.borrowed(other.pid, other.fd) as dup:
                    if procsock.identity(dup) in ours:
                        continue  # the same socket, shared by another process (fork)
            except SockgateError:
                pass  # cannot look: count it as another member
            port = h.ref.local.rsplit(":", 1)[1]
            raise AdapterError(
                f"{h.ref.describe()} shares {h.ref.proto} {h.ref.local} with pid {other.pid} fd {other.fd}"
                " (an SO_REUSEPORT group: the kernel spreads clients over all of its sockets);"
                f" nothing was changed: guard the whole group with --port {port}"
                + ("" if h.ref.proto == "tcp" else f" --proto {h.ref.proto}"),
                target=h.ref.describe(),
            )


def _rollback(done: Sequence[_Held]) -> None:
    from sockgate.linux import filter as kfilter

    for h in reversed(done):
        with contextlib.suppress(SockgateError):
            if h.raw is None:
                kfilter.detach(h.dup)
            else:
                kfilter.attach(h.dup, h.raw)


def guard_sockets(
    policy: Policy, service: str, targets: Sequence[tuple[int, int]], force: bool = False
) -> tuple[Guarded, list[Change]]:
    """Guard every (pid, fd) in ``targets`` with ``service``'s program, or none of them."""
    _require_kernel()
    program = compile_guard(policy, service)
    if not targets:
        raise UsageError("no sockets to guard")
    with _borrow_all(targets) as held:
        _check_changeable(held, force)
        _refuse_partial_groups(held)
        done: list[_Held] = []
        changes = []
        result: Guarded | None = None
        try:
            for h in held:
                result = _install(h.dup, program, f"attach filter for {service} to {h.ref.describe()}", ATTACH_ADVICE)
                done.append(h)
                action = {"none": "attached", "sockgate": "reloaded", "foreign": "replaced", "modified": "replaced"}[
                    h.before.state
                ]
                changes.append(Change(h.ref.pid, h.ref.fd, h.ref.proto, h.ref.local, action, h.before))
        except SockgateError:
            _rollback(done)
            raise
    assert result is not None
    return result, changes


def unguard_sockets(targets: Sequence[tuple[int, int]], force: bool = False) -> list[Change]:
    """Remove sockgate's filter from every target (foreign ones too with ``force``), or none."""
    _require_kernel()
    from sockgate.linux import filter as kfilter

    if not targets:
        raise UsageError("no sockets to detach from")
    with _borrow_all(targets) as held:
        _check_changeable([h for h in held if h.before.state != "none"], force)
        done: list[_Held] = []
        changes = []
        try:
            for h in held:
                action = "unchanged"
                if h.before.state != "none":
                    kfilter.detach(h.dup, f"detach filter from {h.ref.describe()}")
                    done.append(h)
                    action = "detached"
                changes.append(Change(h.ref.pid, h.ref.fd, h.ref.proto, h.ref.local, action, h.before))
        except SockgateError:
            _rollback(done)
            raise
    return changes
