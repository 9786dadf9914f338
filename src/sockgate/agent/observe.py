"""What the host holds: its listening sockets as ``model.Observed``, each with our own duplicate
of it, so the applier changes exactly the socket that was looked at.

Two ways in. ``scan`` is the full look (start, reload, resync, the drift sweep, due retries):
``inventory.listeners`` (one sock_diag dump, the /proc descriptor tables, the holders' names).
``one`` is the hot path after a watcher event: only the event's process is searched for the
socket of the event's cookie, and the host-wide look is the fallback when that process no
longer holds it (a parent that forked and exited).

Every socket is borrowed (``pidfd_getfd``) and its ``SO_COOKIE`` compared with the one the
kernel listed before it is trusted: a pid reused meanwhile, or a descriptor number closed and
reopened, lends us another socket, which must not be guarded (or reported) under this one's
name. Its filter is read through the kernel seam (``Kernel.read``) — what the kernel holds,
never what we remember having attached. A socket we may not borrow is kept, with the reason,
so the planner reports and retries it rather than forgetting it.

Sockets of other network namespaces are seen through their watcher events only (the event's
process's descriptors are searched by cookie, which works in any namespace): the full scan's
sock_diag answers for the reader's namespace (a per-namespace scan is the inventory's to add).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable, Container, Literal, Sequence

from sockgate.agent.model import Family, GuardState, HolderInfo, Observed, Proto, SocketEvent
from sockgate.errors import SockgateError
from sockgate.inventory import Found, Holder, guardable, listeners
from sockgate.kernel import Kernel
from sockgate.kernel.reading import GuardInfo
from sockgate.linux import bpfsys, fdinfo, pidfd, procfs

PROTOS: tuple[Proto, ...] = ("tcp", "udp")


class AllPorts:
    """Every port (a daemon's sockets are found by their holder, on any port)."""

    def __contains__(self, port: object) -> bool:
        return True


@dataclass
class Held:
    """A socket seen, and our duplicate of it (None: we could not borrow it; ``observed``
    says why). ``close`` it once applied."""

    observed: Observed
    dup: int | None
    label: str

    def close(self) -> None:
        if self.dup is not None:
            os.close(self.dup)
            self.dup = None


@dataclass
class Look:
    """One look's sockets by cookie; closes every duplicate, and the pidfds they were borrowed
    through, on exit."""

    held: dict[int, Held] = field(default_factory=dict)
    pidfds: pidfd.PidfdCache = field(default_factory=pidfd.PidfdCache)

    def __enter__(self) -> Look:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for h in self.held.values():
            h.close()
        self.held.clear()
        self.pidfds.close()

    @property
    def observed(self) -> list[Observed]:
        return [h.observed for h in self.held.values()]


def guard_state(info: GuardInfo) -> GuardState:
    """The kernel seam's reading as the planner's value (``unknown`` is reported apart)."""
    state: Literal["none", "sockgate", "modified", "foreign"]
    match info.state:
        case "none" | "sockgate" | "modified" | "foreign":
            state = info.state
        case "unknown":
            state = "foreign"  # never treated as ours: not replaced without a look at why
    return GuardState(state, info.service, info.digest, info.backend, info.locked)


class Observer:
    def __init__(self, kernel: Kernel, proc: str = procfs.PROC, keep: Callable[[Observed], bool] = lambda o: True,
                 named: Callable[[HolderInfo], bool] = lambda h: True) -> None:
        """``keep``: whether a socket (its address and holders, before anything is read from it)
        is worth borrowing — the policy selects it, or it carries our program — so that a
        daemon's scan of every port does not reach into every other process's sockets.
        ``named``: whether a holder has the name of a daemon the policy enrols — only then are
        its uid and executable read (``_identified``), which ``keep`` needs to tell the daemon
        from a process that took its name."""
        self.kernel = kernel
        self.proc = proc
        self.keep = keep
        self.named = named

    def scan(self, ports: Container[int], only: Container[int] | None = None) -> Look:
        """Every listener on ``ports`` (``only``: of these cookies), borrowed."""
        look = Look()
        try:
            for f in listeners(ports, PROTOS, proc=self.proc).found:
                if f.sock.cookie is None or (only is not None and f.sock.cookie not in only):
                    continue
                held = self._hold(f, look.pidfds)
                if held is not None:
                    look.held[held.observed.cookie] = held
        except BaseException:
            look.close()
            raise
        return look

    def one(self, ev: SocketEvent) -> Look:
        """The socket of ``ev``: in the event's process first, else wherever it is held (an
        event without a cookie: every socket on its port)."""
        look = Look()
        try:
            if ev.pid > 0 and ev.cookie and not self._worth(ev, look.pidfds):
                return look
            found = self._in_process(ev) if ev.pid > 0 and ev.cookie else None
            candidates = [found] if isinstance(found, Found) else [
                f for f in listeners({ev.port}, (ev.proto,), proc=self.proc).found
                if f.sock.cookie == ev.cookie or not ev.cookie]  # no cookie: every socket on the port
            for f in candidates:
                held = self._hold(f, look.pidfds)
                if held is not None:
                    look.held[held.observed.cookie] = held
            if not look.held and isinstance(found, str):
                self._denied(ev, found, look)
        except BaseException:
            look.close()
            raise
        return look

    def _worth(self, ev: SocketEvent, pidfds: pidfd.PidfdCache) -> bool:
        """Whether ``keep`` could want the event's socket, asked before the search: its
        process's names are a few /proc reads, the search borrows each of its descriptors (a
        process with 10,000 sockets: 10,000 links read per event). The answer is the one the
        search would get — the socket with the event's cookie, port and protocol, held by the
        event's process (``keep`` reads no address: a selector is protocol, port and holder).
        A process already gone is searched for everywhere, as before."""
        h = self._holder_info(ev.pid, pidfds)
        if h is None:
            return True
        o = Observed(ev.cookie, ev.proto, ev.family, "", ev.port, _netns((h,), self.proc), (h,), GuardState("none"))
        return self.keep(o)

    def _denied(self, ev: SocketEvent, why: str, look: Look) -> None:
        """The event's socket as the event tells it, unreadable (the planner reports and retries
        it): its process may not be looked into, and no scan of ours sees it either."""
        holders = tuple(h for h in [self._holder_info(ev.pid, look.pidfds)] if h is not None)
        o = Observed(ev.cookie, ev.proto, ev.family, "", ev.port, _netns(holders, self.proc), holders,
                     GuardState("none"), why)
        if self.keep(o):
            look.held[o.cookie] = Held(o, None, f"{ev.proto} port {ev.port} (cookie {ev.cookie})")

    def _in_process(self, ev: SocketEvent) -> Found | str | None:
        """The event's socket among its process's descriptors, by cookie — borrowed and asked
        itself, so in any network namespace (sock_diag answers for ours only). A text: why the
        process's descriptors may not be borrowed."""
        for pairs in procfs.holders(self.proc, [ev.pid]).by_inode.values():
            for pid, fd in pairs:
                try:
                    dup = pidfd.getfd(pid, fd)
                except SockgateError as e:
                    return str(e)
                try:
                    if bpfsys.socket_cookie(dup) != ev.cookie:
                        continue
                    sock = fdinfo.describe_fd(dup, pid, fd)
                except SockgateError:
                    continue
                finally:
                    os.close(dup)
                named = _named(Holder(pid, None, None, (fd,)), self.proc)
                return Found(sock, (named,)) if named is not None and guardable(sock) else None
        return None

    def _hold(self, f: Found, pidfds: pidfd.PidfdCache) -> Held | None:
        s = f.sock
        if s.cookie is None or s.local_port is None or s.proto not in PROTOS:
            return None
        holders = tuple(self._holder(HolderInfo(h.pid, h.fds[0], h.name or "", h.argv0), pidfds)
                        for h in f.holders if h.fds)
        family: Family = 6 if s.family == "ipv6" else 4
        proto: Proto = "tcp" if s.proto == "tcp" else "udp"
        base = Observed(s.cookie, proto, family, s.local_addr or "", s.local_port,
                        _netns(holders, self.proc), holders, GuardState("none"))
        if not self.keep(base):
            return None
        label = f"{proto} {base.local_text()} (cookie {s.cookie})"
        reasons: list[str] = []
        for h in holders:
            try:
                dup = _borrow(h, s.cookie, pidfds)
            except SockgateError as e:
                reasons.append(str(e))
                continue
            if dup is None:
                continue
            try:
                info = self.kernel.read(dup)
            except SockgateError as e:
                os.close(dup)
                reasons.append(str(e))
                continue
            if info.state == "unknown":
                os.close(dup)
                reasons.append(info.reason or "its filter could not be read")
                continue
            return Held(_with_guard(base, guard_state(info)), dup, f"{label} pid {h.pid} fd {h.fd}")
        why = "; ".join(reasons) if reasons else "no process we may see holds it"
        return Held(_unreadable(base, why), None, label)


    def _holder_info(self, pid: int, pidfds: pidfd.PidfdCache) -> HolderInfo | None:
        n = procfs.names(pid, self.proc)
        return None if n is None else self._holder(HolderInfo(pid, -1, n.comm or "", n.argv0), pidfds)

    def _holder(self, h: HolderInfo, pidfds: pidfd.PidfdCache) -> HolderInfo:
        """``h`` with its uid and executable when its name is an enrolled daemon's; a holder
        no daemon name matches is never looked into further."""
        return _identified(h, pidfds, self.proc) if self.named(h) else h


def _identified(h: HolderInfo, pidfds: pidfd.PidfdCache, proc: str) -> HolderInfo:
    """``h`` with the facts that tell the daemon from a process that took its name, read while
    a pidfd holds the process: the pidfd is opened first, /proc/PID read — its names again and
    who it is — then the pidfd asked whether the process still lives. If it does, the pid named
    that one process throughout (a pid is reused only after its process is gone), so name and
    identity are one process's, and the socket is later borrowed through that same pidfd. A
    process that exited meanwhile (or one we may not open) keeps no identity: never enrolled."""
    try:
        pfd = pidfds.pidfd(h.pid)
    except SockgateError:
        return h
    n = procfs.names(h.pid, proc)
    i = procfs.identity(h.pid, proc)
    if n is None or pidfd.exited(pfd):
        return h
    return replace(h, comm=n.comm or "", argv0=n.argv0, euid=i.euid, exe=i.exe, exe_root_owned=i.exe_root_owned)


def _named(h: Holder, proc: str) -> Holder | None:
    n = procfs.names(h.pid, proc)
    return None if n is None else Holder(h.pid, n.comm, None, h.fds, n.argv0)


def _borrow(h: HolderInfo, cookie: int, pidfds: pidfd.PidfdCache) -> int | None:
    """Our duplicate of ``h``'s descriptor when it still is socket ``cookie`` — through the
    pidfd its identity was read under, so both are the same process's."""
    dup = pidfds.dup(h.pid, h.fd)
    try:
        same = bpfsys.socket_cookie(dup) == cookie
    except SockgateError:
        same = False
    if not same:
        os.close(dup)
        return None
    return dup


def still_holds(h: HolderInfo, cookie: int, pidfds: pidfd.PidfdCache) -> bool:
    """Whether ``h``'s descriptor still is socket ``cookie``, asked through the pidfd cached
    for its pid (so that what was read under that pidfd is the holder's); False when it cannot
    be asked."""
    try:
        dup = _borrow(h, cookie, pidfds)
    except SockgateError:
        return False
    if dup is None:
        return False
    os.close(dup)
    return True


def _netns(holders: Sequence[HolderInfo], proc: str) -> int:
    for h in holders:
        ns = procfs.netns_of(h.pid, proc)
        if ns is not None:
            return ns
    return 0


def _with_guard(o: Observed, g: GuardState) -> Observed:
    return Observed(o.cookie, o.proto, o.family, o.local_addr, o.port, o.netns, o.holders, g)


def _unreadable(o: Observed, why: str) -> Observed:
    return Observed(o.cookie, o.proto, o.family, o.local_addr, o.port, o.netns, o.holders, o.guard, why)


def describe(o: Observed) -> str:
    """``tcp 0.0.0.0:22 (pid 812 sshd)`` for logs and status lines."""
    who = ", ".join(f"pid {h.pid} {h.argv0 or h.comm}" for h in o.holders[:3])
    return f"{o.proto} {o.local_text()}" + (f" ({who})" if who else "")

