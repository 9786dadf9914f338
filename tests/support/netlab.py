"""Network namespaces for kernel tests: real "other hosts", torn down even on failure.

``Netns`` wraps one namespace made with ``ip netns add`` (iproute2): run commands in it,
create sockets in it from this process (a short-lived thread does ``setns(2)``; the socket
keeps its namespace afterwards), and delete it. ``Lab`` joins a server namespace and a client
namespace with a veth pair, IPv4 198.18.0.0/24 (RFC 2544 benchmarking range) and IPv6
fd5b:5347::/64 (ULA), so nothing outside the machine is ever addressed. Names start with
``sgt`` and a random suffix; ``cleanup_stale()`` removes leftovers of crashed runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
# A client address outside 198.18.0.0/16 (``Lab.add_client_addresses``), so that it does not
# become the preferred source towards the server: a second "host" beside the client's 198.18.0.2.
OTHER_HOST = "198.19.7.7"
CLONE_NEWNET = 0x40000000  # <linux/sched.h>
_libc = ctypes.CDLL(None, use_errno=True)


def can_netns() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not os.path.exists("/usr/sbin/ip") and not os.path.exists("/sbin/ip") and not _which("ip"):
        return "needs iproute2 (ip)"
    return None


def _which(cmd: str) -> str | None:
    from shutil import which

    return which(cmd)


def sh(*argv: str, check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=timeout, **kw)


def inside(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has entered the namespace ``name`` (``ip netns``); sockets
    it creates live there."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def cleanup_stale(prefix: str = "sgt") -> None:
    out = sh("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix):
            sh("ip", "netns", "del", name, check=False)


class Netns:
    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"sgt{secrets.token_hex(4)}"
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def argv(self, *cmd: str) -> list[str]:
        """The argv that runs ``cmd`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return sh(*self.argv(*cmd), check=check, timeout=timeout, **kw)

    def popen(self, *cmd: str, **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(*cmd), **kw)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread that has entered this namespace; sockets it creates live here."""
        return inside(self.name, fn)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
        return self.call(lambda: socket.socket(family, type, proto))

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


@dataclass
class Lab:
    """A server namespace and a client namespace joined by veth.

    server: 198.18.0.1, fd5b:5347::1      client: 198.18.0.2 (+ extra), fd5b:5347::2 (+ extra)
    """

    server: Netns
    client: Netns
    server_v4: str = "198.18.0.1"
    client_v4: str = "198.18.0.2"
    server_v6: str = "fd5b:5347::1"
    client_v6: str = "fd5b:5347::2"
    extra: list[str] = field(default_factory=list)

    def add_client_addresses(self, addrs: Sequence[str]) -> None:
        """More source addresses on the client side (each a distinct "host"), no DAD delay."""
        batch = []
        for a in addrs:
            ip = ipaddress.ip_address(a)
            plen = 64 if ip.version == 6 else 16
            batch.append(f"address add {a}/{plen} dev veth-c" + (" nodad" if ip.version == 6 else ""))
            self.extra.append(a)
        if batch:
            sh("ip", "-n", self.client.name, "-batch", "-", input="\n".join(batch) + "\n")

    def exchange(self, src: str, port: int, timeout: float, send: bytes = b"", size: int = 64) -> bytes | None:
        """From ``src`` in the client namespace to the server's ``port`` (IPv4): connect, send
        ``send``, and the first bytes back (at most ``size``); None when the connect times out
        (a dropped SYN)."""
        def go() -> bytes | None:
            with socket.socket() as c:
                c.bind((src, 0))
                c.settimeout(timeout)
                try:
                    c.connect((self.server_v4, port))
                except TimeoutError:
                    return None
                c.sendall(send)
                return c.recv(size)

        return self.client.call(go)

    def delete(self) -> None:
        self.client.delete()
        self.server.delete()


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    """A fresh two-namespace lab; deleted on exit, whatever happens."""
    srv = Netns()
    cli = None
    try:
        cli = Netns()
        sh("ip", "link", "add", "veth-s", "netns", srv.name, "type", "veth", "peer", "name", "veth-c", "netns", cli.name)
        # 198.18.0.0/15: the server's /16 route covers every extra client address made later.
        srv.ip("address", "add", "198.18.0.1/15", "dev", "veth-s")
        cli.ip("address", "add", "198.18.0.2/15", "dev", "veth-c")
        srv.ip("address", "add", "fd5b:5347::1/64", "dev", "veth-s", "nodad")
        cli.ip("address", "add", "fd5b:5347::2/64", "dev", "veth-c", "nodad")
        srv.ip("link", "set", "veth-s", "up")
        cli.ip("link", "set", "veth-c", "up")
        yield Lab(server=srv, client=cli)
    finally:
        if cli is not None:
            cli.delete()
        srv.delete()


def dual_stack_server(kind: int) -> socket.socket:
    """An AF_INET6 socket on every address, IPv4 clients too (``IPV6_V6ONLY`` off): a listener
    for TCP, a UDP socket with room for a burst of datagrams."""
    return v6_server(kind, v6only=False)


def v6_only_server(kind: int) -> socket.socket:
    """As ``dual_stack_server``, IPv6 clients only (``IPV6_V6ONLY`` on)."""
    return v6_server(kind, v6only=True)


def v6_server(kind: int, *, v6only: bool) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind(("::", 0))
    if kind == socket.SOCK_STREAM:
        s.listen(1024)
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return s
