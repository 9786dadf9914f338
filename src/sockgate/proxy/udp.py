"""UDP forwarding per client flow, with an idle timeout.

A datagram from a new client address is decided like a connection (engine, then limits); an
allowed client gets a *flow*: its own connected UDP socket towards the backend, so the
backend's replies come back on that socket and are sent to the client from the listening
socket (the client sees replies from the address it wrote to). A flow ends after
``udp_idle_timeout`` seconds without a datagram either way, and is logged like a finished
connection. Flows are capped in total (``max_udp_flows``) and per source
(``max_udp_flows_per_source``; ``limits.source_of``: an IPv4 address or an IPv6 /64); a new flow that meets a cap ends an old one rather than
being refused, chosen by ``limits.FlowTable`` so that the source holding the most flows pays:
one address cycling its source ports only recycles its own flows, and cannot lock other
clients out. A denied address is remembered for a second so a burst from it costs one
decision and one log record, not one per datagram. Denied sources that the kernel filter can
judge never get here at all.

Host-name rules are decided on a slow path (one lookup per new flow); datagrams from that
client that arrive meanwhile are dropped, as a full socket buffer would drop them.

Forged sources. An AF_INET6 socket reports a real IPv4 client as ``::ffff:a.b.c.d``, and an
IPv6 datagram whose header says ``::ffff:a.b.c.d`` (a forgery: decide.py) the same way; Linux
6.18 delivers both. So each datagram's header is read from the ancillary data: ``IP_PKTINFO``
(asked for on AF_INET6 sockets too) comes with IPv4 packets only (udpv6_recvmsg calls
ip_cmsg_recv for them). The header goes into ``Peer.header``, and the engine denies a forged
peer; its datagrams never join a real client's flow, and its refusal is remembered apart.

The server side. When a rule names the local address (hosts_access ``daemon@host``), each
datagram's destination is read from the same ancillary data (``IP_PKTINFO``'s ``ipi_addr``,
``IPV6_PKTINFO``'s ``ipi6_addr``): a socket bound to every address has no one local address
to give, and a ``deny daemon@host`` rule that never saw one would never refuse. A flow is then
the client *and* the address it wrote to, so a client allowed on one local address cannot
reach the backend through another on the same flow.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol

from sockgate.linux.listen import Listener
from sockgate.peers import Peer
from sockgate.policy.ir import IPAddress
from sockgate.proxy.admission import Admission, Admitted, Refused, peer_label, rule_label
from sockgate.proxy.limits import FlowTable, source_of

_BURST = 64
_MAX_DGRAM = 65535
_DENY_MEMORY = 1.0
IP_PKTINFO = 8  # <linux/in.h>; Python's socket module lacks it
IPV6_PKTINFO = 50  # <linux/in6.h> (the cmsg type; IPV6_RECVPKTINFO 49 turns it on)
IPV6_RECVPKTINFO = 49
_ANCILLARY = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(20) + socket.CMSG_SPACE(64)  # in_pktinfo, in6_pktinfo, room


def packet_info(anc: list[tuple[int, int, bytes]], six: bool) -> tuple[int, IPAddress | None]:
    """The IP version of a datagram's header and its destination address, from recvmsg's
    ancillary data. ``IP_PKTINFO`` comes with IPv4 packets only, also on an AF_INET6 socket."""
    header, dest = (6 if six else 4), None
    dest6: IPAddress | None = None
    for level, kind, blob in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(blob) >= 12:
            header, dest = 4, ipaddress.IPv4Address(blob[8:12])  # struct in_pktinfo: ifindex, spec_dst, addr
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(blob) >= 16:
            dest6 = ipaddress.IPv6Address(blob[:16])  # struct in6_pktinfo: addr, ifindex
    return header, dest if dest is not None else dest6


@dataclass
class Flow:
    client: Any
    peer: Peer
    admitted: Admitted
    sock: socket.socket | None = None
    up: int = 0
    down: int = 0
    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)


class FlowOwner(Protocol):
    """What a ``UdpRelay`` uses of the runner that serves its service
    (``proxy.service.Runner``): declared here, so this module needs nothing from the TCP side."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...
    @property
    def options(self) -> _FlowOptions: ...
    @property
    def log(self) -> _FlowLog: ...
    @property
    def name(self) -> str: ...
    @property
    def needs_name(self) -> bool: ...
    @property
    def needs_server(self) -> bool: ...
    @property
    def reverse_lookup(self) -> object: ...  # None: no name lookups configured
    @property
    def tasks(self) -> set[asyncio.Task[None]]: ...
    @property
    def target(self) -> _FlowTarget: ...
    async def named(self, peer: Peer) -> Peer | str: ...
    def admit(self, peer: Peer) -> Admitted | Refused: ...


class _FlowOptions(Protocol):
    @property
    def max_udp_flows(self) -> int: ...
    @property
    def max_udp_flows_per_source(self) -> int: ...
    @property
    def udp_idle_timeout(self) -> float: ...


class _FlowLog(Protocol):
    def record(self, event: str, **fields: Any) -> None: ...
    def error(self, message: str, **fields: Any) -> None: ...


class _FlowTarget(Protocol):
    @property
    def family(self) -> int: ...
    @property
    def address(self) -> Any: ...
    @property
    def text(self) -> str: ...


class UdpRelay:
    def __init__(self, runner: FlowOwner, listener: Listener) -> None:
        self.runner = runner
        self.listener = listener
        self.sock = listener.sock
        self.flows: dict[Any, Flow] = {}
        o = runner.options
        self.table: FlowTable[Any, Any] = FlowTable(o.max_udp_flows, o.max_udp_flows_per_source)
        self.pending: set[Any] = set()
        self.denied: dict[Any, float] = {}
        self.by_dest = runner.needs_server  # a flow per client and local address (daemon@host)
        self.ancillary = self.sock.family == socket.AF_INET6 or self.by_dest  # recvmsg, for packet_info

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self.runner.loop is not None
        return self.runner.loop

    def start(self) -> None:
        six = self.sock.family == socket.AF_INET6
        if self.ancillary:
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            except OSError as e:  # then every ::ffff: source counts as forged: fail closed
                self.runner.log.error(f"listener {self.listener.url.text}: IP_PKTINFO: {e.strerror}; "
                                      "IPv4 clients of this dual-stack socket will be refused", service=self.runner.name)
        if six and self.by_dest:  # without it the local address is unknown: daemon@host rules see "unknown"
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        self.loop.add_reader(self.sock.fileno(), self._on_datagram)

    def stop(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())

    def _on_datagram(self) -> None:
        now = time.monotonic()
        six = self.sock.family == socket.AF_INET6
        for _ in range(_BURST):
            try:
                if self.ancillary:
                    data, anc, _flags, addr = self.sock.recvmsg(_MAX_DGRAM, _ANCILLARY)
                    header, dest = packet_info(anc, six)
                else:
                    (data, addr), header, dest = self.sock.recvfrom(_MAX_DGRAM), 4, None
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ICMP errors surface here on some kernels; nothing to do for them
            fkey = (addr, dest) if self.by_dest else addr
            flow = self.flows.get(fkey)
            if flow is None or flow.peer.header != header:  # (the same address in the other header: forged)
                flow = self._new_flow(fkey, addr, header, dest, now, data)
                if flow is None:
                    continue
            else:
                self.table.touch(fkey)
            self._send_up(flow, data, now)

    def _new_flow(self, fkey: Any, addr: Any, header: int, dest: IPAddress | None, now: float, data: bytes) -> Flow | None:
        """``fkey`` names the flow (the client, and the local address when rules need it);
        ``addr`` is the client's address, where replies go."""
        peer = Peer(address=ipaddress.ip_address(addr[0].split("%", 1)[0]), port=addr[1], header=header, server_address=dest)
        key = ("forged", fkey) if peer.forged else fkey  # never the memory of a real client's refusal
        if key in self.pending:
            return None
        until = self.denied.get(key)
        if until is not None and now < until:
            return None
        r = self.runner
        if peer.forged:  # the engine refuses it whatever the policy: no flow slot, no name lookup
            return self._open(key, addr, peer, now)
        if r.needs_name and r.reverse_lookup is not None:
            self.pending.add(fkey)
            task = asyncio.ensure_future(self._slow(fkey, addr, peer, data))
            r.tasks.add(task)
            task.add_done_callback(r.tasks.discard)
            return None
        return self._open(fkey, addr, peer, now)

    async def _slow(self, fkey: Any, addr: Any, peer: Peer, data: bytes) -> None:
        try:
            named = await self.runner.named(peer)
        finally:
            self.pending.discard(fkey)
        now = time.monotonic()
        if isinstance(named, str):  # a lookup cut short that some name would deny: dropped, remembered
            self._deny(fkey, peer, "limit", named, now)
            return
        flow = self._open(fkey, addr, named, now)
        if flow is not None:
            self._send_up(flow, data, now)

    def _open(self, fkey: Any, addr: Any, peer: Peer, now: float) -> Flow | None:
        r = self.runner
        a = r.admit(peer)
        if isinstance(a, Refused):
            self._deny(fkey, peer, a.decision.rule, a.reason, now)
            return None
        d = a.decision
        r.log.record("decision", service=r.name, peer=peer_label(peer), decision="allow", rule=rule_label(d.rule), reason=d.reason)
        flow = Flow(addr, peer, a)
        t = r.target
        try:
            s = socket.socket(t.family, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect(t.address)
        except OSError as e:
            r.log.error(f"backend {t.text}: {e.strerror}", service=r.name, peer=peer_label(peer))
            Admission.release(a)
            return None
        flow.sock = s
        assert peer.address is not None
        self._make_room(source_of(peer.address))
        self.flows[fkey] = flow
        self.table.add(fkey, source_of(peer.address))
        self.loop.add_reader(s.fileno(), self._on_reply, flow)
        return flow

    def _make_room(self, source: Hashable) -> None:
        """End the flows a new one from ``source`` displaces (see ``limits.FlowTable``)."""
        o = self.runner.options
        mine = self.table.count(source) >= o.max_udp_flows_per_source
        why = f"{o.max_udp_flows_per_source} UDP flows per source" if mine else f"{o.max_udp_flows} UDP flows"
        for victim in self.table.make_room(source):
            self._close(victim, f"evicted: over the proxy's limit of {why}")

    def _deny(self, addr: Any, peer: Peer, rule: Any, reason: str, now: float) -> None:
        if len(self.denied) > 4096:
            self.denied = {a: u for a, u in self.denied.items() if u > now}
        self.denied[addr] = now + _DENY_MEMORY
        r = self.runner
        label = "forged" if peer.forged else rule_label(rule)  # (no rule decided it, as "limit")
        r.log.record("decision", service=r.name, peer=peer_label(peer), decision="deny", rule=label, reason=reason)

    def _send_up(self, flow: Flow, data: bytes, now: float) -> None:
        assert flow.sock is not None
        flow.last = now
        try:
            flow.sock.send(data)
            flow.up += len(data)
        except OSError:
            pass  # backend not there (ECONNREFUSED from an earlier ICMP) or buffer full: UDP drops

    def _on_reply(self, flow: Flow) -> None:
        assert flow.sock is not None
        flow.last = time.monotonic()
        for _ in range(_BURST):
            try:
                data = flow.sock.recv(_MAX_DGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ECONNREFUSED: the backend port is closed; the flow idles out
            try:
                self.sock.sendto(data, flow.client)
                flow.down += len(data)
            except OSError:
                return

    def sweep(self, now: float) -> None:
        limit = self.runner.options.udp_idle_timeout
        for addr in [a for a, f in self.flows.items() if now - f.last > limit]:
            self._close(addr, "idle timeout")

    def close_all(self, reason: str) -> None:
        for addr in list(self.flows):
            self._close(addr, reason)

    def _close(self, addr: Any, how: str) -> None:
        flow = self.flows.pop(addr)
        self.table.remove(addr)
        if flow.sock is not None:
            if flow.sock.fileno() >= 0:
                self.loop.remove_reader(flow.sock.fileno())
            flow.sock.close()
        Admission.release(flow.admitted)
        r = self.runner
        r.log.record(
            "close",
            service=r.name,
            peer=peer_label(flow.peer),
            decision="allow",
            rule=rule_label(flow.admitted.decision.rule),
            bytes_up=flow.up,
            bytes_down=flow.down,
            duration=round(time.monotonic() - flow.started, 6),
            end=how,
        )
