"""This host's own addresses, in every network namespace this process can enter.

The refusal log names the sources its filters refused, and fail2ban and CrowdSec ban what it
names. A local user who connects from one of the host's own addresses (its public address, a
container bridge's) to a guarded port it is refused on would get that address banned — by
CrowdSec, across a whole fleet. So the log marks such sources (``local source``) and the shipped
filter and parser ignore them; this module says which addresses are the host's.

The addresses come from the kernel's ``RTM_GETADDR`` dump (rtnetlink, <linux/rtnetlink.h>,
<linux/if_addr.h>), IPv4 and IPv6, every interface, through the netlink dump loop of
``linux.sockdiag``: ``IFA_LOCAL`` where the kernel gives one (on a point-to-point link
``IFA_ADDRESS`` is the peer's), else ``IFA_ADDRESS``. Other network namespaces (containers)
are found as the distinct ``/proc/PID/ns/net`` links and dumped from a short-lived thread that
``setns``'s into each (libc through ctypes: ``os.setns`` is Python 3.12); a namespace this
process may not enter (no CAP_SYS_ADMIN) is skipped — its addresses are the ones it cannot see.
Only namespaces owned by this process's user namespace count (``NS_GET_USERNS``): any user may
make a user+network namespace and give its interfaces any address, and an address counted as
the host's is an address whose refusals feed no ban — a user could shield a remote attacker.
Done by hand: the standard library has no address listing (``socket.if_nameindex`` gives names
only, and ``SIOCGIFADDR`` one IPv4 address per interface).
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
import threading
from typing import Iterator, Union

from sockgate.intlist import is_number
from sockgate.linux.procfs import PROC
from sockgate.linux.sockdiag import netlink_attrs, netlink_dump

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

NETLINK_ROUTE = 0  # <linux/netlink.h>
RTM_GETADDR = 22  # <linux/rtnetlink.h>
RTM_NEWADDR = 20
IFADDRMSG = struct.Struct("=BBBBI")  # struct ifaddrmsg: family, prefixlen, flags, scope, index
IFA_ADDRESS, IFA_LOCAL = 1, 2  # <linux/if_addr.h>
CLONE_NEWNET = 0x40000000  # <linux/sched.h>
NS_GET_USERNS = 0xB701  # <linux/nsfs.h>: _IO(0xb7, 0x1)
MAX_NAMESPACES = 1024  # namespaces looked into per call: a bound on the work, not a limit anyone meets

_libc = ctypes.CDLL(None, use_errno=True)


def addresses() -> frozenset[Address]:
    """The addresses of every interface of this thread's network namespace."""
    out: set[Address] = set()
    request = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    for data, off, length in netlink_dump(NETLINK_ROUTE, RTM_GETADDR, request):
        if address := _address(data, off, length):
            out.add(address)
    return frozenset(out)


def _address(data: memoryview, off: int, length: int) -> Address | None:
    if length < IFADDRMSG.size:
        return None
    family = IFADDRMSG.unpack_from(data, off)[0]
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    attrs = netlink_attrs(data, off + IFADDRMSG.size, off + length)
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    if size is None or raw is None or len(raw) != size:
        return None
    return ipaddress.ip_address(bytes(raw))


def host_addresses(proc: str = PROC) -> frozenset[Address]:
    """``addresses()`` of this namespace and of every other one a process under ``proc`` is in
    that this process may enter."""
    out = set(addresses())
    for path in _other_namespaces(proc):
        out |= _in_namespace(path)
    return frozenset(out)


def _other_namespaces(proc: str) -> Iterator[str]:
    """One ``/proc/PID/ns/net`` path per network namespace but ours."""
    try:
        seen = {os.stat(f"{proc}/self/ns/net").st_ino}
        pids = [p for p in os.listdir(proc) if is_number(p)]
    except OSError:
        return
    for pid in pids:
        path = f"{proc}/{pid}/ns/net"
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue  # gone, or hidden from us
        if ino not in seen:
            seen.add(ino)
            yield path
            if len(seen) > MAX_NAMESPACES:
                return


def _in_namespace(path: str) -> frozenset[Address]:
    """``addresses()`` read by a thread that entered the namespace ``path`` names (the empty
    set when it cannot be entered: the process exited, or we may not)."""
    got: list[frozenset[Address]] = []

    def enter_and_read() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not _owned_by_ours(fd) or _libc.setns(fd, CLONE_NEWNET) != 0:
                return
        finally:
            os.close(fd)
        try:
            got.append(addresses())
        except OSError:
            return

    worker = threading.Thread(target=enter_and_read, name="sockgate-netns", daemon=True)
    worker.start()
    worker.join()
    return got[0] if got else frozenset()


def _owned_by_ours(ns_fd: int) -> bool:
    """Whether the namespace ``ns_fd`` belongs to this process's user namespace (not to one a
    user made)."""
    try:
        owner = fcntl.ioctl(ns_fd, NS_GET_USERNS)
    except OSError:
        return False
    try:
        return os.fstat(owner).st_ino == os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return False
    finally:
        os.close(owner)
