"""Finding sockets to guard: those of a process, those bound to a port, and what an fd is.

The inventory comes from psutil (``Process.net_connections`` and ``net_connections``), which
joins ``/proc/net/{tcp,tcp6,udp,udp6}`` with every process's ``/proc/PID/fd`` links. Only
sockets worth a filter are returned: TCP listeners and unconnected UDP sockets (a filter on
an accepted TCP connection would guard one connection that is already allowed; a connected
UDP socket is a client).

What psutil cannot say is checked on the socket itself, through our duplicate of the
descriptor (``pidfd_getfd``): that an fd really is a socket (``fstat``), its family, type,
local address and whether it listens (``SO_ACCEPTCONN``), and its identity (device and inode
of the socket), so a socket shared by several processes — a listener inherited across
``fork``, as pre-forking servers do — is counted once.

psutil reads the connection tables of *our* network namespace; the sockets of a process in
another namespace are reached by naming the fd (``--pid PID --fd N``), which needs no table.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass

import psutil

from sockgate.errors import AdapterError
from sockgate.linux._errors import translated

SO_ACCEPTCONN = getattr(socket, "SO_ACCEPTCONN", 30)  # <asm-generic/socket.h>

_PROTO_KIND = {"tcp": "tcp", "udp": "udp"}


@dataclass(frozen=True)
class SockRef:
    """A socket as found in a process: where to reach it (pid, fd) and what it is."""

    pid: int
    fd: int
    proto: str  # "tcp" | "udp" | "unix" | "raw" | other socket type names
    local: str  # "127.0.0.1:8080", "[::]:53", a Unix path, or ""
    listening: bool = False
    family: str = ""  # "inet" | "inet6" | "unix" | ...
    shareable: bool = False  # SO_REUSEPORT (or, for UDP, SO_REUSEADDR): others may bind the same address

    def describe(self) -> str:
        where = f" {self.local}" if self.local else ""
        return f"pid {self.pid} fd {self.fd} ({self.proto}{where})"


def _proto(family: int, type_: int) -> str:
    if family in (socket.AF_INET, socket.AF_INET6):
        kinds = {int(socket.SOCK_STREAM): "tcp", int(socket.SOCK_DGRAM): "udp"}
        return kinds.get(int(type_), "raw")
    if family == socket.AF_UNIX:
        return "unix"
    return f"family {family}"


def _family(family: int) -> str:
    names = {int(socket.AF_INET): "inet", int(socket.AF_INET6): "inet6", int(socket.AF_UNIX): "unix"}
    return names.get(int(family), str(int(family)))


def _fmt_addr(family: int, addr: object) -> str:
    if family == socket.AF_INET6 and isinstance(addr, tuple):
        return f"[{addr[0]}]:{addr[1]}"
    if family == socket.AF_INET and isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}"
    if isinstance(addr, bytes):  # abstract Unix socket
        return "@" + addr[1:].decode(errors="replace")
    return str(addr or "")


def _guardable(proto: str, status: str, raddr: object) -> bool:
    """TCP listeners, and UDP sockets that are not connected (a connected one is a client)."""
    return (proto == "udp" and not raddr) or (proto == "tcp" and status == psutil.CONN_LISTEN)


def _no_process(pid: int) -> AdapterError:
    return AdapterError(f"no such process: pid {pid}", errno=errno.ESRCH, target=f"pid {pid}")


CAP_SYS_PTRACE = 19  # <uapi/linux/capability.h>


def sees_every_process(status: str = "/proc/self/status") -> bool:
    """Whether we may read every process's descriptors: that takes CAP_SYS_PTRACE, not uid 0
    (root in a container without the capability sees only its own uid's processes)."""
    try:
        with open(status, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


def _no_permission(what: str) -> AdapterError:
    return AdapterError(
        f"{what}: permission denied (needs root with CAP_SYS_PTRACE, or the same user with ptrace"
        " rights over the process)",
        errno=errno.EPERM,
        target=what,
    )


def of_process(pid: int, proto: str | None = None) -> list[SockRef]:
    """The TCP listeners and UDP sockets of process ``pid`` (optionally one protocol)."""
    try:
        conns = psutil.Process(pid).net_connections(kind=_PROTO_KIND.get(proto or "", "inet"))
    except psutil.NoSuchProcess:
        raise _no_process(pid) from None
    except psutil.AccessDenied:
        raise _no_permission(f"list the sockets of pid {pid}") from None
    out = []
    for c in conns:
        p = _proto(c.family, c.type)
        if c.fd >= 0 and _guardable(p, c.status, c.raddr):
            local = _fmt_addr(c.family, tuple(c.laddr) if c.laddr else "")
            out.append(SockRef(pid, c.fd, p, local, p == "tcp", _family(c.family)))
    return sorted(out, key=lambda r: r.fd)


def on_port(port: int, proto: str = "tcp") -> list[SockRef]:
    """Every TCP listener (or UDP socket) bound to ``port``, in any process.

    Raises ``AdapterError`` when a socket is bound there but its owner cannot be seen (we are
    not allowed to read that process's descriptors), so no socket of a group is missed."""
    try:
        conns = psutil.net_connections(kind=_PROTO_KIND[proto])
    except psutil.AccessDenied:
        raise _no_permission(f"list the sockets on {proto} port {port}") from None
    out = []
    for c in conns:
        p = _proto(c.family, c.type)
        if not c.laddr or c.laddr.port != port or not _guardable(p, c.status, c.raddr):
            continue
        if c.pid is None or c.fd < 0:
            if sees_every_process():  # nobody holds this one
                raise AdapterError(
                    f"{proto} port {port}: a socket there belongs to no process (a kernel socket);"
                    " nothing was changed",
                    errno=errno.ENOENT,
                    target=f"port {port}",
                )
            raise _no_permission(f"{proto} port {port}: a socket's owner")
        out.append(SockRef(c.pid, c.fd, p, _fmt_addr(c.family, tuple(c.laddr)), p == "tcp", _family(c.family)))
    return sorted(out, key=lambda r: (r.pid, r.fd))


def same_address(ref: SockRef) -> list[SockRef]:
    """The other sockets bound to exactly ``ref``'s protocol and local address: with ``ref``,
    an SO_REUSEPORT group, over which the kernel spreads clients. Empty at once for a socket
    that lets nobody share its address (no table is read then); only our network namespace's
    tables are read, so for a process in another namespace the answer is empty too."""
    if not ref.shareable or ":" not in ref.local or _netns(ref.pid) != _netns(os.getpid()):
        return []
    port = int(ref.local.rsplit(":", 1)[1])
    return [r for r in on_port(port, ref.proto) if r.local == ref.local and (r.pid, r.fd) != (ref.pid, ref.fd)]


def _netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pid_exists(pid: int) -> bool:
    return bool(psutil.pid_exists(pid))


def inspect_dup(dup: int, pid: int, fd: int) -> SockRef:
    """What our duplicate ``dup`` of ``pid``'s ``fd`` is; refuses what is not a socket."""
    with translated(f"fstat pid {pid} fd {fd}"):
        st = os.fstat(dup)
    if not stat.S_ISSOCK(st.st_mode):
        raise AdapterError(f"pid {pid} fd {fd} is not a socket", errno=errno.ENOTSOCK, target=f"pid {pid} fd {fd}")
    s = socket.socket(fileno=dup)
    try:
        p = _proto(s.family, s.type)
        try:
            local = _fmt_addr(s.family, s.getsockname())
        except OSError:
            local = ""
        listening = bool(s.getsockopt(socket.SOL_SOCKET, SO_ACCEPTCONN)) if p in ("tcp", "unix") else False
        shareable = p in _PROTO_KIND and bool(
            s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            or (p == "udp" and s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
        )
        return SockRef(pid, fd, p, local, listening, _family(s.family), shareable)
    finally:
        s.detach()


def identity(dup: int) -> tuple[int, int]:
    """(device, inode) of the socket behind ``dup``: equal for the same socket in any process."""
    with translated(f"fstat fd {dup}"):
        st = os.fstat(dup)
    return (st.st_dev, st.st_ino)


def targets(
    pid: int | None = None, fd: int | None = None, port: int | None = None, proto: str | None = None
) -> list[tuple[int, int]]:
    """The (pid, fd) pairs a command names: one fd of a process, a process's TCP listeners and
    UDP sockets, or every socket bound to a port. Refuses (``AdapterError``) when there is none."""
    if pid is not None:
        if not pid_exists(pid):
            raise _no_process(pid)
        if fd is not None:
            return [(pid, fd)]
        found = of_process(pid, proto)
        if not found:
            kind = f"{proto} socket" if proto else "TCP listener or UDP socket"
            raise AdapterError(f"pid {pid} has no {kind} to guard", errno=errno.ENOENT, target=f"pid {pid}")
        return [(r.pid, r.fd) for r in found]
    if port is None:
        raise AdapterError("name a process (pid) or a port")
    found = on_port(port, proto or "tcp")
    if not found:
        what = "TCP listener" if (proto or "tcp") == "tcp" else "UDP socket"
        raise AdapterError(f"no {what} is bound to port {port}", errno=errno.ENOENT, target=f"port {port}")
    return [(r.pid, r.fd) for r in found]
