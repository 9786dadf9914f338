"""What a proxy runner serves and what it keeps per connection: the plan (a service, its
listen and forward URLs), the settings, the resolved backend address, a connection's record,
and the small socket helpers of the accept path. Split from ``service.py``, whose ``Runner``
uses them, so that each stays a module one can read at once."""

from __future__ import annotations

import _socket
import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from sockgate.errors import UsageError
from sockgate.kernel import BackendChoice
from sockgate.peers import Peer
from sockgate.policy.ir import Service
from sockgate.proxy.admission import Admitted
from sockgate.proxy.lane import SUN_PATH, sockaddr
from sockgate.proxy.limits import source_of
from sockgate.proxy.relay import Relay
from sockgate.urls import SocketURL

@dataclass(frozen=True)
class ProxySettings:
    idle_timeout: float = 300.0
    connect_timeout: float = 5.0
    drain_timeout: float = 10.0
    udp_idle_timeout: float = 30.0
    name_timeout: float = 2.0
    max_connections: int = 20000
    max_connections_per_source: int = 1024  # an IPv4 address or an IPv6 /64 (limits.source_of)
    max_udp_flows: int = 4096
    max_udp_flows_per_source: int = 256
    backend: BackendChoice = "auto"  # the kernel backend of the IP listeners' filters (docs/ebpf.md)
    refusal_interval: float = 60.0  # seconds: the eBPF refusal log's interval (refusallog.py)


@dataclass(frozen=True)
class ProxySpec:
    """What to run: a service, where it listens, where it forwards."""

    service: Service
    listen: tuple[SocketURL, ...]
    forward: SocketURL

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.service.name, tuple(u.display() for u in self.listen)


@dataclass(frozen=True)
class Upstream:
    """A resolved forward address."""

    family: int
    kind: int
    address: Any
    text: str
    raw: bytes = b""  # the address as a C sockaddr, for the lane (b"": none, lane.sockaddr)

    @classmethod
    def of(cls, url: SocketURL) -> "Upstream":
        kind = socket.SOCK_STREAM if url.is_stream else socket.SOCK_DGRAM
        if url.is_unix:
            assert url.path is not None
            addr: Any = b"\0" + url.path.encode() if url.abstract else url.path
            raw = sockaddr(socket.AF_UNIX, addr)
            if not raw:  # no connect could ever reach it: a user's error, said once, not per client
                raise UsageError(f"forward {url.text!r}: a Unix socket path holds at most {SUN_PATH - 1} bytes"
                                 f" ({len(url.path.encode())} given)")
            return cls(socket.AF_UNIX, kind, addr, url.display(), raw)
        if url.host is None:
            raise UsageError(f"forward {url.text!r}: needs a host (e.g. tcp://127.0.0.1:{url.port})")
        try:
            info = socket.getaddrinfo(url.zone and f"{url.host}%{url.zone}" or url.host, url.port, type=kind)
        except OSError as e:
            raise UsageError(f"forward {url.text!r}: cannot resolve {url.host!r}: {e}") from None
        family, _, _, _, address = info[0]
        return cls(family, kind, address, url.display(), sockaddr(family, address))


@dataclass(slots=True)
class Conn:
    """Book-keeping for one client connection."""

    peer: Peer | None  # None: admitted on the lane's shortcut, where no peer is built (not read after)
    admitted: Admitted
    client: _socket.socket | None  # None: the lane has had it from the accept on
    fd: int  # the client's descriptor: its key in Runner.conns
    backend: _socket.socket | None = None
    timer: asyncio.TimerHandle | None = None
    relay: Relay | None = None
    started: float = field(default_factory=time.monotonic)
    label: str = ""  # peer_label(peer), rendered once for both records
    source: str | None = None  # its key in Runner.per_source (None: a Unix peer, not counted)
    plain: bool = False  # the label needs no quoting in a record (Log.allowed)
    in_lane: bool = False  # the lane connects and relays it (lane.py)
    rule: str = ""  # rule_label of the deciding rule, rendered once for both records


_ADDRESSES: dict[str, tuple[Any, str]] = {}


def _address(text: str) -> tuple[Any, str]:
    """``ip_address`` of an accepted address, and the text of its ``limits.source_of`` (the
    per-source count's key: a string hashes in C, an ``ipaddress`` object in Python, which
    showed per connection), with a small cache: parsing is a visible cost per connection."""
    hit = _ADDRESSES.get(text)
    if hit is None:
        if len(_ADDRESSES) > 4096:
            _ADDRESSES.clear()
        a = ipaddress.ip_address(text.split("%", 1)[0])
        hit = _ADDRESSES[text] = (a, source_key(a))
    return hit


def source_key(address: Any) -> str:
    """The key of ``address`` in ``Runner.per_source``: its source's text (one per source)."""
    return str(source_of(address))


def check_plan(plan: ProxySpec) -> None:
    """Listen and forward URLs that fit together; ``UsageError`` otherwise."""
    fwd = plan.forward
    for url in plan.listen:
        if url.scheme == "unix+dgram":
            raise UsageError(f"service {plan.service.name}: the proxy listens on tcp, udp and unix (stream) sockets, not {url.text!r}")
        if url.is_stream and not fwd.is_stream:
            raise UsageError(f"service {plan.service.name}: {url.text!r} is a stream socket; forward it to tcp:// or unix:, not {fwd.text!r}")
        if not url.is_stream and fwd.scheme != "udp":
            raise UsageError(f"service {plan.service.name}: {url.text!r} is UDP; forward it to udp://, not {fwd.text!r}")


def tune_listener(sock: socket.socket) -> None:
    """What accepted TCP sockets inherit, so that no connection pays a ``setsockopt`` for it:
    urgent bytes in line (``relay.Relay``'s ``client_inline``) and no Nagle delay. Done before
    ``listen`` on the sockets the proxy opens (a connection queued before would lack them),
    and again when a runner starts (passed sockets). OSError: not TCP."""
    if sock.type == socket.SOCK_STREAM and _family(sock) != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _established(s: _socket.socket) -> bool:
    """``getpeername`` fails with ENOTCONN until the handshake is done (inet_getname)."""
    try:
        s.getpeername()
    except OSError:
        return False
    return True


def _family(s: _socket.socket) -> int:
    """``s.family`` as a plain int: the ``socket.socket`` property converts it to an enum on
    every call, which showed in the per-connection profile."""
    return int(_socket.socket.family.__get__(s))
