"""The host's sockets (this network namespace) and the processes holding them.

Inventory. TCP and UDP (IPv4, IPv6) and Unix domain sockets come from the kernel's
``sock_diag`` netlink interface (<linux/inet_diag.h>, <linux/unix_diag.h>) through pyroute2's
``DiagSocket``: one dump per family and protocol, asking only for the states wanted, so a host
with ten thousand sockets is listed in a fraction of a second. The one attribute pyroute2 does not
decode is added to its message class: ``UNIX_DIAG_UID`` (the Unix socket owner's uid).

Done by hand, and why:

* raw sockets (``/proc/net/raw``, ``raw6``): the raw diag family is an optional kernel module
  (CONFIG_INET_RAW_DIAG, not built on every kernel — not on this one), and pyroute2 swallows
  the ENOENT the kernel answers when it is missing, so an empty dump cannot be told from a
  missing family. The /proc tables are always present and short.
* ICMP ping sockets (``/proc/net/icmp``, ``icmp6``): no sock_diag family exists for them.
* fallback: when a TCP, UDP or Unix dump comes back empty (udp_diag and unix_diag are optional
  too) or netlink fails, the same /proc table is read instead — empty on a healthy kernel.
* holders: which process holds which socket is found by reading the ``/proc/PID/fd`` links
  (``socket:[INODE]``), one ``readlink`` per descriptor. psutil's ``net_connections`` does
  the same walk but also re-parses every connection table and drops the inode and the Unix
  socket type, which the inventory needs; psutil is used for process names and owners.

Processes whose ``/proc/PID/fd`` we may not read (another user's, without root) are returned
as *denied*: their sockets have unknown holders, and callers must say so rather than guess.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from sockgate.errors import AdapterError

# <net/tcp_states.h>
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_SYN_RECV, TCP_FIN_WAIT1, TCP_FIN_WAIT2 = 1, 2, 3, 4, 5
TCP_TIME_WAIT, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_LISTEN = 6, 7, 8, 9, 10
TCP_CLOSING, TCP_NEW_SYN_RECV = 11, 12
ALL_STATES = (1 << 13) - 1
# state names as ss(8) prints them
STATE_NAMES = {
    TCP_ESTABLISHED: "ESTAB",
    TCP_SYN_SENT: "SYN-SENT",
    TCP_SYN_RECV: "SYN-RECV",
    TCP_FIN_WAIT1: "FIN-WAIT-1",
    TCP_FIN_WAIT2: "FIN-WAIT-2",
    TCP_TIME_WAIT: "TIME-WAIT",
    TCP_CLOSE: "UNCONN",
    TCP_CLOSE_WAIT: "CLOSE-WAIT",
    TCP_LAST_ACK: "LAST-ACK",
    TCP_LISTEN: "LISTEN",
    TCP_CLOSING: "CLOSING",
    TCP_NEW_SYN_RECV: "SYN-RECV",
}
# <linux/unix_diag.h>
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_UID = 0x01, 0x02, 0x04, 0x40
# <linux/net.h>: unix socket types
UNIX_TYPES: dict[int, str] = {1: "stream", 2: "dgram", 5: "seqpacket"}  # SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
# /proc/net/unix columns: <net/af_unix.h> __SO_ACCEPTCON flag, SS_CONNECTED state
_SO_ACCEPTCON = 0x10000
_SS_CONNECTED = 3

PROC = "/proc"


@dataclass(frozen=True)
class Sock:
    """One socket as the kernel lists it. Addresses are text; ports are ints (a raw socket's
    "port" is its IP protocol number, an ICMP ping socket's its echo identifier, as ss shows)."""

    proto: str  # "tcp" | "udp" | "raw" | "icmp" | "unix"
    family: str  # "ipv4" | "ipv6" | "unix"
    type: str  # "stream" | "dgram" | "seqpacket" | "raw"
    state: int  # <net/tcp_states.h> (Unix sockets use the same numbers in sock_diag)
    inode: int
    uid: int | None = None
    local_addr: str | None = None
    local_port: int | None = None
    peer_addr: str | None = None
    peer_port: int | None = None
    unix_name: str | None = None  # a path, or "@name" for the abstract namespace
    unix_vfs: tuple[int, int] | None = None  # (device, inode) of the socket file
    peer_inode: int | None = None
    v6only: bool | None = None
    ifindex: int = 0

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, str(self.state))


@dataclass
class Holders:
    """inode → [(pid, fd)], and the pids whose descriptors we were not allowed to read."""

    by_inode: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    denied: set[int] = field(default_factory=set)


# --- sock_diag through pyroute2 ---------------------------------------------------------


def _diag_classes() -> tuple[Any, Any]:
    from pyroute2.netlink.diag import MarshalDiag, unix_diag_msg  # type: ignore[import-untyped]

    class UnixDiagMsg(unix_diag_msg):  # type: ignore[misc]
        # pyroute2 stops at UNIX_DIAG_SHUTDOWN (6); UNIX_DIAG_UID is 7 (<linux/unix_diag.h>, 5.3+).
        nla_map = tuple(unix_diag_msg.nla_map) + (("UNIX_DIAG_UID", "uint32"),)

    class Marshal(MarshalDiag):  # type: ignore[misc]
        msg_map = {**MarshalDiag.msg_map, socket.AF_UNIX: UnixDiagMsg}

    return UnixDiagMsg, Marshal


def _open_diag() -> Any:
    from pyroute2 import DiagSocket  # type: ignore[import-untyped]

    _, marshal = _diag_classes()
    ds = DiagSocket()
    ds.set_marshal(marshal())
    ds.bind()
    return ds


def _inet_from_diag(msg: Any, proto: str) -> Sock:
    fam = msg["idiag_family"]
    v6only = msg.get_attr("INET_DIAG_SKV6ONLY")
    return Sock(
        proto=proto,
        family="ipv6" if fam == socket.AF_INET6 else "ipv4",
        type="stream" if proto == "tcp" else "dgram",
        state=msg["idiag_state"],
        inode=msg["idiag_inode"],
        uid=msg["idiag_uid"],
        local_addr=msg["idiag_src"],
        local_port=msg["idiag_sport"],
        peer_addr=msg["idiag_dst"],
        peer_port=msg["idiag_dport"],
        v6only=None if v6only is None else bool(v6only),
        ifindex=msg["idiag_if"],
    )


def _unix_from_diag(msg: Any) -> Sock:
    name = msg.get_attr("UNIX_DIAG_NAME")
    vfs = msg.get_attr("UNIX_DIAG_VFS")
    vfs_pair = (vfs["udiag_vfs_dev"], vfs["udiag_vfs_ino"]) if vfs is not None else None
    if name is not None and vfs_pair is None:
        name = "@" + name  # no file behind it: the abstract namespace (pyroute2 drops the NUL)
    peer = msg.get_attr("UNIX_DIAG_PEER")
    return Sock(
        proto="unix",
        family="unix",
        type=UNIX_TYPES.get(msg["udiag_type"], str(msg["udiag_type"])),
        state=msg["udiag_state"],
        inode=msg["udiag_ino"],
        uid=msg.get_attr("UNIX_DIAG_UID"),
        unix_name=name or None,
        unix_vfs=vfs_pair,
        peer_inode=peer or None,
    )


def _dump(ds: Any, family: int, protocol: int, states: int) -> tuple[Any, ...]:
    if family == socket.AF_UNIX:
        show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_UID
        return tuple(ds.get_sock_stats(family=family, states=states, show=show))
    return tuple(ds.get_sock_stats(family=family, protocol=protocol, states=states))


# --- /proc/net tables --------------------------------------------------------------------


def _hex_addr(text: str) -> tuple[str, int]:
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    # each 32-bit word is printed in host byte order (little-endian here)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, words), int(port, 16)


def parse_proc_inet(text: str, proto: str, family: str, states: int) -> list[Sock]:
    """Rows of /proc/net/{tcp,udp,raw,icmp}[6] (``sl local rem st ... uid timeout inode``)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        state = int(f[3], 16)
        if not states & (1 << state):
            continue
        (la, lp), (pa, pp) = _hex_addr(f[1]), _hex_addr(f[2])
        kind = {"tcp": "stream", "udp": "dgram", "icmp": "dgram"}.get(proto, "raw")
        out.append(Sock(proto, family, kind, state, int(f[9]), int(f[7]), la, lp, pa, pp))
    return out


def parse_proc_unix(text: str, states: int) -> list[Sock]:
    """Rows of /proc/net/unix (``Num RefCount Protocol Flags Type St Inode [Path]``)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split(None, 7)
        if len(f) < 7:
            continue
        flags, kind, st = int(f[3], 16), int(f[4], 16), int(f[5], 16)
        state = TCP_LISTEN if flags & _SO_ACCEPTCON else TCP_ESTABLISHED if st == _SS_CONNECTED else TCP_CLOSE
        if not states & (1 << state):
            continue
        name = f[7].strip() if len(f) > 7 else None
        vfs = (0, 0) if name and not name.startswith("@") else None  # a path: the file exists
        out.append(Sock("unix", "unix", UNIX_TYPES.get(kind, str(kind)), state, int(f[6]), unix_name=name, unix_vfs=vfs))
    return out


def _read_proc(name: str, proc: str) -> str:
    try:
        with open(f"{proc}/net/{name}") as fh:
            return fh.read()
    except OSError:
        return ""


# --- the inventory -----------------------------------------------------------------------

_INET = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_FAMILIES = ((socket.AF_INET, "ipv4", ""), (socket.AF_INET6, "ipv6", "6"))


def inventory(kinds: Iterable[str], states: dict[str, int], proc: str = PROC) -> list[Sock]:
    """Sockets of ``kinds`` (tcp, udp, raw, icmp, unix), each in the state mask given for it."""
    kinds = list(kinds)
    out: list[Sock] = []
    ds = None
    try:
        ds = _open_diag()
    except Exception:  # no NETLINK_SOCK_DIAG here: every table comes from /proc
        ds = None
    try:
        for kind in kinds:
            out.extend(_one_kind(ds, kind, states[kind], proc))
    finally:
        if ds is not None:
            ds.close()
    return out


def _one_kind(ds: Any, kind: str, mask: int, proc: str) -> Iterator[Sock]:
    if kind == "unix":
        got = _try_dump(ds, socket.AF_UNIX, 0, mask)
        yield from (map(_unix_from_diag, got) if got else parse_proc_unix(_read_proc("unix", proc), mask))
        return
    for fam, fname, suffix in _FAMILIES:
        got = _try_dump(ds, fam, _INET[kind], mask) if kind in _INET else ()
        if got:
            yield from (_inet_from_diag(m, kind) for m in got)
        else:
            yield from parse_proc_inet(_read_proc(kind + suffix, proc), kind, fname, mask)


def _try_dump(ds: Any, family: int, protocol: int, mask: int) -> tuple[Any, ...]:
    if ds is None:
        return ()
    try:
        return _dump(ds, family, protocol, mask)
    except Exception:  # a diag family the kernel lacks, or a netlink error: use /proc
        return ()


def holders(proc: str = PROC, only_pids: Iterable[int] | None = None) -> Holders:
    """Who holds which socket: ``/proc/PID/fd/N → socket:[INODE]`` for every process."""
    result = Holders()
    pids = list(only_pids) if only_pids is not None else _all_pids(proc)
    for pid in pids:
        try:
            entries = list(os.scandir(f"{proc}/{pid}/fd"))
        except PermissionError:
            result.denied.add(pid)
            continue
        except OSError:  # exited meanwhile
            continue
        for entry in entries:
            try:
                link = os.readlink(entry.path)
            except OSError:
                continue
            if link.startswith("socket:["):
                result.by_inode.setdefault(int(link[8:-1]), []).append((pid, int(entry.name)))
    return result


def _all_pids(proc: str) -> list[int]:
    try:
        return [int(n) for n in os.listdir(proc) if n.isdigit()]
    except OSError as e:
        raise AdapterError(f"list processes in {proc}: {e.strerror}", errno=e.errno, target=proc) from e
