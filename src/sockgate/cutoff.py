"""End the established TCP connections a new policy denies, on the listeners it now guards.

A TCP connection accepted from a listener keeps the filter the listener had when it was
accepted (the child socket takes its own reference at accept time), so swapping the
listener's filter reaches only new connections: a reload that newly denies a source would
leave that source's open connections flowing. After a reload, then, ``run`` and ``attach``
list the established connections on the guarded listeners (sock_diag), decide each peer with
the engine (``decide_resolved``, as the compiled filter would for a new connection from it,
the connection's local address as the server side), and abort the denied ones with
``sockdiag.destroy_tcp`` (``ss -K``: a reset to the peer, ECONNABORTED to the service).

Only this network namespace's connections are listed: a listener living in another one is
reported as not checked, never silently passed over. ``--keep-established`` skips all this.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sockgate.decide import decide_resolved
from sockgate.linux import bpfsys, procfs, sockdiag
from sockgate.peers import Peer
from sockgate.policy.forward import unmapped_address
from sockgate.resolve import ResolvedService

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
STATES = 1 << sockdiag.TCP_ESTABLISHED | 1 << sockdiag.TCP_CLOSE_WAIT  # the service can still talk to the peer


@dataclass(frozen=True)
class TcpListener:
    """Where a guarded TCP listener is bound: an address (the wildcard: every local one) and port."""

    address: Address
    port: int

    def holds(self, local: Address, port: int) -> bool:
        return port == self.port and (self.address.is_unspecified or unmapped_address(self.address) == unmapped_address(local))


def denied(service: ResolvedService, listeners: Sequence[TcpListener],
           conns: Iterable[sockdiag.Sock]) -> dict[tuple[int, Address], set[Address]]:
    """(local port, local address) → the peers of the connections on ``listeners`` that
    ``service`` denies. Pure."""
    out: dict[tuple[int, Address], set[Address]] = {}
    for c in conns:
        if c.proto != "tcp" or c.local_addr is None or c.peer_addr is None or c.local_port is None:
            continue
        local, peer = ipaddress.ip_address(c.local_addr), ipaddress.ip_address(c.peer_addr)
        if not any(lst.holds(local, c.local_port) for lst in listeners):
            continue
        if not decide_resolved(service, Peer(address=peer, port=c.peer_port, server_address=local)).allowed:
            out.setdefault((c.local_port, unmapped_address(local)), set()).add(unmapped_address(peer))
    return out


def end_denied(service: ResolvedService, listeners: Sequence[TcpListener]) -> int:
    """Abort the established connections on ``listeners`` whose peer ``service`` denies; how
    many were ended. Raises ``AdapterError`` (no CAP_NET_ADMIN, no SOCK_DESTROY in this kernel)."""
    if not listeners:
        return 0
    conns = sockdiag.tcp_on_ports({lst.port for lst in listeners}, STATES)
    ended = 0
    for (port, local), peers in sorted(denied(service, listeners, conns).items(), key=str):
        ended += sockdiag.destroy_tcp([port], [ipaddress.ip_network(p) for p in sorted(peers, key=str)], STATES,
                                      addresses=[local])
    return ended


def in_this_netns(fd: int) -> bool:
    """Whether socket ``fd`` lives in this process's network namespace (sock_diag lists only
    that one's connections)."""
    mine = procfs.netns_of(os.getpid())
    return mine is not None and bpfsys.netns_inode(fd) == mine
