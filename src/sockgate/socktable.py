"""``sockgate ls``: every socket with its holders, its exposure and its guard, as rows.

The sockets and their holders come from the one inventory (``sockgate.inventory.sockets``:
the kernel's socket dump joined by inode with the ``/proc/PID/fd`` links), the one ``attach``
selects from too; process names and users are added here, through psutil. Each socket's
classic BPF filter is read back through our own duplicate of one holder's descriptor
(``pidfd_getfd``) and recognised by the kernel seam (``Kernel.read``, the reading ``guard_of``
uses too): a sockgate marker whose digest is not the digest of the code read back is shown as
*modified*, never as the service it names.

Work is done in the order that keeps a big host fast: the kernel is asked only for the states
wanted (listening/bound by default), rows are filtered by protocol, port, pid, user before any
filter is read, and filters are read only for the rows that will be shown, with one pidfd per
process reused for all its sockets.

A socket held by several processes (a listener inherited across fork) is one row listing every
holder; its filter is read through the first holder that lets us. The guard is never guessed:
when the holder's descriptors cannot be read (another user's process, without root) it is
``unknown (no permission)``; a socket no process holds (TIME-WAIT, a connection not yet
accepted) is ``unknown (no holder found)``.

The row-building functions (``exposure_of``, ``wanted``, ``matches``,
``Row.to_json``) are pure and tested without sockets; ``list_sockets`` does the I/O.
"""

from __future__ import annotations

import errno
import functools
import grp
import ipaddress
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from typing import Any, Callable, Final, Iterable, Sequence

from sockgate import inventory
from sockgate.errors import AdapterError, UsageError
from sockgate.intlist import is_number
from sockgate.inventory import Holder
from sockgate.kernel import GuardInfo, Kernel, default_kernel
from sockgate.linux import pidfd, sockdiag
from sockgate.linux.sockdiag import TCP_CLOSE, TCP_LISTEN, Sock, ip_port

KINDS = ("tcp", "udp", "raw", "icmp", "unix")
_NETID = {("unix", "stream"): "u_str", ("unix", "dgram"): "u_dgr", ("unix", "seqpacket"): "u_seq"}

SOCKGATE: Final = "sockgate"
UNKNOWN: Final = "unknown"
NO_PERMISSION = "no permission"
NO_HOLDER = "no holder found"


# --- pure: guard, exposure, selection -------------------------------------------------------


@dataclass(frozen=True)
class PathInfo:
    """What ``stat`` says about a Unix socket's path (None fields: not known)."""

    exists: bool
    inode: int | None = None
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Exposure:
    kind: str  # loopback | address | any | connected | path | abstract | unnamed
    text: str
    mode: str | None = None
    owner: str | None = None
    group: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "mode": self.mode, "owner": self.owner, "group": self.group}


def is_bound_state(sock: Sock) -> bool:
    """Listening (TCP, Unix stream/seqpacket) or bound and unconnected (UDP, raw, ICMP, Unix)."""
    return sock.state == TCP_LISTEN or sock.state == TCP_CLOSE


def exposure_of(sock: Sock, path: PathInfo | None = None, ifname: str | None = None) -> Exposure:
    """Who can reach ``sock``: a pure function of the socket and what ``stat`` says of its path."""
    if not is_bound_state(sock):
        return Exposure("connected", f"connected to {peer_text(sock) or 'a peer'}")
    if sock.family == "unix":
        return _unix_exposure(sock, path)
    return _inet_exposure(sock.family, sock.local_addr or "0.0.0.0", sock.v6only, ifname)


@functools.lru_cache(maxsize=4096)
def _inet_exposure(family: str, local: str, v6only: bool | None, ifname: str | None) -> Exposure:
    # cached: a host's sockets share few local addresses, and parsing one costs microseconds
    on = f" on {ifname}" if ifname else ""
    addr = ipaddress.ip_address(local)
    if addr.is_unspecified:
        if family == "ipv6" and v6only is False:
            return Exposure("any", f"every interface (IPv6 and IPv4){on}")
        return Exposure("any", f"every {'IPv6 ' if family == 'ipv6' else ''}interface{on}")
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    if addr.is_loopback or (mapped is not None and mapped.is_loopback):
        return Exposure("loopback", f"loopback only{on}")
    return Exposure("address", f"one address ({addr}){on}")


def _unix_exposure(sock: Sock, path: PathInfo | None) -> Exposure:
    name = sock.unix_name
    if name is None:
        return Exposure("unnamed", "unnamed (reachable only through a passed descriptor)")
    if sock.unix_vfs is None:
        return Exposure("abstract", "abstract (any process in this network namespace)")
    if path is None or path.error is not None:
        why = path.error if path is not None and path.error else "not checked"
        return Exposure("path", f"path, mode unknown ({why})")
    if not path.exists:
        return Exposure("path", "path removed (unreachable by name)")
    if sock.unix_vfs[1] and path.inode is not None and path.inode != sock.unix_vfs[1]:
        return Exposure("path", "path now names another file (unreachable by name)")
    mode = f"{stat.S_IMODE(path.mode or 0):04o}"
    return Exposure("path", f"path mode {mode} {path.owner}:{path.group}", mode, path.owner, path.group)


def netid(sock: Sock) -> str:
    """ss-style protocol column: tcp, tcp6, udp, udp6, raw, raw6, icmp, icmp6, u_str, u_dgr, u_seq."""
    if sock.family == "unix":
        return _NETID.get(("unix", sock.type), "unix")
    return sock.proto + ("6" if sock.family == "ipv6" else "")


def peer_text(sock: Sock) -> str | None:
    if sock.family == "unix":
        return f"socket {sock.peer_inode}" if sock.peer_inode else None
    if not sock.peer_port and sock.peer_addr in (None, "0.0.0.0", "::"):
        return None
    return ip_port(sock.peer_addr, sock.peer_port)


def holder_json(h: Holder) -> dict[str, Any]:
    return {"pid": h.pid, "name": h.name, "user": h.user, "fds": list(h.fds)}


@dataclass(frozen=True)
class Row:
    sock: Sock
    holders: tuple[Holder, ...]
    user: str | None
    exposure: Exposure
    guard: GuardInfo

    def to_json(self) -> dict[str, Any]:
        s = self.sock
        return {
            "netid": netid(s),
            "proto": s.proto,
            "family": s.family,
            "type": s.type,
            "state": s.state_name,
            "local": s.local_text(),
            "address": s.local_addr,
            "port": s.local_port,
            "path": s.unix_name,
            "peer": peer_text(s),
            "inode": s.inode,
            "uid": s.uid,
            "user": self.user,
            "processes": [holder_json(h) for h in self.holders],
            "exposure": self.exposure.to_json(),
            "guard": self.guard.to_json(),
        }

    def process_text(self, limit: int = 3) -> str:
        """``pid/name`` of each holder; ``?`` when holders may exist but we may not see them."""
        if not self.holders:
            return "?" if self.guard.reason == NO_PERMISSION else "-"
        shown = [f"{h.pid}/{h.name}" for h in self.holders[:limit]]
        more = len(self.holders) - limit
        return ",".join(shown) + (f" +{more}" if more > 0 else "")


@dataclass(frozen=True)
class Selection:
    """What ``sockgate ls`` was asked for. Empty ``kinds`` means every kind."""

    kinds: frozenset[str] = frozenset()
    all: bool = False
    port: int | None = None
    pid: int | None = None
    user: str | None = None
    unguarded: bool = False

    @property
    def effective_kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if not self.kinds or k in self.kinds)

    def state_mask(self) -> int:
        return sockdiag.ALL_STATES if self.all else (1 << TCP_LISTEN) | (1 << TCP_CLOSE)


def wanted(sock: Sock, sel: Selection) -> bool:
    """Kernel-side facts only: listening/bound unless ``-a``, and the port filter."""
    if not sel.all:
        if not is_bound_state(sock):
            return False
        if sock.family == "unix" and sock.state == TCP_CLOSE and sock.unix_name is None:
            return False  # an unnamed, unconnected Unix socket is bound to nothing
        if sock.proto == "tcp" and sock.state != TCP_LISTEN:
            return False  # a TCP socket that is bound but neither listening nor connected
    if sel.port is not None and sock.local_port != sel.port:
        return False
    return True


def selected_by_process(sock: Sock, holders: Sequence[Holder], user: str | None, sel: Selection) -> bool:
    """The process-side filters: ``--pid`` and ``--user`` (name or numeric uid)."""
    if sel.pid is not None and all(h.pid != sel.pid for h in holders):
        return False
    if sel.user is not None:
        uid = None if sock.uid is None else str(sock.uid)
        if sel.user not in (user, uid):
            return False
    return True


def check_selection(sel: Selection, getpwnam: Callable[[str], Any] = pwd.getpwnam) -> None:
    """Refuse what can only be a mistake: a port out of range, a user name nobody has (a typo
    would otherwise list nothing, as if that user had no sockets)."""
    if sel.port is not None and not 0 <= sel.port < 65536:
        raise UsageError(f"--port must be 0-65535, got {sel.port}")
    if sel.user is not None and not is_number(sel.user):
        try:
            getpwnam(sel.user)
        except KeyError:
            raise UsageError(f"--user {sel.user!r}: no such user (give a user name or a numeric uid)") from None


def sort_key(sock: Sock) -> tuple[int, int, str, int, str]:
    return (KINDS.index(sock.proto), 0 if sock.family != "ipv6" else 1, sock.local_addr or "", sock.local_port or 0, sock.unix_name or "")


# --- I/O: gather and join -----------------------------------------------------------------------


def list_sockets(sel: Selection, *, proc: str = inventory.PROC) -> list[Row]:
    """The rows ``sockgate ls`` shows for ``sel``, sorted by protocol, address and port."""
    check_selection(sel)
    users: dict[int, str] = {}
    kinds = sel.effective_kinds
    scan = inventory.sockets(kinds, dict.fromkeys(kinds, sel.state_mask()), proc=proc, where=lambda s: wanted(s, sel))
    procs: dict[int, tuple[str, str | None]] = {}
    staged = []
    for f in sorted(scan.found, key=lambda f: sort_key(f.sock)):
        s, hs = f.sock, tuple(_named(h, procs) for h in f.holders)
        user = _user_name(users, s.uid) if s.uid is not None else (hs[0].user if hs else None)
        if selected_by_process(s, hs, user, sel):
            staged.append((s, hs, user))
    guards = read_guards([(s, hs) for s, hs, _ in staged], bool(scan.denied))
    rows = []
    for s, hs, user in staged:
        g = guards[id(s)]
        if sel.unguarded and g.state == SOCKGATE:
            continue
        rows.append(Row(s, hs, user, exposure_of(s, _path_info(s), _ifname(s.ifindex)), g))
    return rows


def _named(h: Holder, procs: dict[int, tuple[str, str | None]]) -> Holder:
    if h.pid not in procs:
        procs[h.pid] = _process_info(h.pid)
    name, user = procs[h.pid]
    return Holder(h.pid, name, user, h.fds, h.argv0)  # not dataclasses.replace: 3 µs a row


def _process_info(pid: int) -> tuple[str, str | None]:
    import psutil  # ~12 ms of imports, paid only by the callers that name a socket's holders

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return p.name(), p.username()
    except (psutil.Error, KeyError):
        return "?", None


def _user_name(cache: dict[int, str], uid: int) -> str:
    if uid not in cache:
        cache[uid] = _name(pwd.getpwuid, uid)
    return cache[uid]


def _path_info(s: Sock) -> PathInfo | None:
    if s.family != "unix" or s.unix_vfs is None or not s.unix_name:
        return None
    try:
        st = os.stat(s.unix_name)
    except FileNotFoundError:
        return PathInfo(False)
    except OSError as e:
        return PathInfo(False, error=e.strerror)
    return PathInfo(True, st.st_ino, st.st_mode, _name(pwd.getpwuid, st.st_uid), _name(grp.getgrgid, st.st_gid))


def _name(lookup: Callable[[int], Any], num: int) -> str:
    try:
        return str(lookup(num)[0])
    except KeyError:
        return str(num)


def _ifname(index: int) -> str | None:
    if not index:
        return None
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"


def read_guards(
    items: Iterable[tuple[Sock, Sequence[Holder]]], some_denied: bool
) -> dict[int, GuardInfo]:
    """The guard of each socket (keyed by ``id(sock)``); one pidfd per process, reused."""
    out: dict[int, GuardInfo] = {}
    kernel = default_kernel()
    with pidfd.PidfdCache() as pidfds:
        for s, hs in items:
            # inode 0 (TIME-WAIT, a request socket): no descriptor exists for anyone to hold
            out[id(s)] = _guard_of(kernel, hs, some_denied and s.inode != 0, pidfds)
    return out


def _guard_of(kernel: Kernel, hs: Sequence[Holder], some_denied: bool, pidfds: pidfd.PidfdCache) -> GuardInfo:
    if not hs:
        return GuardInfo(UNKNOWN, reason=NO_PERMISSION if some_denied else NO_HOLDER)
    errors: list[AdapterError] = []
    for h in hs:
        try:
            dup = pidfds.dup(h.pid, h.fds[0])
        except AdapterError as e:
            errors.append(e)
            continue
        try:
            return kernel.read(dup, lock=False)
        except AdapterError as e:
            errors.append(e)
        finally:
            os.close(dup)
    if any(e.errno in (errno.EPERM, errno.EACCES) for e in errors):
        return GuardInfo(UNKNOWN, reason=NO_PERMISSION)
    return GuardInfo(UNKNOWN, reason=f"cannot read: {errors[-1]}" if errors else NO_HOLDER)
