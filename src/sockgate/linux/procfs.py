"""What ``/proc`` says about processes: who holds which socket, their names, their namespace.

Done by hand, and why: each answer is one ``readlink``, ``stat`` or short ``read`` under
``/proc/PID``. psutil's ``net_connections`` does the holder walk too, but re-parses every
connection table on each call and drops the inode and the Unix socket type the inventory needs;
its ``name()`` completes a truncated comm from the command line, which is not the pair (comm,
argv[0]) libwrap and the agent match on.

Everything here reads files any process can rewrite or remove: a process may exit between two
reads (its directory vanishes: the reader answers "nothing", never raises), its pid may be
reused, and its names are bytes chosen by whoever started it (a newline, a terminal escape,
bytes that are not UTF-8). Names are decoded with ``os.fsdecode`` so they round-trip to the
exact bytes (``os.fsencode``); callers escape them before printing.

Processes whose ``/proc/PID/fd`` we may not read (another user's, without CAP_SYS_PTRACE) are
returned as *denied*: their sockets have unknown holders, and callers must say so rather than
guess.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping

from sockgate.errors import AdapterError
from sockgate.intlist import is_number

PROC = "/proc"
CAP_SYS_PTRACE = 19  # <uapi/linux/capability.h>
MAX_ARG_STRLEN = 32 * 4096  # <uapi/linux/binfmts.h>: the longest one argument may be
_SOCKET_LINK = "socket:["


@dataclass(frozen=True)
class HolderIndex:
    """socket inode → ((pid, fd), ...), and the pids whose descriptors we may not read."""

    by_inode: Mapping[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    denied: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Names:
    """A process's names: ``comm`` (/proc/PID/comm, at most 15 bytes, settable by the process)
    and the basename of ``argv[0]`` (None when the command line is empty: a kernel thread, a
    zombie, or a process that cleared it)."""

    comm: str | None
    argv0: str | None


def holders(proc: str = PROC, only_pids: Iterable[int] | None = None) -> HolderIndex:
    """Who holds which socket: ``/proc/PID/fd/N → socket:[INODE]`` for every process."""
    by_inode: dict[int, list[tuple[int, int]]] = {}
    denied: set[int] = set()
    pids = list(only_pids) if only_pids is not None else all_pids(proc)
    for pid in pids:
        try:
            entries = list(os.scandir(f"{proc}/{pid}/fd"))
        except PermissionError:
            denied.add(pid)
            continue
        except OSError:  # exited meanwhile
            continue
        for entry in entries:  # the hot loop of `ls` on a busy host: kept inline
            try:
                link = os.readlink(entry.path)
            except OSError:  # closed meanwhile
                continue
            if link.startswith(_SOCKET_LINK):  # the kernel writes "socket:[INODE]"
                try:
                    by_inode.setdefault(int(link[8:-1]), []).append((pid, int(entry.name)))
                except ValueError:  # not the kernel's words (a /proc that is not procfs)
                    continue
    return HolderIndex({k: tuple(v) for k, v in by_inode.items()}, frozenset(denied))


def still_holds(pid: int, fd: int, inode: int, proc: str = PROC) -> bool:
    """Whether ``pid``'s ``fd`` still is socket ``inode`` (the process may have closed it,
    exited, or its pid may name another process by now)."""
    return _socket_inode(f"{proc}/{pid}/fd/{fd}") == inode


def _socket_inode(link: str) -> int | None:
    try:
        target = os.readlink(link)
    except OSError:
        return None
    if not target.startswith(_SOCKET_LINK) or not target.endswith("]"):
        return None
    digits = target[len(_SOCKET_LINK) : -1]
    return int(digits) if is_number(digits) else None


def all_pids(proc: str = PROC) -> list[int]:
    try:
        return [int(n) for n in os.listdir(proc) if is_number(n)]
    except OSError as e:
        raise AdapterError(f"list processes in {proc}: {e.strerror}", errno=e.errno, target=proc) from e


def names(pid: int, proc: str = PROC) -> Names | None:
    """``pid``'s comm and argv[0] basename; None when the process is gone."""
    comm = _read(f"{proc}/{pid}/comm", 64)
    cmdline = _read(f"{proc}/{pid}/cmdline", MAX_ARG_STRLEN, until=b"\0")
    if comm is None and cmdline is None:
        return None
    if comm is not None and comm.endswith(b"\n"):  # the kernel's line end; a name may hold others
        comm = comm[:-1]
    argv0 = cmdline.split(b"\0", 1)[0].rsplit(b"/", 1)[-1] if cmdline else b""
    return Names(os.fsdecode(comm) if comm is not None else None, os.fsdecode(argv0) if argv0 else None)


@dataclass(frozen=True)
class Identity:
    """Who a process runs as and what it executes, the facts a name cannot fake: its effective
    uid (/proc/PID/status), the target of /proc/PID/exe (read as a link, never resolved as a
    path) and whether the file it executes — stat'ed through that link, so the very inode, not
    whatever the path names now — is root's and writable by root only."""

    euid: int | None
    exe: str | None
    exe_root_owned: bool


def identity(pid: int, proc: str = PROC) -> Identity:
    """``pid``'s ``Identity``; unreadable parts are None / False (never trusted)."""
    return Identity(_euid(pid, proc), _exe(pid, proc), _exe_root_owned(pid, proc))


def _euid(pid: int, proc: str) -> int | None:
    status = _read(f"{proc}/{pid}/status", 1 << 16)
    for line in (status or b"").splitlines():
        if line.startswith(b"Uid:"):
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                return int(fields[2])
    return None


def _exe(pid: int, proc: str) -> str | None:
    try:
        return os.readlink(f"{proc}/{pid}/exe")
    except OSError:
        return None


def _exe_root_owned(pid: int, proc: str) -> bool:
    try:
        st = os.stat(f"{proc}/{pid}/exe")
    except OSError:
        return False
    return st.st_uid == 0 and not st.st_mode & 0o022


def _read(path: str, limit: int, until: bytes | None = None) -> bytes | None:
    """Up to ``limit`` bytes of a /proc file, stopping early once ``until`` was read; None when
    it cannot be read (the process is gone, or hidden from us)."""
    chunks: list[bytes] = []
    size = 0
    try:
        with open(path, "rb", buffering=0) as f:
            while size < limit:
                chunk = f.read(min(4096, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if until is not None and until in chunk:
                    break
    except OSError:
        return None
    return b"".join(chunks)


MAPS_LIMIT = 64 << 20  # bytes of /proc/PID/maps read at most: 65530 maps (vm.max_map_count) of long names
_LIBWRAP = b"libwrap.so"
_DELETED = b" (deleted)"


@dataclass(frozen=True)
class Libwrap:
    """Whether a process maps libwrap: ``mapped`` (a file named ``libwrap.so*``, root's and
    writable by root only, checked on the very inode mapped), ``absent``, ``untrusted`` (a
    ``libwrap.so*`` that is someone else's file, or whose inode could not be checked) or
    ``unknown`` (the map could not be read whole: gone, hidden, or longer than ``MAPS_LIMIT``).
    ``path``: the library's name as the map gives it; ``why``: for unknown and untrusted."""

    state: Literal["mapped", "absent", "untrusted", "unknown"]
    path: str | None = None
    why: str | None = None


def libwrap(pid: int, proc: str = PROC) -> Libwrap:
    """Whether ``pid`` maps libwrap (/proc/PID/maps, read line by line up to ``MAPS_LIMIT``).

    The names in the map are the process's to choose (any file may be called libwrap.so.0),
    so the file mapped is stat'ed through /proc/PID/map_files (the very mapping), else by its
    name with the map's inode compared, and taken only when root owns it and only root may
    write it. An exited process's map reads empty: that is ``unknown``, never ``absent``. The
    caller holds a pidfd across the read to know the pid still named the same process."""
    try:
        f = open(f"{proc}/{pid}/maps", "rb")
    except OSError as e:
        return Libwrap("unknown", why=f"cannot read its memory map: {e.strerror}")
    seen = 0
    untrusted: Libwrap | None = None
    with f:
        try:
            for line in f:
                seen += len(line)
                if seen > MAPS_LIMIT:
                    return Libwrap("unknown", why=f"its memory map is longer than {MAPS_LIMIT >> 20} MiB")
                found = _libwrap_line(pid, proc, line)
                if found is not None and found.state == "mapped":
                    return found
                untrusted = untrusted or found
        except OSError as e:
            return Libwrap("unknown", why=f"cannot read its memory map: {e.strerror}")
    if seen == 0:
        return Libwrap("unknown", why="its memory map is empty (the process exited)")
    return untrusted or Libwrap("absent")


def _libwrap_line(pid: int, proc: str, line: bytes) -> Libwrap | None:
    """One map line (``start-end perms offset dev inode path``) naming a libwrap.so*, judged."""
    fields = line.rstrip(b"\n").split(maxsplit=5)
    if len(fields) < 6:
        return None
    path = fields[5].removesuffix(_DELETED)
    if not path.rsplit(b"/", 1)[-1].startswith(_LIBWRAP):
        return None
    name = os.fsdecode(path)
    try:
        st = os.stat(f"{proc}/{pid}/map_files/{_range_name(fields[0])}")
    except (OSError, ValueError):  # map_files takes CAP_SYS_ADMIN: the name, if it still is the inode mapped
        try:
            st = os.stat(path)
        except OSError as e:
            return Libwrap("untrusted", name, f"{name}: {e.strerror}")
        if not fields[4].isdigit() or st.st_ino != int(fields[4]):
            return Libwrap("untrusted", name, f"{name} is no longer the file mapped")
    if st.st_uid != 0 or st.st_mode & 0o022:
        return Libwrap("untrusted", name, f"{name} is not root's, or others may write it")
    return Libwrap("mapped", name)


def _range_name(field: bytes) -> str:
    """A map's ``start-end`` as its /proc/PID/map_files entry is named (``%lx-%lx``: the map
    pads to 8 digits, the directory does not)."""
    start, _, end = field.partition(b"-")
    return f"{int(start, 16):x}-{int(end, 16):x}"


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


def netns_of(pid: int, proc: str = PROC) -> int | None:
    """The inode of ``pid``'s network namespace; None when it cannot be read."""
    try:
        return os.stat(f"{proc}/{pid}/ns/net").st_ino
    except OSError:
        return None


_NET_LINK = "net:["
NETNS_MOUNTS = ("/run/netns", "/var/run/netns")  # where ``ip netns`` keeps namespaces alive


def live_netns(proc: str = PROC, mounts: Iterable[str] = NETNS_MOUNTS) -> set[int] | None:
    """The nsfs inodes of every network namespace something holds: a thread's namespace, a
    descriptor open on one, a bind mount ``ip netns`` made. None when we may not see every
    process (then no namespace can be called gone). A namespace held only by a socket another
    namespace's process keeps is not seen."""
    if not sees_every_process(f"{proc}/self/status"):
        return None
    inodes: set[int] = set()
    for pid in all_pids(proc):
        for tid in _listdir(f"{proc}/{pid}/task"):
            _stat_into(inodes, f"{proc}/{pid}/task/{tid}/ns/net")
        for fd in _listdir(f"{proc}/{pid}/fd"):
            try:
                link = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith(_NET_LINK) and link.endswith("]") and is_number(link[len(_NET_LINK):-1]):
                inodes.add(int(link[len(_NET_LINK):-1]))
    for d in mounts:
        for name in _listdir(d):
            _stat_into(inodes, f"{d}/{name}")
    return inodes


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _stat_into(inodes: set[int], path: str) -> None:
    try:
        inodes.add(os.stat(path).st_ino)
    except OSError:
        pass


def monotonic_offset_ns(path: str = "/proc/self/timens_offsets") -> int:
    """How far this process's CLOCK_MONOTONIC is ahead of the kernel's own (its time
    namespace's ``monotonic`` offset, time_namespaces(7)); 0 without time namespaces. eBPF
    programs stamp and compare ``bpf_ktime_get_ns()``, which no time namespace offsets: a
    ban expiry computed from this process's clock must be moved by this much."""
    raw = _read(path, 4096)
    if raw is None:
        return 0
    for line in raw.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("monotonic", "1"):  # the clock by name, or CLOCK_MONOTONIC's id
            try:
                return int(parts[1]) * 1_000_000_000 + int(parts[2])
            except ValueError:
                return 0
    return 0


def pid_exists(pid: int, proc: str = PROC) -> bool:
    """Whether ``pid`` is a process (a thread id is not, though /proc answers for it too)."""
    if pid <= 0:
        return False
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1]) == pid
    except PermissionError:
        return True
    except (OSError, ValueError, IndexError):
        return False
    return False


def no_process(pid: int) -> AdapterError:
    return AdapterError(f"no such process: pid {pid}", errno=errno.ESRCH, target=f"pid {pid}")
