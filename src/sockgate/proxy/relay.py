"""The byte relay between a client and a backend socket, on an asyncio event loop.

Theory of operation. A ``Relay`` owns two connected, non-blocking stream sockets and runs
two one-way ``_Pump``s. The sockets of all relays sit in one edge-triggered epoll set (a
``Poller``), registered once for input and output when the relay starts and removed by the
kernel when they are closed; the event loop watches only that set's descriptor. That makes
a connection cost two ``epoll_ctl`` calls in all: the loop's own ``add_reader`` /
``remove_reader`` cost about six system calls per socket under uvloop (libuv probes every
new descriptor with an add and a delete, switches it to non-blocking again, and deletes it
once more when it is stopped), which measured as the largest share of the short-connection
path's system calls. Edge-triggered readiness also means a pump never has to switch its
registration between "read the source" and "wait for the destination": it remembers that
the source is readable and that it waits for the destination, and events only set flags.

Copy first, splice later (haproxy's splice-auto). A pump starts by copying: ``recv`` into one
scratch buffer shared by every pump of the loop, ``send`` from it at once (only bytes the
destination would not take are copied out, into the pump's own buffer). Once a read fills
the scratch buffer the connection carries enough to pay for a pipe, and the pump switches to
``splice(2)``: socket → pipe → socket, so the bytes stay in the kernel (zero copy;
``SPLICE_F_MOVE`` only — ``SPLICE_F_MORE`` acts like ``MSG_MORE`` and held small replies back
by ~200 ms). On a 64-byte exchange a splice costs more than the copy it saves (two pipe
operations per direction, and a pipe to take from the pool), so a short connection never
touches a pipe. Pipes come from a ``PipePool`` and are held only while they carry bytes, so
an idle connection holds none. Without splice (other systems, ``--no-splice``, a socket
type that refuses it) a pump keeps copying.

The same first full read marks the direction as a bulk transfer: a destination socket to
this host that BBR paces then leaves BBR (``proxy/pacing.py``).

Copying reads and writes pass ``MSG_DONTWAIT``, so an accepted socket needs no ``O_NONBLOCK``
(one ``ioctl`` per connection saved); a pump that switches to splice makes both sockets
non-blocking first: ``SPLICE_F_NONBLOCK`` makes only the pipe end non-blocking, and a splice
from or into a blocking socket waits for it (``tcp_splice_read`` looks at the file's
``O_NONBLOCK`` alone).

Correctness rules the pumps keep:

* edge-triggered reading — a pump reads until ``EAGAIN`` or end of file, except after a read
  that provably emptied a TCP socket: a splice that filled fewer pipe slots than the pipe
  has (``tcp_read_sock`` stops only when the queue is empty, the pipe is full or a FIN is
  reached) or a ``recv`` shorter than the buffer, and only when the event did not already
  report a hang-up (then the FIN may sit behind the data and no further edge would come);
  Unix stream sockets are always read to ``EAGAIN``;
* backpressure — when the destination would block, the pump stops reading its source and
  waits for the destination's next output edge; at most one pipe (1 MiB) is in flight;
* half-close — end of file from one side becomes ``shutdown(SHUT_WR)`` on the other once the
  pipe is drained; the relay ends when both directions have ended;
* urgent data — ``splice`` stops at a TCP urgent mark and makes no progress past it (it
  even returns 0 there once a FIN is queued behind the mark), a ``recv`` stops short before
  it, and a ``recv`` that starts at it skips the byte unless ``SO_OOBINLINE`` is set. So the
  first ``EPOLLPRI``, or a ``splice`` end of file that ``SIOCATMARK`` shows is the mark,
  switches that pump to copying in line and reading to ``EAGAIN``: the urgent byte is
  forwarded in line, in order (its urgency is not re-created on the other side, as with
  most relays). A copying read must never *start* at a mark of a socket that is not in line.
  Accepted sockets inherit ``SO_OOBINLINE`` from the listener (``client_inline``), Unix
  stream sockets are set in line when the relay starts; a backend socket is set in line
  before its second read only: its first read comes from an event seen before any of its
  bytes was consumed, so if the stream starts with an urgent byte that event carries
  ``EPOLLPRI``, and otherwise the read stops short before any mark (it copied bytes first).
  A later read could meet a mark that arrived after the event (an edge queued for bytes an
  earlier read already took), unless the event showed the peer's end without ``EPOLLPRI``:
  then every byte, urgent or not, came before it and the event saw them. So a short
  exchange pays no ``setsockopt`` for it;
* resets — a reset (or broken pipe) on one side is propagated as a reset on the other
  (``SO_LINGER`` 0 then close), and both sockets are closed at once;
* timeouts — ``last_activity`` is updated on every event; the server sweeps relays and calls
  ``abort`` on idle ones, so no connection can hang.

Every loop is bounded (``_BURST`` operations per callback; a pump that used its burst up
continues from ``call_soon``) so one busy connection cannot starve the others.

The proxy's default relay is the C port of this module (``_lane.c``, ``lane.py``); this one is
its fallback and the oracle its tests compare it with: a rule changed here is changed there.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import fcntl
import os
import select
import socket
import struct
import time
from typing import Any, Callable

from sockgate.proxy.loop import ProxyLoop
from sockgate.proxy.pacing import unpace

F_SETPIPE_SZ = 1031  # <linux/fcntl.h> (F_LINUX_SPECIFIC_BASE + 7)
SIOCATMARK = 0x8905  # <asm-generic/sockios.h>
SPLICE_F_MOVE = 1  # <linux/splice.h>
SPLICE_F_NONBLOCK = 2
_SPLICE = hasattr(os, "splice")
if _SPLICE:
    _splice = os.splice  # (pumps splice only where it exists)
_monotonic = time.monotonic
_FLAGS = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
PIPE_SIZE = 1 << 20
COPY_SIZE = 1 << 16
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_DEFAULT_SLOTS = 16  # a pipe the kernel did not let us grow: 16 buffers (pipe_def_buffers)
_BURST = 16
_DONTWAIT = socket.MSG_DONTWAIT
_LINGER0 = struct.pack("ii", 1, 0)
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH})
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_HANGUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_URGENT = select.EPOLLPRI
_ERROR = select.EPOLLERR
_INPUT = _EPOLLIN | _URGENT | _HANGUP
_OUTPUT = _EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_WATCH = _EPOLLIN | _URGENT | _EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET

Pipe = tuple[int, int, int]  # read end, write end, buffer slots


class PipePool:
    """Non-blocking pipes of ``size`` bytes, reused; at most ``keep`` kept idle. With
    ``splice=False`` the relays only copy (measuring, or a kernel whose splice misbehaves);
    ``cc`` is the congestion control a bulk loopback leg gets (``pacing.choose_cc``).
    Also holds the ``Poller`` of the process's event loop and the scratch buffer its pumps
    copy through (one loop, one thread: a pump uses it only between a read and the write
    that follows it)."""

    def __init__(self, size: int = PIPE_SIZE, keep: int = 64, splice: bool = _SPLICE, big: int = 256,
                 cc: bytes = b"") -> None:
        self.size = size
        self.cc = cc  # a bulk loopback leg's congestion control (pacing.py); b"": keep the system's
        self.keep = keep
        self.splice = splice and _SPLICE
        self.big = big  # at most this many large pipes in use: bounds the kernel memory pinned
        self.in_use = 0  # by slow readers (a full pipe holds `size` bytes) to big * size
        self.idle: list[Pipe] = []
        self._poller: Poller | None = None
        self.scratch = memoryview(bytearray(COPY_SIZE))

    def poller(self, loop: asyncio.AbstractEventLoop) -> "Poller":
        if self._poller is None or self._poller.loop is not loop:
            if self._poller is not None:
                self._poller.close()
            self._poller = Poller(loop)
        return self._poller

    def acquire(self) -> Pipe:
        self.in_use += 1
        if self.idle:
            return self.idle.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        slots = _DEFAULT_SLOTS
        if self.in_use <= self.big:
            try:
                slots = fcntl.fcntl(w, F_SETPIPE_SZ, self.size) // _PAGE
            except OSError:
                pass  # over fs.pipe-max-size or the per-user pipe quota: the default size works
        return r, w, slots

    def release(self, pipe: Pipe) -> None:
        """Give back an *empty* pipe."""
        if len(self.idle) < self.keep:
            self.in_use -= 1
            self.idle.append(pipe)
        else:
            self.discard(pipe)

    def discard(self, pipe: Pipe) -> None:
        self.in_use -= 1
        os.close(pipe[0])
        os.close(pipe[1])

    def close(self) -> None:
        while self.idle:
            r, w, _ = self.idle.pop()
            os.close(r)
            os.close(w)
        if self._poller is not None:
            self._poller.close()
            self._poller = None


class Poller:
    """One edge-triggered epoll set for every relay socket of a loop.

    A socket is registered once (input, output, peer hang-up; edge-triggered) with a handler
    taking the event mask; closing the socket removes it from the set (the relay owns the only
    reference to the file), so ``forget`` only drops the handler. Events for a descriptor
    whose handler is gone are ignored, which also covers a descriptor closed by an earlier
    handler of the same batch. On the proxy's own loop (``loop.ProxyLoop``) the set is the
    loop's: one wait per wake-up, handlers called from it; on any other loop the set is this
    poller's, and the loop watches its descriptor."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.own = not isinstance(loop, ProxyLoop)
        if isinstance(loop, ProxyLoop):
            self.ep, self.handlers = loop.epoll, loop.handlers
        else:
            self.ep, self.handlers = select.epoll(), {}
            loop.add_reader(self.ep.fileno(), self._dispatch)

    def register(self, fd: int, handler: Callable[[int], None]) -> None:
        self.handlers[fd] = handler
        self.ep.register(fd, _WATCH)

    def forget(self, fd: int) -> None:
        self.handlers.pop(fd, None)

    def _dispatch(self) -> None:
        handlers = self.handlers
        for fd, ev in self.ep.poll(0, 256):
            h = handlers.get(fd)
            if h is not None:
                h(ev)

    def close(self) -> None:
        if not self.own or self.ep.closed:  # (the loop's set is the loop's to close)
            return
        if not self.loop.is_closed():
            self.loop.remove_reader(self.ep.fileno())
        self.ep.close()


class _Pump:
    """One direction: ``src`` → ``dst``."""

    __slots__ = (
        "relay", "src", "dst", "sfd", "dfd", "tcp", "pipe", "pending", "buf", "off", "readable", "hangup",
        "blocked", "queued", "eof", "done", "urgent", "plain_end", "bytes", "splice", "may_splice", "chunk",
        "inline", "clean_end", "bulk",
    )  # two per connection, their fields read on every event

    def __init__(self, relay: "Relay", src: _socket.socket, dst: _socket.socket, inline: bool = False) -> None:
        self.relay = relay
        self.src = src
        self.dst = dst
        self.sfd = src.fileno()
        self.dfd = dst.fileno()
        self.tcp = _socket.socket.family.__get__(src) != socket.AF_UNIX
        self.bulk = False  # a read filled the copy buffer (unpace)
        self.pipe: Pipe | None = None
        self.pending = 0  # bytes in the pipe (splice) or in buf (copy)
        self.buf: memoryview | None = None  # copy: the pending bytes (the pool's scratch or our own)
        self.off = 0
        self.readable = False  # an input edge came and the source was not read empty since
        self.hangup = False  # that edge reported a hang-up or error: read to EAGAIN/EOF
        self.blocked = False  # the destination would block: wait for its output edge
        self.queued = False  # a continuation is scheduled (burst used up)
        self.eof = False
        self.done = False
        self.urgent = False  # TCP urgent data was seen: copy in line, read to EAGAIN
        self.plain_end = False  # an event showed the peer's end and no urgent data before it
        self.clean_end = False  # the last event showing the peer's end showed no error
        self.bytes = 0
        self.splice = False  # copy first (module doc)
        self.may_splice = relay.pipes.splice
        self.chunk = relay.pipes.size
        self.inline = inline  # src delivers urgent bytes in line (SO_OOBINLINE)
        if not self.tcp and not inline:
            # Unix stream out-of-band bytes (Linux 5.15+) are skipped by reads unless in line,
            # and a read may pass one before its EPOLLPRI is seen: in line from the start.
            self._inline()

    def _inline(self) -> None:
        _inline(self.src)
        self.inline = True

    def on_input(self, ev: int) -> None:
        self.readable = True
        if ev & _HANGUP:
            self.hangup = True
            if not ev & _URGENT:
                self.plain_end = True
            self.clean_end = not ev & _ERROR
        if ev & _URGENT and not self.urgent:
            self._urgent()
        if not self.blocked:
            self.run()

    def _urgent(self) -> None:
        """TCP urgent data is (or may be) ahead: from now on read in line, to EAGAIN, by
        copying (``_fill`` switches once the pipe is empty)."""
        self.urgent = True
        if not self.inline:
            self._inline()

    def on_output(self) -> None:
        if self.blocked:
            self.blocked = False
            self.run()

    def _resume(self) -> None:
        self.queued = False
        if not self.blocked:
            self.run()

    def run(self) -> None:
        if self.done:  # (a stopped pump may have no relay left: see Relay._close)
            return
        relay = self.relay
        if relay.closed:
            return
        relay.last_activity = _monotonic()
        try:
            if self.pending and not self._drain():
                self.blocked = True
                return
            for _ in range(_BURST):
                if not self.readable or self.eof:
                    break
                n = self._fill()
                if n is None:
                    self.readable = False
                    break
                if n == 0:
                    if self.splice and self.tcp and not self.plain_end and _at_urgent_mark(self.sfd):
                        # splice also returns 0 at an urgent mark once a FIN is queued
                        # behind it: not the end; copy from here (see the module doc). An
                        # event that showed the end without EPOLLPRI rules that out, and
                        # saves the ioctl on the usual path.
                        self._urgent()
                        continue
                    # a reset after the peer's FIN reads as end of file (recv and splice
                    # check SOCK_DONE before sk_err): the pending socket error tells them
                    # apart. An event that showed the end without EPOLLERR saw no such reset
                    # (one that comes later is as late as one after this check would be).
                    if not self.clean_end:
                        err = self.src.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise OSError(err, os.strerror(err))
                    self.eof = True
                    break
                if not self._drain():
                    self.blocked = True
                    return
                if n == COPY_SIZE and not self.bulk:
                    self.bulk = True  # a full buffer: a bulk transfer
                    if relay.pipes.cc:
                        unpace(self.dst, relay.pipes.cc)  # (a Unix socket refuses the getsockopt: kept)
                if n == COPY_SIZE and not self.splice and self.may_splice and not self.urgent:
                    self._to_splice()  # ... enough traffic to pay for a pipe
                if not self.hangup and n < self._empty_below():
                    self.readable = False  # the read emptied the socket: skip the EAGAIN read
                    break
            else:
                if self.readable and not self.queued:
                    self.queued = True
                    relay.loop.call_soon(self._resume)
                return
            if self.eof:
                self._finish()
            elif self.pipe is not None and self.pending == 0:
                relay.pipes.release(self.pipe)
                self.pipe = None
        except OSError as e:
            relay.failed(self, e)

    def _empty_below(self) -> int:
        """A read of fewer bytes than this left the source empty (see the module doc)."""
        if not self.tcp or self.urgent:
            return 0  # Unix stream reads stop between writers of different credentials, and
            # TCP reads at an urgent mark
        if not self.splice:
            return COPY_SIZE
        if self.pipe is not None:
            return self.pipe[2]  # fewer bytes than slots: the pipe was not full
        return 0

    def _fill(self) -> int | None:
        """Read once from src into the pipe/buffer: bytes read, 0 at EOF, None if it would block."""
        if self.splice and self.urgent and not self.pending:
            self._to_copy()  # splice cannot pass an urgent mark
        if self.splice:
            pipe = self.pipe
            if pipe is None:
                pipe = self.pipe = self.relay.pipes.acquire()
            try:
                n = _splice(self.sfd, pipe[1], self.chunk, None, None, _FLAGS)
            except BlockingIOError:
                return None
            except OSError as e:
                if e.errno != errno.EINVAL or self.pending:
                    raise
                self._to_copy()
                return self._fill()
        else:
            if not self.inline and self.bytes and not self.plain_end:
                self._inline()  # not the first read: it might start at a mark (module doc)
            buf = self.buf = self.relay.pipes.scratch
            try:
                n = self.src.recv_into(buf, COPY_SIZE, _DONTWAIT)
            except BlockingIOError:
                return None
            self.off = 0
        self.pending += n
        self.bytes += n
        return n

    def _to_splice(self) -> None:
        """Splice from now on, with both sockets non-blocking (module doc)."""
        for s in (self.src, self.dst):
            if s.getblocking():  # (no system call: Python's own record)
                s.setblocking(False)
        self.splice = True

    def _to_copy(self) -> None:
        """Copy from now on: an urgent mark ahead, or a socket pair that cannot splice (EINVAL)."""
        if self.pipe is not None:
            self.relay.pipes.release(self.pipe)
            self.pipe = None
        self.splice = False
        self.may_splice = False

    def _drain(self) -> bool:
        """Write what is pending to dst; False when dst would block first."""
        while self.pending:
            try:
                if self.splice:
                    assert self.pipe is not None
                    n = _splice(self.pipe[0], self.dfd, self.pending, None, None, _FLAGS)
                else:
                    buf = self.buf
                    assert buf is not None
                    off = self.off
                    n = self.dst.send(buf[off : off + self.pending], _DONTWAIT)
                    self.off = off + n
            except BlockingIOError:
                if not self.splice and self.buf is self.relay.pipes.scratch:
                    # the scratch buffer is the next read's: keep what is left in our own
                    self.buf = memoryview(bytes(self.buf[self.off : self.off + self.pending]))
                    self.off = 0
                return False
            self.pending -= n
        return True

    def _finish(self) -> None:
        """Source ended and everything was delivered: half-close the destination."""
        self.done = True
        self.buf = None
        if self.pipe is not None:
            self.relay.pipes.release(self.pipe)
            self.pipe = None
        other = self.relay.downstream if self is self.relay.upstream else self.relay.upstream
        if not other.done:  # when both are done, close() sends the FIN itself
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the other side is already gone; its own pump will notice
        self.relay.pump_done()

    def stop(self) -> None:
        self.done = True
        self.buf = None
        if self.pipe is not None:
            if self.pending:
                self.relay.pipes.discard(self.pipe)
            else:
                self.relay.pipes.release(self.pipe)
            self.pipe = None


class Relay:
    """Relays ``client`` ⇄ ``backend`` until both directions end, one resets, or ``abort``.

    ``on_close(relay, how)`` is called exactly once with ``how`` one of ``"closed"`` (both
    sides finished), ``"reset by client"``, ``"reset by backend"``, or the reason given to
    ``abort``. ``up``/``down`` are the byte counts client→backend and backend→client.
    ``client_inline``: the client socket already has ``SO_OOBINLINE`` (inherited from a
    listener that has it); otherwise the relay sets it before its first read."""

    __slots__ = ("loop", "client", "backend", "pipes", "on_close", "started", "last_activity", "closed", "tag",
                 "upstream", "downstream", "poller")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: _socket.socket,
        backend: _socket.socket,
        pipes: PipePool,
        on_close: Callable[["Relay", str], None],
        client_inline: bool = False,
    ) -> None:
        self.loop = loop
        self.client = client
        self.backend = backend
        self.pipes = pipes
        self.on_close = on_close
        self.started = time.monotonic()
        self.last_activity = self.started
        self.closed = False
        self.tag: Any = None  # the owner's book-keeping for this connection
        self.upstream = _Pump(self, client, backend, client_inline)
        self.downstream = _Pump(self, backend, client)
        self.poller: Poller | None = None

    def start(self) -> None:
        """Watch both sockets, then read the client at once: most clients have sent their
        first bytes by the time the proxy accepted and reached the backend (on loopback,
        before ``accept`` even returned), and reading now saves a turn of the event loop.
        The edge that registration queues for those bytes finds them read and does nothing;
        if nothing was there, one ``EAGAIN`` is all it cost."""
        self.poller = self.pipes.poller(self.loop)
        self.poller.register(self.upstream.sfd, self._client_event)
        self.poller.register(self.downstream.sfd, self._backend_event)
        if not self.upstream.inline:
            self.upstream._inline()  # this first read comes from no event (the module doc)
        self.upstream.on_input(_EPOLLIN)

    def _client_event(self, ev: int) -> None:
        """An edge on the client socket: upstream reads from it, downstream writes to it."""
        if ev & _OUTPUT and self.downstream.blocked:
            self.downstream.on_output()
        if ev & _INPUT and not self.upstream.done:
            self.upstream.on_input(ev)

    def _backend_event(self, ev: int) -> None:
        if ev & _OUTPUT and self.upstream.blocked:
            self.upstream.on_output()
        if ev & _INPUT and not self.downstream.done:
            self.downstream.on_input(ev)

    @property
    def up(self) -> int:
        return self.upstream.bytes

    @property
    def down(self) -> int:
        return self.downstream.bytes

    def pump_done(self) -> None:
        if self.upstream.done and self.downstream.done:
            self._close("closed", reset=False)

    def failed(self, pump: _Pump, exc: OSError) -> None:
        """An error on a pump: reset both sides and say which side failed."""
        if exc.errno not in _RESET_ERRNOS and exc.errno is not None and exc.errno != errno.ENOTCONN:
            how = f"error: {os.strerror(exc.errno)}"
        else:
            # A read error belongs to the pump's source; a write error to its destination.
            side = pump.src if pump.pending == 0 else pump.dst
            how = "reset by client" if side is self.client else "reset by backend"
        self._close(how, reset=True)

    def abort(self, reason: str) -> None:
        """Close both sides now with a reset (idle timeout, shutdown deadline)."""
        self._close(reason, reset=True)

    def _close(self, how: str, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.upstream.stop()
        self.downstream.stop()
        if self.poller is not None:
            self.poller.forget(self.upstream.sfd)
            self.poller.forget(self.downstream.sfd)
        for s in (self.client, self.backend):
            if reset:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
                except OSError:
                    pass
            s.close()
        self.on_close(self, how)
        # No cycle left behind (relay <-> pumps): the connection's objects go by refcount,
        # not by a garbage collection. Stopped pumps do not touch their relay again.
        del self.upstream.relay, self.downstream.relay


def _at_urgent_mark(fd: int) -> bool:
    """``SIOCATMARK``: the next byte to read is TCP urgent data."""
    (mark,) = struct.unpack("i", fcntl.ioctl(fd, SIOCATMARK, b"\0\0\0\0"))
    return bool(mark)


def _inline(s: _socket.socket) -> None:
    """Deliver urgent (out-of-band) bytes in the stream: ``SO_OOBINLINE``."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    except OSError:
        pass  # the socket is failing; its next read reports it


def reset_close(s: _socket.socket) -> None:
    """Close ``s`` with a reset (SO_LINGER 0): no FIN, no TIME_WAIT; for refused clients."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    except OSError:
        pass
    s.close()
