"""One proxied service: its listeners, its decisions, its limits and bans, its connections.

A ``Runner`` is built from a ``ProxySpec`` (a policy service, the URLs it listens on and the URL it
forwards to). Per accepted connection it:

1. learns the peer — the address for IP, the kernel's credentials for Unix
   (``sockgate.linux.peercred``: SO_PEERCRED, SO_PEERGROUPS, SO_PEERPIDFD);
2. when a rule needs it, looks the host name up (forward-confirmed, timeout, cache, in its own
   bounded lane: ``names``) on a slow path — a lookup cut short refuses the client unless every
   name would let it in; every other connection is decided in the accept callback;
3. asks its ``admission.Admission``: the engine's decision, then the limits and bans;
4. logs the decision; resets a denied client, connects an allowed one to the backend
   (non-blocking, with a deadline) and hands it to a ``relay.Relay``;
5. logs the finished connection with its byte counts, duration and how it ended.

With the C relay (``lane.py``) the lane accepts, connects, relays and calls ``_lane_admit`` per
client (steps 1-4; a Unix peer, a host-name or server-address rule go back to the path above,
which hands an allowed client over with ``Lane.start``) and ``_lane_finished`` per ended one;
a source in ``memo`` it admits, counts and logs itself (lane.py, ``_lane.c``).

Kernel filter. Every IP listener carries the program compiled from the resolved service's
``kernel_part`` (``resolve.kernelpart``: the address-only part the kernel may enforce) and the
sources its limits ban, so their SYNs and datagrams are dropped before the proxy wakes. On eBPF
a ban is an update of the service's ban maps (``kernelbans``). On classic BPF it recompiles the
program and replaces it on every listener in one transaction of the kernel seam (a
``setsockopt`` each, atomic under RCU), and when the policy and its bans do not fit in one
program together, the program carries the policy alone and every ban is enforced here, in user
space (a ban lives in its ``Limiter``, which refuses the banned source on admission). Only a
policy that does not fit by itself is an error.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import ipaddress
import os
import socket
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from sockgate.errors import CompileError, SockgateError
from sockgate.kernel import Compiled, Kernel, Loaded, Slot, Step, default_kernel
from sockgate.linux.peercred import unix_peer
from sockgate.peers import Peer
from sockgate.policy.ir import Rule, Service
from sockgate.resolve import resolve_service
from sockgate.proxy import kernelbans
from sockgate.proxy.admission import Admission, Admitted, Refused, peer_label, rule_label
from sockgate.proxy.limits import as_network
from sockgate.log import Log, allowed_parts, closed_parts, ending
from sockgate.proxy.lane import lane_of, new_book
from sockgate.proxy.loop import add_reader, remove_reader
from sockgate.proxy.namecache import LATE, LookupRefused, ReverseLookup
from sockgate.proxy.relay import PipePool, Relay, reset_close
from sockgate.proxy.udp import UdpRelay
from sockgate.proxy.spec import (
    Conn, ProxySettings, ProxySpec, Upstream, _address, _established, _family, check_plan, tune_listener,
)

if TYPE_CHECKING:
    from sockgate.linux.listen import Listener
    from sockgate.proxy._lane import Book, Lane

_ACCEPT_BURST = 64
_MEMO_SIZE = 4096  # replayed sources: at most this many (then forgotten, and learnt again)
# What to do when the kernel lets only CAP_NET_ADMIN filter a TCP socket (kernel.transaction).
PROXY_ADVICE = "start `sockgate proxy` as root or with that capability"
_NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK


class Runner:
    """Serves one ``ProxySpec`` on an event loop."""

    def __init__(
        self, plan: ProxySpec, options: ProxySettings, log: Log, pipes: PipePool,
        reverse_lookup: ReverseLookup | None, kernel: Kernel | None = None,
    ) -> None:
        self.plan = plan
        self.kernel = kernel or default_kernel()
        self.loaded: Loaded | None = None  # the program on the IP listeners (None: none yet)
        self.options = options
        self.log = log
        self.pipes = pipes
        self.reverse_lookup = reverse_lookup
        check_plan(plan)
        self.target = Upstream.of(plan.forward)
        self.listeners: list[Listener] = []
        self.conns: dict[int, Conn] = {}  # by the client's descriptor
        self.per_source: dict[str, int] = {}  # open connections per source (source_key)
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.udp: list[UdpRelay] = []
        self._ban_timer: asyncio.TimerHandle | None = None
        self._bans_in_user_space = False  # the last program left the bans out (logged once)
        self.opened_by_reload = False  # its listeners were opened by a reload (see Proxy._owns_files)
        self.clients_inline = True  # accepted IP sockets have SO_OOBINLINE (tune_listener)
        self.lane: Lane | None = None  # the loop's C relay, if it has one (start)
        # IPv4 sources the lane admits without calling back (_lane.c, "the remembered path"):
        # their records' parts (log.allowed_parts, log.closed_parts), emptied by install
        self.memo: dict[str, tuple[str, str, str, str]] = {}
        self.book: Book | None = None  # the lane's view of memo and of the counts (start)
        self.install(plan.service)

    # -- policy ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.service.name

    def install(self, service: Service) -> None:
        """Use ``service`` for new connections (limiter state is kept where limits are equal)."""
        self.service = service
        self.memo.clear()  # a new policy: nothing decided under the old one is replayed
        self.resolved = resolve_service(service)
        self.admission = Admission(self.resolved, getattr(self, "admission", None))
        self.needs_name = self.resolved.needs_host_name  # (plain attributes: read per connection)
        self.needs_server = self.resolved.needs_server_address  # a daemon@host part, whatever the client side needs

    @staticmethod
    def has_limits(service: Service) -> bool:
        return resolve_service(service).has_limits

    def compile(self, service: Service | None = None) -> Compiled:
        """The kernel filter for the IP listeners of ``service`` (default: the running one), with
        the bans when they fit, else none (module docstring); CompileError: the policy does not."""
        svc = (resolve_service(service) if service is not None else self.resolved).kernel_part
        if self.kernel.choose(self.options.backend).name == "ebpf":
            return self.kernel.compile(svc, backend=self.options.backend)  # its bans: maps (push_bans)
        nets = [n for n in map(as_network, self.admission.bans(time.monotonic())) if n is not None]
        try:
            prog = self.kernel.compile(svc, nets, self.options.backend)
        except CompileError as e:
            if not nets:
                raise
            prog = self.kernel.compile(svc, backend=self.options.backend)  # a CompileError here is the policy's own
            if not self._bans_in_user_space:
                self.log.error(f"{len(nets)} bans do not fit in the kernel filter, bans enforced in user space: {e}", service=self.name)
            self._bans_in_user_space = True
        else:
            self._bans_in_user_space = False
        return prog

    def ip_slots(self) -> list[Slot]:  # where a kernel filter goes (a Unix peer has no address)
        return [Slot(lst.sock.fileno(), lst.address(), PROXY_ADVICE) for lst in self.listeners if not lst.url.is_unix]

    def adopt(self, plan: ProxySpec, loaded: Loaded, target: Upstream) -> None:
        """A reload's new ``plan`` (same key), whose program ``loaded`` is on the listeners."""
        self.install(plan.service)
        self.plan, self.loaded, self.target = plan, loaded, target
        if self.accepting and self.lane is not None:
            for lst in self.listeners:  # accept again for the new target (in the lane or the loop)
                if lst.sock.type == socket.SOCK_STREAM and lst.sock.fileno() >= 0:
                    self._rewatch(lst.sock)
        if kernelbans.in_maps(loaded):
            self.push_bans()  # the bans kept over the reload, into its maps

    def push_bans(self) -> None:
        """The kernel filter's bans made the current ones — the eBPF maps updated, or the
        classic program rebuilt — and the next lift scheduled."""
        try:
            if not kernelbans.sync(self.kernel, self.loaded, self.admission):
                loaded = self.kernel.load(self.compile())
                self.kernel.apply([Step(slot, loaded) for slot in self.ip_slots()])
                self.loaded = loaded
        except SockgateError as e:
            self.log.error(f"kernel filter not updated, bans enforced in user space: {e}", service=self.name)
        self._schedule_lift()

    def _schedule_lift(self) -> None:
        if self._ban_timer is not None:
            self._ban_timer.cancel()
            self._ban_timer = None
        end = self.admission.next_expiry()
        if end is not None and self.loop is not None:
            delay = max(0.0, end - time.monotonic()) + 0.01
            self._ban_timer = self.loop.call_later(delay, self.housekeeping)

    def housekeeping(self) -> None:
        """Lift ended bans (rebuilding the filter), close idle connections."""
        now = time.monotonic()
        lifted = self.admission.expire(now)
        if lifted:
            for s in lifted:
                self.log.record("unban", service=self.name, peer=str(s))
            self.push_bans()
        limit = self.options.idle_timeout
        for c in [c for c in self.conns.values() if c.relay is not None and now - c.relay.last_activity > limit]:
            assert c.relay is not None
            c.relay.abort("idle timeout")
        for u in self.udp:
            u.sweep(now)

    # -- listening ------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, listeners: list["Listener"]) -> None:
        self.loop = loop
        self.lane = lane_of(loop)
        if self.lane is not None and self.log.lines():
            self.book = new_book(self.memo, self.conns, self.tasks, self.per_source, self.log.add_line, self._ending,
                                 self.options.max_connections, self.options.max_connections_per_source)
        self.listeners = listeners
        for lst in listeners:
            lst.sock.setblocking(False)
            if lst.sock.type == socket.SOCK_DGRAM:
                self.udp.append(UdpRelay(self, lst))
            else:
                try:
                    tune_listener(lst.sock)  # again: a passed socket did not go through open
                except OSError as e:  # a passed stream socket that is not TCP
                    self.clients_inline = False  # the relays set it themselves
                    self.log.notice(f"listener {lst.url.text}: {e.strerror}", service=self.name)
        self.resume()

    def resume(self) -> None:
        assert self.loop is not None
        self.accepting = True
        for lst in self.listeners:
            if lst.sock.type == socket.SOCK_STREAM:
                self._watch(lst.sock)
        for u in self.udp:
            u.start()

    def _watch(self, lsock: socket.socket) -> None:
        """Accept on ``lsock``: in the lane, or from the loop."""
        assert self.loop is not None
        t = self.target
        if self.lane is not None and t.raw:
            self.lane.listen(lsock.fileno(), self._lane_admit, partial(self._lane_accept_failed, lsock),
                             self._lane_finished, t.family, t.raw, self.clients_inline, self.book)
        else:
            add_reader(self.loop, lsock.fileno(), partial(self._on_accept, lsock))

    def _rewatch(self, lsock: socket.socket) -> None:
        """``lsock`` accepting for the current target: whatever registration it had (the lane's,
        or the loop's reader) removed first, then the one the target calls for. A reload's
        commit must not fail half-way: if this fails anyway, the service stops accepting on
        ``lsock`` (closed to new clients, never served under the old target) and says so."""
        self.unwatch(lsock)
        try:
            self._watch(lsock)
        except OSError as e:
            self.log.error(f"a listener (descriptor {lsock.fileno()}) stopped accepting at the reload: {e.strerror or e}",
                           service=self.name)

    def unwatch(self, lsock: socket.socket) -> None:
        """Stop accepting on ``lsock`` (left open)."""
        if self.loop is None or lsock.fileno() < 0:
            return
        if self.lane is None or not self.lane.unlisten(lsock.fileno()):
            remove_reader(self.loop, lsock.fileno())

    def stop_accepting(self, unlink: bool = True) -> None:
        if self.loop is None:
            return
        self.accepting = False
        for lst in self.listeners:
            if lst.sock.type == socket.SOCK_STREAM:
                self.unwatch(lst.sock)
        for u in self.udp:
            u.stop()
        for lst in self.listeners:
            lst.close(unlink=unlink)
        if self._ban_timer is not None:
            self._ban_timer.cancel()

    def busy(self) -> int:
        return len(self.conns) + len(self.tasks) + self._replayed() + sum(len(u.flows) for u in self.udp)

    def _replayed(self) -> int:  # connections the lane admitted from the memo, still open
        return self.book.open() if self.book is not None else 0

    def cancel_lookups(self) -> None:
        """Give up on the clients still waiting for a host-name lookup (TCP ones are reset)."""
        for t in list(self.tasks):
            t.cancel()

    def abort_all(self, reason: str) -> None:
        self.cancel_lookups()
        for c in list(self.conns.values()):
            if c.relay is not None:
                c.relay.abort(reason)
            elif c.in_lane:
                assert self.lane is not None
                self.lane.abort(c.fd, reason)
            else:
                self._drop(c, reason)
        if self.book is not None and self.lane is not None:
            self.lane.abort_book(self.book, reason)
        for u in self.udp:
            u.close_all(reason)

    def _on_accept(self, lsock: socket.socket) -> None:
        family, kind = _family(lsock), socket.SOCK_STREAM
        for _ in range(_ACCEPT_BURST):
            try:
                # socket.accept() without its per-call enum conversions of family and type
                fd, addr = lsock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._accept_failed(lsock, e)
                return
            # the C socket type: socket.socket's Python wrapper adds frames to every
            # creation and close, for a reference count this code does not use (makefile)
            self._handle_guarded(_socket.socket(family, kind, 0, fd), fd, addr)

    def _handle_guarded(self, conn: _socket.socket, fd: int, addr: Any) -> None:
        """``handle``, where a bug costs one connection (reset), never the listener."""
        try:
            self.handle(conn, addr)
        except Exception as e:
            self.log.error(f"internal error handling a connection: {e!r}", service=self.name)
            self._forget(fd)
            reset_close(conn)

    def _forget(self, fd: int) -> None:
        """Drop a client from the table and from its source's count."""
        c = self.conns.pop(fd, None)
        if c is not None and c.source is not None:
            per_source, key = self.per_source, c.source
            n = per_source[key] - 1
            if n:
                per_source[key] = n
            else:
                del per_source[key]

    def _accept_failed(self, lsock: socket.socket, e: OSError) -> None:
        if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
            return
        self.log.error(f"accept: {e.strerror}", service=self.name)
        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) and self.loop is not None:
            # Out of descriptors: stop accepting for a moment instead of spinning.
            self.unwatch(lsock)
            self.loop.call_later(0.1, self._reaccept, lsock)

    def _lane_accept_failed(self, lsock: socket.socket, err: int) -> None:
        self._accept_failed(lsock, OSError(err, os.strerror(err)))

    def _reaccept(self, lsock: socket.socket) -> None:
        if self.accepting and self.loop is not None and lsock.fileno() >= 0:
            self._watch(lsock)

    # -- the lane's callbacks (lane.py): the hot path, kept lean ---------------------------

    def _lane_admit(self, fd: int, addr: Any) -> Conn | bool | None:
        """A client the lane accepted: a ``Conn`` (the lane connects and relays it), False (the
        lane resets it) or None (taken: decided on the path of ``handle``)."""
        if type(addr) is not tuple or self.needs_server or (self.needs_name and self.reverse_lookup is not None):
            # a Unix peer, or a rule that needs more than the address
            self._handle_guarded(_socket.socket(fileno=fd), fd, addr)
            return None
        host = addr[0]
        address, source = _address(host)
        over = self._over_limits(source)
        if over is None and len(addr) == 2:  # IPv4 (its label as the kernel wrote it)
            a = self.admission.remembered(host)
            if a is not None:  # admitted as last time, nothing to count: no peer to build
                fast = self._allow(None, fd, None, a, source, f"{host}:{addr[1]}", True)
                fast.in_lane = True
                if self.book is not None:  # from now on the lane replays it
                    self._replay(host, fast.rule, a.decision.reason)
                return fast
        peer = Peer.of_ip(address, addr[1], None)
        if over is not None:
            self._refusal(peer, None, *over)
            return False
        c = self._admitted(None, fd, peer, source, f"{host}:{addr[1]}" if len(addr) == 2 else None, host)
        if c is None:
            return False
        c.in_lane = True
        return c

    def _replay(self, host: str, rule: str, reason: str) -> None:
        if len(self.memo) >= _MEMO_SIZE:
            self.memo.clear()
        self.memo[host] = (*allowed_parts(self.name, rule, reason), *closed_parts(self.name, rule))

    def _ending(self, how: str, failed_connect: bool) -> str:
        """The ``end=`` of a replayed connection's close record (``_lane_finished``'s words)."""
        return ending(self._backend(how) if failed_connect else how)

    def _lane_finished(self, c: Conn, how: str, up: int, down: int) -> None:
        """A connection of the lane ended; ``up`` < 0: the backend connection failed (``how``: why)."""
        self._finished(c, self._backend(how) if up < 0 else how, max(up, 0), max(down, 0))

    # -- deciding -------------------------------------------------------------------------

    def handle(self, conn: _socket.socket, addr: Any) -> None:
        # conn stays blocking: the relay reads and writes it with MSG_DONTWAIT (relay.py)
        try:
            peer, source = self._peer(conn, addr)
        except (SockgateError, OSError) as e:
            self.log.record("decision", service=self.name, peer="unknown", decision="deny", reason=f"peer: {e}")
            reset_close(conn)
            return
        over = self._over_limits(source)
        if over is not None:
            self._refuse(conn, peer, None, *over)
            return
        if self.needs_name and self.reverse_lookup is not None and peer.address is not None:
            task = asyncio.ensure_future(self._slow(conn, peer, source))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        # An IP peer here carries its address and port alone (no name, and no server address
        # unless a rule needs one), and no decision reads the port: the address decides, and
        # the decision is remembered under it (admission module docstring). A Unix peer's
        # credentials are not in ``addr``: decided afresh.
        memo = addr[0] if source is not None and not self.needs_server else None
        # an IPv4 peer's label is the accepted address as the kernel wrote it (canonical)
        self._admit(conn, peer, source, f"{addr[0]}:{addr[1]}" if _family(conn) == socket.AF_INET else None, memo)

    def _over_limits(self, source: str | None) -> tuple[str, bool] | None:
        """Why a new client from ``source`` is over a connection limit (and whether the
        limit is per source), or None."""
        if len(self.conns) + len(self.tasks) + self._replayed() >= self.options.max_connections:  # waiting for a name too
            return f"over the proxy's limit of {self.options.max_connections} connections", False
        if source is not None and self.per_source.get(source, 0) >= self.options.max_connections_per_source:
            # one source cannot take the whole table from everybody else
            return f"over the limit of {self.options.max_connections_per_source} connections from one source", True
        return None

    def _peer(self, conn: _socket.socket, addr: Any) -> tuple[Peer, str | None]:
        """The peer, and its key in ``per_source`` (None for a Unix peer: not counted)."""
        if _family(conn) == socket.AF_UNIX:
            return unix_peer(conn), None
        server = None  # (TCP_NODELAY comes from the listener, see start)
        if self.needs_server:
            server = ipaddress.ip_address(conn.getsockname()[0].split("%", 1)[0])
        address, source = _address(addr[0])
        return Peer.of_ip(address, addr[1], server), source

    async def named(self, peer: Peer) -> Peer | str:
        """``peer`` with the host name its lookup found (None: it has none), or why it is
        refused. A lookup cut short (late, over a bound of the name layer, failed) is not "no
        name": libwrap would have waited and matched the name, so the client passes only if
        every name would let it in (``decide.decide_unnamed``; fail closed)."""
        assert self.reverse_lookup is not None
        try:
            name, verified = await asyncio.wait_for(self.reverse_lookup(self.name, peer.address), self.options.name_timeout)
        except LookupRefused as e:
            why = str(e)
        except asyncio.TimeoutError:
            why = f"{LATE} ({self.options.name_timeout:g}s)"
        except (OSError, SockgateError) as e:
            why = f"host-name lookup failed: {e}"
        else:
            return replace(peer, name=name, name_verified=verified)
        d = self.admission.unnamed(peer, why)
        return peer if d.allowed else f"{why}, and some host name would be denied"

    async def _slow(self, conn: _socket.socket, peer: Peer, source: str | None) -> None:
        try:
            named = await self.named(peer)
        except asyncio.CancelledError:
            self._refuse(conn, peer, "shutdown", "the proxy is stopping")
            raise
        if conn.fileno() < 0:
            return
        if isinstance(named, str):
            self._refuse(conn, peer, None, named, limit=True)
            return
        self._admit(conn, named, source)

    def admit(self, peer: Peer, memo: str | None = None) -> Admitted | Refused:
        """``Admission.admit`` now; a ban it starts is logged and put into the kernel filter."""
        a = self.admission.admit(peer, time.monotonic(), memo)
        if isinstance(a, Refused) and a.ban_started:
            self.log.record("ban", service=self.name, peer=str(a.key), reason=a.reason)
            self.push_bans()
        return a

    def _admit(self, conn: _socket.socket, peer: Peer, source: str | None, label: str | None = None,
               memo: str | None = None) -> None:
        c = self._admitted(conn, conn.fileno(), peer, source, label, memo)
        if c is None:
            reset_close(conn)
        else:
            self._connect(c)

    def _admitted(self, conn: _socket.socket | None, fd: int, peer: Peer, source: str | None, label: str | None,
                  memo: str | None) -> Conn | None:
        """The decision on ``peer``, logged; allowed: its ``Conn``, in the table."""
        a = self.admit(peer, memo)
        if isinstance(a, Refused):
            self._refusal(peer, a.rule, a.reason)
            return None
        plain = label is not None  # the kernel's a.b.c.d:port: printable, nothing to quote
        return self._allow(conn, fd, peer, a, source, label if label is not None else peer_label(peer), plain)

    def _allow(self, conn: _socket.socket | None, fd: int, peer: Peer | None, a: Admitted, source: str | None,
               label: str, plain: bool) -> Conn:
        """An admitted client logged and put in the table (``peer``: None when not built)."""
        d = a.decision
        rule = rule_label(d.rule)
        self.log.allowed(self.name, label, rule, d.reason, plain)
        c = Conn(peer, a, conn, fd, label=label, source=source, plain=plain, rule=rule)
        self.conns[fd] = c
        if source is not None:
            self.per_source[source] = self.per_source.get(source, 0) + 1
        return c

    def _refuse(self, conn: _socket.socket, peer: Peer, rule: Rule | str | None, reason: str, limit: bool = False) -> None:
        self._refusal(peer, rule, reason, limit)
        reset_close(conn)

    def _refusal(self, peer: Peer, rule: Rule | str | None, reason: str, limit: bool = False) -> None:
        self.log.record("decision", service=self.name, peer=peer_label(peer), decision="deny",
                        rule="limit" if limit else rule_label(rule), reason=reason)

    # -- connecting and relaying ------------------------------------------------------------

    def _connect(self, c: Conn) -> None:
        assert self.loop is not None and c.client is not None
        t = self.target
        if self.lane is not None and t.raw:  # the lane connects and relays (it owns the client now)
            c.in_lane = True
            inline = self.clients_inline and _family(c.client) != socket.AF_UNIX
            self.lane.start(c.client.detach(), c, self._lane_finished, t.family, t.raw, inline)
            return
        try:
            b = _socket.socket(t.family, _NONBLOCKING_STREAM)  # non-blocking from the start
        except OSError as e:
            self._backend_failed(c, f"socket: {e.strerror}")
            return
        c.backend = b
        if t.family != socket.AF_UNIX:  # (SO_OOBINLINE only if needed: relay.py)
            b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            err = b.connect_ex(t.address)
        except OSError as e:  # e.g. a Unix path longer than sun_path
            err = e.errno or errno.EINVAL
        if err == errno.EINPROGRESS and t.family != socket.AF_UNIX and _established(b):
            err = 0  # loopback: the handshake completed inside connect(); skip a wakeup
        if err == 0:
            self._relay(c)
        elif err == errno.EINPROGRESS:
            self.loop.add_writer(b.fileno(), self._connected, c)
            c.timer = self.loop.call_later(self.options.connect_timeout, self._backend_failed, c, "connect timeout")
        else:
            self._backend_failed(c, os.strerror(err))

    def _connected(self, c: Conn) -> None:
        assert self.loop is not None and c.backend is not None
        self.loop.remove_writer(c.backend.fileno())
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        err = c.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._backend_failed(c, os.strerror(err))
            return
        self._relay(c)

    def _backend_failed(self, c: Conn, why: str) -> None:
        """Backend down: close the client at once (a plain close) and say so."""
        self._drop(c, self._backend(why))

    def _backend(self, why: str) -> str:
        return f"backend {self.target.text}: {why}"

    def _drop(self, c: Conn, how: str) -> None:
        if c.timer is not None:
            c.timer.cancel()
        if c.backend is not None:
            if self.loop is not None and c.backend.fileno() >= 0:
                self.loop.remove_writer(c.backend.fileno())
            c.backend.close()
        if c.client is not None:
            c.client.close()
        self._finished(c, how, 0, 0)

    def _relay(self, c: Conn) -> None:
        assert self.loop is not None and c.backend is not None and c.client is not None
        # a TCP client has SO_OOBINLINE from the listener (start)
        inline = self.clients_inline and _family(c.client) != socket.AF_UNIX
        relay = Relay(self.loop, c.client, c.backend, self.pipes, self._relay_closed, inline)
        relay.tag = c
        c.relay = relay
        relay.start()

    def _relay_closed(self, relay: Relay, how: str) -> None:
        c: Conn = relay.tag
        relay.tag = None  # no cycle left behind: the connection's objects go by refcount
        self._finished(c, how, relay.up, relay.down)

    def _finished(self, c: Conn, how: str, up: int, down: int) -> None:
        self._forget(c.fd)
        if c.admitted.limiters:
            Admission.release(c.admitted)
        self.log.closed(self.name, c.label, c.rule, up, down, round(time.monotonic() - c.started, 6), how, c.plain)
