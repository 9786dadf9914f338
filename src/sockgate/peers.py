"""What is known about the other end of a connection: the input of every decision.

``Peer`` is what an edge learned (the kernel's credentials, a packet's addresses, a name
lookup) and what the engine, the compilers and the proxy decide on. It lives apart from the
engine so the edges that build a peer (thin Linux adapters, the name lookups) and the
compilers that only need its shape import it without importing the decision engine. (The
module is ``peers``, not ``peer``: ``sockgate.peer(conn)`` is a public function, and a submodule
of that name would replace it as an attribute of the package once imported.)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Union

from sockgate.errors import PeerError

# The same alias as policy.ir's, written here so this module imports nothing of the policy:
# a thin adapter that builds a Peer (linux/peercred) stays thin.
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclass(frozen=True)
class Peer:
    """What is known about the other end of a connection.

    ``address`` is normalised: an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) becomes the
    IPv4 address, as a dual-stack socket reports it. ``name`` is the host name the edge
    resolved (None: unknown); ``name_verified`` False means the forward lookup of that name did
    not give back the address (hosts_access PARANOID). ``header`` is the IP version of the
    packet's header when the edge saw it (None: not known); an address that header cannot
    carry genuinely (an IPv4-mapped source in an IPv6 header) makes the peer ``forged``."""

    address: IPAddress | None = None
    port: int | None = None
    name: str | None = None
    name_verified: bool = True
    user: str | None = None  # ident user name
    uid: int | None = None
    gid: int | None = None
    groups: frozenset[int] = field(default_factory=frozenset)  # supplementary groups of uid
    pid: int | None = None
    exe: str | None = None
    server_address: IPAddress | None = None  # the local address (daemon@host)
    server_name: str | None = None
    header: int | None = None  # 4 or 6: the IP header the packet arrived with, when known

    def __post_init__(self) -> None:
        a = self.address
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            object.__setattr__(self, "address", a.ipv4_mapped)
        s = self.server_address
        if isinstance(s, ipaddress.IPv6Address) and s.ipv4_mapped is not None:
            object.__setattr__(self, "server_address", s.ipv4_mapped)

    @classmethod
    def of_ip(cls, address: IPAddress, port: int, server_address: IPAddress | None = None) -> "Peer":
        """``Peer(address=..., port=..., server_address=...)`` at a third of the cost, for a
        proxy's accept path: the frozen dataclass ``__init__`` sets all twelve fields through
        ``object.__setattr__``. The addresses are normalised as ``__post_init__`` does."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if isinstance(server_address, ipaddress.IPv6Address) and server_address.ipv4_mapped is not None:
            server_address = server_address.ipv4_mapped
        p = object.__new__(cls)
        d = p.__dict__
        d.update(_PEER_DEFAULTS)
        d["address"] = address
        d["port"] = port
        d["server_address"] = server_address
        return p

    @classmethod
    def parse(cls, text: str, **kw: object) -> "Peer":
        """A peer from an address literal (``192.0.2.1``, ``2001:db8::1``, ``[2001:db8::1]``).
        Raises ``PeerError`` when ``text`` is not an address."""
        t = text.strip()
        if t.startswith("[") and t.endswith("]"):
            t = t[1:-1]
        try:
            addr = ipaddress.ip_address(t.split("%", 1)[0])
        except ValueError:
            raise PeerError(f"not an IP address: {text!r}") from None
        return cls(address=addr, **kw)  # type: ignore[arg-type]

    @property
    def forged(self) -> bool:
        """The source address cannot have come in the packet's header: an IPv4 address (an
        IPv4-mapped one, normalised) in an IPv6 header, or an IPv6 one in an IPv4 header."""
        return self.header is not None and self.address is not None and self.header != self.address.version

    def address_text(self) -> str:
        """The source as the packet's header wrote it: ``::ffff:a.b.c.d`` for a forged peer
        (a log must never show a forged packet as coming from ``a.b.c.d``), else the address."""
        if self.header == 6 and isinstance(self.address, ipaddress.IPv4Address):
            return f"::ffff:{self.address}"
        return str(self.address)

    def describe(self) -> str:
        if self.address is not None:
            out = self.address_text()
            if self.name:
                out = f"{self.name}[{out}]"
            if self.user:
                out = f"{self.user}@{out}"
            return out
        parts = []
        if self.uid is not None:
            parts.append(f"uid={self.uid}")
        if self.gid is not None:
            parts.append(f"gid={self.gid}")
        if self.pid is not None:
            parts.append(f"pid={self.pid}")
        if self.exe:
            parts.append(f"exe={self.exe}")
        return " ".join(parts) or "unknown"


_PEER_DEFAULTS = dict(Peer().__dict__)
