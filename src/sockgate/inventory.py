"""The one socket inventory: every socket the kernel lists, joined with the processes holding it.

``sockgate ls``, ``attach --pid/--port`` and the agent to come must agree on which sockets
exist and who holds them, so there is one source for each fact and one join:

* the sockets come from the kernel's ``sock_diag`` dump, and from the ``/proc/net`` tables
  where a diag family is missing (``linux.sockdiag.inventory``);
* the holders come from the ``/proc/PID/fd`` links (``linux.procfs.holders``), joined by socket
  inode; a socket shared across ``fork`` is one record with every holder;
* what one named descriptor is comes from the socket itself (``linux.fdinfo.describe_fd``),
  as the same record, ``linux.sockdiag.Sock``.

Only our network namespace's sockets are listed (the dump and the tables are per namespace); a
socket of a process in another namespace is reached by naming its descriptor.

A socket worth a filter ("guardable") is a TCP listener or an unconnected UDP socket: a filter
on an accepted TCP connection would guard one connection already allowed, and a connected UDP
socket is a client. A socket bound to a port whose holder cannot be seen is never skipped in
silence: ``on_port`` refuses, and ``listeners`` returns it with the holders it could see and
the pids it could not read, for the caller to report.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass
from typing import Callable, Container, Iterable, Mapping, Sequence

from sockgate.errors import AdapterError
from sockgate.linux import procfs, sockdiag
from sockgate.linux.procfs import HolderIndex
from sockgate.linux.sockdiag import TCP_CLOSE, TCP_LISTEN, Sock

PROC = procfs.PROC
# the states in which a socket is worth a filter, per protocol (sock_diag asks only for these)
GUARDABLE_STATES: Mapping[str, int] = {"tcp": 1 << TCP_LISTEN, "udp": 1 << TCP_CLOSE}


@dataclass(frozen=True)
class Holder:
    """One process holding a socket, through descriptors ``fds``. ``name`` and ``user`` are
    filled by whoever asks for them: ``ls`` (the process name and owner it prints), ``listeners``
    (``name`` is the comm, ``argv0`` the basename of argv[0], as libwrap names a daemon)."""

    pid: int
    name: str | None
    user: str | None
    fds: tuple[int, ...]
    argv0: str | None = None


@dataclass(frozen=True)
class Found:
    """A socket and every process seen holding it (none: nobody we may see holds it)."""

    sock: Sock
    holders: tuple[Holder, ...]


@dataclass(frozen=True)
class Scan:
    """What one look at the host found; ``denied``: pids whose descriptors we may not read, so
    a socket with no holder may be theirs."""

    found: tuple[Found, ...]
    denied: frozenset[int]


def guardable(s: Sock) -> bool:
    """A TCP listener or an unconnected UDP socket."""
    return s.proto in GUARDABLE_STATES and bool(GUARDABLE_STATES[s.proto] & (1 << s.state))


# --- the join ------------------------------------------------------------------------------


def join(socks: Iterable[Sock], index: HolderIndex) -> Scan:
    """Each socket with its holders from ``index`` (pure)."""
    return Scan(tuple(Found(s, holders_of(s, index)) for s in socks), index.denied)


def holders_of(s: Sock, index: HolderIndex) -> tuple[Holder, ...]:
    """The processes holding ``s``, by pid, each with its descriptors in order. A socket of
    inode 0 (TIME-WAIT, a request socket) has no descriptor anywhere."""
    by_pid: dict[int, list[int]] = {}
    for pid, fd in index.by_inode.get(s.inode, ()) if s.inode else ():
        by_pid.setdefault(pid, []).append(fd)
    return tuple(Holder(pid, None, None, tuple(sorted(fds))) for pid, fds in sorted(by_pid.items()))


def sockets(
    kinds: Iterable[str],
    states: Mapping[str, int],
    *,
    proc: str = PROC,
    only_pids: Iterable[int] | None = None,
    where: Callable[[Sock], bool] | None = None,
) -> Scan:
    """Sockets of ``kinds`` (tcp, udp, raw, icmp, unix), each in the state mask given for it
    and, when given, passing ``where`` (tested before the join: a busy host lists tens of
    thousands), with their holders (among ``only_pids`` when given)."""
    socks = sockdiag.inventory(kinds, dict(states), proc)
    return join(socks if where is None else filter(where, socks), procfs.holders(proc, only_pids))


# --- what the agent guards -------------------------------------------------------------------


def listeners(ports: Container[int], protos: Iterable[str] = ("tcp", "udp"), *, proc: str = PROC) -> Scan:
    """Every listening TCP socket and bound UDP socket on ``ports``, with its holders named
    (``Holder.name``: comm; ``Holder.argv0``: basename of argv[0]).

    A holder that exits or closes the socket while we look is left out; each is checked to
    still hold the socket *after* its names were read, so a reused pid never lends its names
    to a socket it does not hold. A socket may so end with no holder: it is kept, for the
    caller to look again or report, as it is when its holder is among ``denied``."""
    kinds = _kinds(protos)
    states = {k: GUARDABLE_STATES[k] for k in kinds}
    scan = sockets(kinds, states, proc=proc, where=lambda s: guardable(s) and s.local_port in ports)
    found = []
    for f in scan.found:
        named = (_named(h, f.sock.inode, proc) for h in f.holders)
        found.append(Found(f.sock, tuple(h for h in named if h is not None)))
    found.sort(key=lambda f: (f.sock.proto, f.sock.local_port or 0, f.sock.family, f.sock.local_addr or "", f.sock.inode))
    return Scan(tuple(found), scan.denied)


def _named(h: Holder, inode: int, proc: str) -> Holder | None:
    names = procfs.names(h.pid, proc)
    if names is None:
        return None
    fds = tuple(fd for fd in h.fds if procfs.still_holds(h.pid, fd, inode, proc))
    return dataclasses.replace(h, name=names.comm, argv0=names.argv0, fds=fds) if fds else None


def _kinds(protos: Iterable[str]) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(protos))
    for k in kinds:
        if k not in GUARDABLE_STATES:
            raise AdapterError(f"no {k} socket can be guarded (tcp or udp)")
    return kinds


# --- what attach and detach name -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A socket as one holder reaches it: ``pid``'s descriptor ``fd``."""

    pid: int
    fd: int
    sock: Sock

    def describe(self) -> str:
        return self.sock.describe_at(self.pid, self.fd)


def of_process(pid: int, proto: str | None = None) -> list[Target]:
    """The TCP listeners and UDP sockets of process ``pid`` (optionally one protocol)."""
    kinds = _kinds((proto,) if proto else GUARDABLE_STATES)
    scan = sockets(kinds, {k: GUARDABLE_STATES[k] for k in kinds}, only_pids=[pid], where=guardable)
    if pid in scan.denied:
        raise _no_permission(f"list the sockets of pid {pid}")
    return sorted(_targets(scan.found), key=lambda t: t.fd)


def on_port(port: int, proto: str = "tcp") -> list[Target]:
    """Every TCP listener (or UDP socket) bound to ``port``, in any process.

    Raises ``AdapterError`` when a socket is bound there but its owner cannot be seen (we are
    not allowed to read that process's descriptors), so no socket of a group is missed."""
    kinds = _kinds((proto,))
    scan = sockets(kinds, {proto: GUARDABLE_STATES[proto]}, where=lambda s: s.local_port == port and guardable(s))
    if any(not f.holders for f in scan.found):
        raise _owner_unseen(proto, port, bool(scan.denied))
    return sorted(_targets(scan.found), key=lambda t: (t.pid, t.fd))


def _targets(found: Iterable[Found]) -> list[Target]:
    return [Target(h.pid, fd, f.sock) for f in found for h in f.holders for fd in h.fds]


def same_address(ref: Target) -> list[Target]:
    """The other sockets bound to exactly ``ref``'s protocol and local address: with it, an
    SO_REUSEPORT group, over which the kernel spreads clients.
    Empty at once for a socket that lets nobody share its address (no table is read then);
    only our network namespace is listed, so for a process in another namespace the answer is
    empty too."""
    s = ref.sock
    if not s.reuse or s.local_port is None or procfs.netns_of(ref.pid) != procfs.netns_of(os.getpid()):
        return []
    local = s.local_text()
    return [t for t in on_port(s.local_port, s.proto) if t.sock.local_text() == local and (t.pid, t.fd) != (ref.pid, ref.fd)]


def attach_targets(
    pid: int | None = None, fd: int | None = None, port: int | None = None, proto: str | None = None
) -> list[tuple[int, int]]:
    """The (pid, fd) pairs a command names: one fd of a process, a process's TCP listeners and
    UDP sockets, or every socket bound to a port. Refuses (``AdapterError``) when there is none."""
    if pid is not None:
        if not procfs.pid_exists(pid):
            raise procfs.no_process(pid)
        if fd is not None:
            return [(pid, fd)]
        kind = f"{proto} socket" if proto else "TCP listener or UDP socket"
        return _pairs(of_process(pid, proto), f"pid {pid} has no {kind} to guard", f"pid {pid}")
    if port is None:
        raise AdapterError("name a process (pid) or a port")
    what = "TCP listener" if (proto or "tcp") == "tcp" else "UDP socket"
    return _pairs(on_port(port, proto or "tcp"), f"no {what} is bound to port {port}", f"port {port}")


def _pairs(found: Sequence[Target], none: str, target: str) -> list[tuple[int, int]]:
    if not found:
        raise AdapterError(none, errno=errno.ENOENT, target=target)
    return [(t.pid, t.fd) for t in found]


def _no_permission(what: str) -> AdapterError:
    return AdapterError(
        f"{what}: permission denied (needs root with CAP_SYS_PTRACE, or the same user with ptrace"
        " rights over the process)",
        errno=errno.EPERM,
        target=what,
    )


def _owner_unseen(proto: str, port: int, some_denied: bool) -> AdapterError:
    """A socket on ``port`` that no process we can see holds: a kernel socket only when we may
    see every process's descriptors; otherwise a permission problem, never a guess."""
    if some_denied or not procfs.sees_every_process():
        return _no_permission(f"{proto} port {port}: a socket's owner")
    return AdapterError(
        f"{proto} port {port}: a socket there belongs to no process (a kernel socket); nothing was changed",
        errno=errno.ENOENT,
        target=f"port {port}",
    )
