"""The host's sockets (this network namespace), and the one socket record, ``Sock``.

Inventory. TCP, UDP and raw sockets (IPv4, IPv6) and Unix domain sockets come from the
kernel's ``sock_diag`` netlink interface (<linux/sock_diag.h>, <linux/inet_diag.h>,
<linux/unix_diag.h>): one dump per family and protocol, asking only for the states wanted.

Done by hand, and why:

* the netlink dump and its decoding (``_dump``, ``_inet_dump``, ``_unix_dump``: a request struct,
  a receive loop, ``struct.unpack_from`` over fixed layouts and attributes). pyroute2 (the
  first implementation of this module, no longer a dependency) decodes each message through its
  generic marshal and one asyncio loop iteration per message: about 85 µs per socket here,
  5.7 s for 66,000 sockets against 0.07 s with ``struct``, which broke the 2-second budget of
  `sockgate ls` on a busy host. pyroute2 also swallows the NLMSG_ERROR a kernel without a
  diag family answers, so a missing family could not be told from an empty one; here the
  errno comes back and the /proc fallback below is taken only when it is needed.
* raw sockets on kernels without CONFIG_INET_RAW_DIAG (this one), any family whose diag module
  is missing, and ICMP ping sockets (no sock_diag family exists for them): the
  ``/proc/net/{tcp,udp,raw,icmp}[6]`` and ``/proc/net/unix`` tables.

Which process holds which socket is not asked here: ``linux.procfs.holders`` reads the
``/proc/PID/fd`` links, and ``sockgate.inventory`` joins the two by inode. ``Sock`` is also
what ``linux.fdinfo.describe_fd`` says of one descriptor, so a socket found in the tables and a
socket named by ``--pid --fd`` are the same kind of value. The kernel's socket cookie
(``idiag_cookie``; ``SO_COOKIE`` on a descriptor; ``bpf_get_socket_cookie`` in a program) is
kept: it names one socket for its whole life, in any process and across namespaces, where an
inode names a file that may be reused.

Ending connections. ``destroy_tcp`` aborts the established TCP connections of given local
ports whose peer lies in given prefixes (``SOCK_DESTROY``, Linux 4.5, CONFIG_INET_DIAG_DESTROY,
as ``ss -K``): when a ban lands, the banned source's open connections end too — a filter sees
only new packets, and firewall-based banning famously leaves them open. It, and
``tcp_on_ports`` (what ``cutoff.end_denied`` looks at), send a local-port filter with the
request (``linux/diagbc.py``), so a busy host's other connections are never decoded here.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from sockgate.errors import AdapterError
from sockgate.linux.diagbc import sport_attribute
from sockgate.linux.procfs import PROC

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
    reuse: bool | None = None  # SO_REUSEPORT (UDP: or SO_REUSEADDR); known only from a descriptor
    cookie: int | None = None  # the kernel's socket cookie; None from the /proc/net tables

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, str(self.state))

    @property
    def listening(self) -> bool:
        return self.state == TCP_LISTEN

    def local_text(self) -> str:
        """The local address as ss prints it: ``127.0.0.1:80``, ``[::]:53``, a Unix path or
        ``@name``, ``unnamed``; empty when not known (a descriptor whose name could not be read)."""
        if self.family == "unix":
            return self.unix_name or "unnamed"
        if self.local_port is None:
            return ""
        return ip_port(self.local_addr, self.local_port)

    def describe_at(self, pid: int, fd: int) -> str:
        """``pid 812 fd 6 (tcp 0.0.0.0:80)``: the socket as the holder ``pid`` reaches it."""
        local = self.local_text() if self.family != "unix" or self.unix_name else ""
        where = f" {local}" if local else ""
        return f"pid {pid} fd {fd} ({self.proto}{where})"


def ip_port(addr: str | None, port: int | None) -> str:
    host = addr or "*"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- sock_diag netlink ---------------------------------------------------------------------

# <linux/netlink.h>
NETLINK_SOCK_DIAG = 4
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLATTR = struct.Struct("=HH")  # len, type
# <linux/sock_diag.h>
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21  # Linux 4.5, CONFIG_INET_DIAG_DESTROY; needs CAP_NET_ADMIN
# <linux/inet_diag.h>: struct inet_diag_req_v2 {u8 family, protocol, ext, pad; u32 states;
# struct inet_diag_sockid id (48 bytes, zero: no filter)}
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")
# struct inet_diag_msg {u8 family, state, timer, retrans; be16 sport, dport; be32 src[4], dst[4];
# u32 if; u32 cookie[2]; u32 expires, rqueue, wqueue, uid, inode}
INET_DIAG_MSG = struct.Struct("=BBxx4s16s16sIIIIIIII")
INET_DIAG_SKV6ONLY = 11
# <linux/unix_diag.h>: struct unix_diag_req {u8 family, protocol; u16 pad; u32 states, ino, show;
# u32 cookie[2]}; struct unix_diag_msg {u8 family, type, state, pad; u32 ino; u32 cookie[2]}
UNIX_DIAG_REQ = struct.Struct("=BBxxIII8x")
UNIX_DIAG_MSG = struct.Struct("=BBBxIII")
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_UID = 0, 1, 2, 7
IPPROTO_RAW = 255
_U32 = struct.Struct("=I")
_PORTS = struct.Struct("!HH")
DUMP_TIMEOUT = 10.0


def _dump(family: int, request: bytes, dump: bool = True, kind: int = SOCK_DIAG_BY_FAMILY,
          protocol: int = NETLINK_SOCK_DIAG) -> Iterator[tuple[memoryview, int, int]]:
    """Send one SOCK_DIAG_BY_FAMILY request (a dump, or ``dump=False``: one exact socket, which
    the kernel answers with one message and no NLMSG_DONE); yield (buffer, offset, length) per
    answer. Another ``kind`` (SOCK_DESTROY) asks for an acknowledgement and yields nothing.

    Raises OSError with the kernel's errno (ENOENT: no diag handler for this family, or no
    such socket). ``protocol``: another netlink family's dump (``netaddrs``: NETLINK_ROUTE)."""
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0) | (NLM_F_ACK if kind != SOCK_DIAG_BY_FAMILY and not dump else 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol) as nl:
        nl.settimeout(DUMP_TIMEOUT)
        nl.bind((0, 0))
        nl.send(NLMSGHDR.pack(NLMSGHDR.size + len(request), kind, flags, 1, 0) + request)
        while True:
            data = memoryview(nl.recv(1 << 17))
            off = 0
            while off + NLMSGHDR.size <= len(data):
                length, kind = NLMSGHDR.unpack_from(data, off)[:2]
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    # both carry an int: 0, or -errno (a dump the kernel cannot start ends in
                    # NLMSG_DONE with -ENOENT since Linux 4.x's netlink_dump_done)
                    code = -struct.unpack_from("=i", data, off + NLMSGHDR.size)[0] if length >= 20 else 0
                    if code > 0:
                        raise OSError(code, os.strerror(code))
                    return
                yield data, off + NLMSGHDR.size, length - NLMSGHDR.size
                if not dump:
                    return
                off += (length + 3) & ~3
            if not data:
                return


def netlink_dump(protocol: int, kind: int, request: bytes) -> Iterator[tuple[memoryview, int, int]]:
    """One netlink dump of ``protocol`` (request type ``kind``): (buffer, offset, length) per answer."""
    return _dump(socket.AF_UNSPEC, request, True, kind, protocol)


def netlink_attrs(data: memoryview, off: int, end: int) -> dict[int, memoryview]:
    """The attributes (``struct nlattr``) between ``off`` and ``end``, by type."""
    return _attrs(data, off, end)


def _attrs(data: memoryview, off: int, end: int) -> dict[int, memoryview]:
    out = {}
    while off + NLATTR.size <= end:
        length, kind = NLATTR.unpack_from(data, off)
        if length < NLATTR.size:
            break
        out[kind & 0x3FFF] = data[off + NLATTR.size : off + length]
        off += (length + 3) & ~3
    return out


def _inet_dump(family: int, protocol: int, proto: str, states: int, ports: frozenset[int] | None = None) -> list[Sock]:
    """The sockets of one family and protocol in ``states`` (and, given ``ports``, with one of
    those local ports: a kernel-side filter, ``linux/diagbc.py``, checked again here)."""
    fname = "ipv6" if family == socket.AF_INET6 else "ipv4"
    width = 16 if family == socket.AF_INET6 else 4
    kind = {"tcp": "stream", "udp": "dgram"}.get(proto, "raw")
    out = []
    request = INET_DIAG_REQ_V2.pack(family, protocol, 0, states) + (b"" if ports is None else sport_attribute(ports))
    for data, off, length in _dump(family, request):
        fam, state, raw_ports, src, dst, ifindex, c0, c1, _exp, _rq, _wq, uid, inode = INET_DIAG_MSG.unpack_from(data, off)
        sport, dport = _PORTS.unpack(raw_ports)
        if ports is not None and sport not in ports:
            continue
        v6only = None
        if fam == socket.AF_INET6:
            flag = _attrs(data, off + INET_DIAG_MSG.size, off + length).get(INET_DIAG_SKV6ONLY)
            v6only = None if flag is None else bool(flag[0])
        local = socket.inet_ntop(fam, src[:width])
        peer = socket.inet_ntop(fam, dst[:width])
        # TIME-WAIT and request sockets (inode 0) are no full sockets: the kernel reports uid 0
        owner = uid if inode else None
        out.append(Sock(proto, fname, kind, state, inode, owner, local, sport, peer, dport, None, None, None, v6only, ifindex,
                        cookie=_cookie(c0, c1)))
    return out


def _unix_dump(states: int) -> list[Sock]:
    show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_UID
    out = []
    for data, off, length in _dump(socket.AF_UNIX, UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, states, 0, show)):
        _fam, kind, state, inode, c0, c1 = UNIX_DIAG_MSG.unpack_from(data, off)
        a = _attrs(data, off + UNIX_DIAG_MSG.size, off + length)
        name = _unix_name(a.get(UNIX_DIAG_NAME))
        vfs = a.get(UNIX_DIAG_VFS)
        vfs_pair = None if vfs is None else tuple(reversed(struct.unpack("=II", vfs)))  # (dev, ino)
        peer = _U32.unpack(a[UNIX_DIAG_PEER])[0] if UNIX_DIAG_PEER in a else None
        uid = _U32.unpack(a[UNIX_DIAG_UID])[0] if UNIX_DIAG_UID in a else None
        typ = UNIX_TYPES.get(kind, str(kind))
        out.append(Sock("unix", "unix", typ, state, inode, uid, unix_name=name, unix_vfs=vfs_pair, peer_inode=peer or None,
                        cookie=_cookie(c0, c1)))
    return out


def _cookie(low: int, high: int) -> int:
    """idiag_cookie[2] as the one 64-bit number SO_COOKIE and BPF see (sock_diag_save_cookie:
    the low word first)."""
    return low | high << 32


def unix_socket_file(sock_inode: int) -> tuple[int, int] | None:
    """The ``(st_dev, st_ino)`` of the file a Unix socket is bound to, found by the socket's
    own inode (``fstat(sock).st_ino``, a sockfs inode); None when it has no file (unbound,
    abstract). This is the kernel's word on which file a socket made at ``bind``, the one link
    between a socket and its file that nobody can swap. The kernel gives the inode as 32 bits
    (<linux/unix_diag.h> struct unix_diag_vfs) and the device as its internal dev_t
    (MINORBITS 20, <linux/kdev_t.h>), converted here to what stat(2) returns.

    Raises OSError (ENOENT: no such socket, or no unix_diag in this kernel)."""
    # the cookie, all ones (INET_DIAG_NOCOOKIE, <linux/inet_diag.h>): look the socket up by inode alone
    request = UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, ALL_STATES, sock_inode, UDIAG_SHOW_VFS)[:-8] + b"\xff" * 8
    for data, off, length in _dump(socket.AF_UNIX, request, dump=False):
        vfs = _attrs(data, off + UNIX_DIAG_MSG.size, off + length).get(UNIX_DIAG_VFS)
        if vfs is None:
            return None
        ino, kdev = struct.unpack("=II", vfs)
        return os.makedev(kdev >> 20, kdev & 0xFFFFF), ino
    return None


def _unix_name(raw: memoryview | None) -> str | None:
    """A path, or ``@name`` for the abstract namespace (leading NUL; later NULs shown as @, like ss)."""
    if raw is None or not len(raw):
        return None
    b = bytes(raw)
    if b[0] == 0:
        return "@" + b[1:].replace(b"\0", b"@").decode("utf-8", "backslashreplace")
    return b.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


# --- ending connections (SOCK_DESTROY) ---------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SOCKID = slice(4, 52)  # struct inet_diag_sockid inside struct inet_diag_msg
_REQ_HEAD = struct.Struct("=BBBxI")  # inet_diag_req_v2 up to its sockid


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def destroy_tcp(ports: Iterable[int], prefixes: Iterable[Network], states: int = 1 << TCP_ESTABLISHED,
                addresses: Iterable[Address] | None = None) -> int:
    """End every TCP connection in ``states`` (established by default) whose local port is in
    ``ports`` (and local address in ``addresses``, when given: a service bound to one address
    shares its port with others) and whose peer is in one of ``prefixes`` — a ban that lands
    must also end the banned source's open connections, which a filter on new packets never
    does. Each socket is aborted as ``ss -K`` does (``tcp_abort``: the local side sees
    ECONNABORTED, the peer a reset). ``::ffff:a.b.c.d`` on a dual-stack socket is the IPv4
    address ``a.b.c.d``. Returns how many were ended; one that ended meanwhile is not an error.

    Raises ``AdapterError``: EPERM without CAP_NET_ADMIN, EOPNOTSUPP on a kernel built
    without CONFIG_INET_DIAG_DESTROY."""
    wanted = frozenset(ports)
    banned = _by_length(prefixes)
    local = None if addresses is None else frozenset(_unmapped(a) for a in addresses)
    ended = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        for sockid in _victims(family, wanted, local, banned, states):
            ended += _destroy(family, sockid)
    return ended


def _unmapped(a: Address) -> Address:
    return a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None else a


def _by_length(prefixes: Iterable[Network]) -> dict[tuple[int, int], set[int]]:
    """(version, prefix length) → network addresses: a peer is looked up once per length."""
    out: dict[tuple[int, int], set[int]] = {}
    for n in prefixes:
        out.setdefault((n.version, n.prefixlen), set()).add(int(n.network_address))
    return out


def _banned(peer: Address, banned: dict[tuple[int, int], set[int]]) -> bool:
    peer = _unmapped(peer)
    bits = 32 if peer.version == 4 else 128
    a = int(peer)
    return any(a >> (bits - length) << (bits - length) in nets for (v, length), nets in banned.items() if v == peer.version)


def _victims(family: int, ports: frozenset[int], local: frozenset[Address] | None,
             banned: dict[tuple[int, int], set[int]], states: int) -> list[bytes]:
    width = 16 if family == socket.AF_INET6 else 4
    out = []
    try:
        request = INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, states) + sport_attribute(ports)
        for data, off, _length in _dump(family, request):
            fam, _state, raw_ports, src, dst = INET_DIAG_MSG.unpack_from(data, off)[:5]
            sport, _dport = _PORTS.unpack(raw_ports)
            if sport not in ports or fam != family:
                continue
            if local is not None and _unmapped(ipaddress.ip_address(src[:width])) not in local:
                continue
            if _banned(ipaddress.ip_address(dst[:width]), banned):
                out.append(bytes(data[off + _SOCKID.start : off + _SOCKID.stop]))
    except OSError as e:
        if e.errno == errno.ENOENT:  # no tcp_diag for this family (IPv6 disabled): no sockets
            return []
        raise AdapterError(f"list TCP connections: {os.strerror(e.errno or 0)}", errno=e.errno) from e
    return out


def _destroy(family: int, sockid: bytes) -> int:
    """Abort the one socket ``sockid`` names (its cookie included, so never a newer socket
    that took its addresses); 1 when ended, 0 when it was gone already."""
    request = _REQ_HEAD.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES) + sockid
    try:
        for _ in _dump(family, request, dump=False, kind=SOCK_DESTROY):
            pass
    except OSError as e:
        if e.errno == errno.ENOENT:
            return 0
        hint = {errno.EOPNOTSUPP: "this kernel was built without CONFIG_INET_DIAG_DESTROY",
                errno.EPERM: "operation not permitted (needs CAP_NET_ADMIN)"}.get(e.errno or 0, os.strerror(e.errno or 0))
        raise AdapterError(f"end a TCP connection (SOCK_DESTROY): {hint}", errno=e.errno) from e
    return 1


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
        inode = int(f[9])
        out.append(Sock(proto, family, kind, state, inode, int(f[7]) if inode else None, la, lp, pa, pp))
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
    """A /proc/net table; absent (the family is disabled, e.g. IPv6) means no sockets, but a
    table we cannot read must not pass for an empty one."""
    path = f"{proc}/net/{name}"
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise AdapterError(f"read {path}: {e.strerror}", errno=e.errno, target=path) from e


# --- the inventory -----------------------------------------------------------------------

_INET = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "raw": IPPROTO_RAW}
_FAMILIES = ((socket.AF_INET, "ipv4", ""), (socket.AF_INET6, "ipv6", "6"))


def inventory(kinds: Iterable[str], states: dict[str, int], proc: str = PROC, *,
              ports: Mapping[str, frozenset[int]] | None = None) -> list[Sock]:
    """Sockets of ``kinds`` (tcp, udp, raw, icmp, unix), each in the state mask given for it;
    a kind named in ``ports`` only with one of those local ports (the kernel filters:
    ``linux/diagbc.py``)."""
    out: list[Sock] = []
    for kind in kinds:
        wanted = None if ports is None else ports.get(kind)
        if wanted is None or wanted:
            out.extend(_one_kind(kind, states[kind], proc, wanted))
    return out


# From struct inet_diag_msg (above), only what tells one bound socket from another: idiag_sport
# (its bytes: only tested for zero) and idiag_inode.
_IDENTITY = struct.Struct("=4xH62xI")


def identities(kinds: Iterable[str], states: dict[str, int], proc: str = PROC, *,
               ports: Mapping[str, frozenset[int]] | None = None) -> set[tuple[str, str, int]]:
    """(proto, family, inode) of every socket of ``kinds`` (tcp, udp) in its ``states`` with a
    local port, IPv4 and IPv6 (a kind named in ``ports``: with one of those, as ``inventory``):
    the cheap answer to "is anything new since the last look?". One unpack per message and no
    record built, since a poller asks it every few seconds (10,000 sockets: about a third of
    ``inventory``'s CPU). A family without a diag handler is read from /proc, as ``inventory``
    does."""
    out: set[tuple[str, str, int]] = set()
    for kind in kinds:
        wanted = None if ports is None else ports.get(kind)
        if wanted is not None and not wanted:
            continue
        bc = b"" if wanted is None else sport_attribute(wanted)
        for fam, fname, suffix in _FAMILIES:
            try:
                for data, off, _length in _dump(fam, INET_DIAG_REQ_V2.pack(fam, _INET[kind], 0, states[kind]) + bc):
                    port, inode = _IDENTITY.unpack_from(data, off)
                    if port and (wanted is None or socket.ntohs(port) in wanted):
                        out.add((kind, fname, inode))
            except OSError:  # no tcp_diag / udp_diag here
                out.update((kind, fname, x.inode) for x in parse_proc_inet(_read_proc(kind + suffix, proc), kind, fname,
                                                                           states[kind])
                           if x.local_port and (wanted is None or x.local_port in wanted))
    return out


def tcp_on_ports(ports: Iterable[int], states: int, proc: str = PROC) -> list[Sock]:
    """The TCP sockets, IPv4 and IPv6, in ``states`` whose local port is one of ``ports``: the
    kernel filters (``linux/diagbc.py``), so a busy host's other connections cost nothing."""
    return inventory(["tcp"], {"tcp": states}, proc, ports={"tcp": frozenset(ports)})


def _one_kind(kind: str, mask: int, proc: str, ports: frozenset[int] | None = None) -> list[Sock]:
    if kind == "unix":
        try:
            return _unix_dump(mask)
        except OSError:  # no unix_diag here
            return parse_proc_unix(_read_proc("unix", proc), mask)
    out: list[Sock] = []
    for fam, fname, suffix in _FAMILIES:
        try:
            if kind == "icmp":  # ping sockets have no diag family
                raise OSError(errno.ENOENT, "no diag family for ICMP ping sockets")
            out.extend(_inet_dump(fam, _INET[kind], kind, mask, ports))
        except OSError:  # no tcp_diag / udp_diag / raw_diag here
            out.extend(s for s in parse_proc_inet(_read_proc(kind + suffix, proc), kind, fname, mask)
                       if ports is None or s.local_port in ports)
    return out


# --- socket cookies ------------------------------------------------------------------------


def inet_cookies() -> set[int]:
    """The cookie (``SO_COOKIE``) of every TCP and UDP socket, IPv4 and IPv6, in any state, of
    this network namespace: what a record keyed by cookie may still refer to. Raises OSError
    where there is no tcp_diag/udp_diag (no /proc fallback: /proc/net shows no cookies)."""
    out: set[int] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for proto, protocol in (("tcp", socket.IPPROTO_TCP), ("udp", socket.IPPROTO_UDP)):
            out.update(s.cookie for s in _inet_dump(family, protocol, proto, ALL_STATES) if s.cookie is not None)
    return out
