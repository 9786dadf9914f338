"""The byte relay between a client and a backend socket, on an asyncio event loop.

Theory of operation. A ``Relay`` owns two connected, non-blocking stream sockets and runs
two one-way ``_Pump``s on raw readiness callbacks (``add_reader``/``add_writer``), not on
coroutines or streams: a callback per readiness event is the cheapest thing asyncio (and
uvloop) can do, and the relay never buffers more than one pipe's worth per direction.

On Linux each pump moves data with ``splice(2)``: socket → pipe → socket, so the bytes stay
in the kernel (zero copy; ``SPLICE_F_MOVE`` only — ``SPLICE_F_MORE`` acts like ``MSG_MORE``
and held small replies back by ~200 ms). Pipes come from a ``PipePool`` and are held only
while they carry bytes, so an idle connection holds no pipe and a short one costs no
``pipe2``. Elsewhere (or if a socket type refuses splice) the pump copies through one buffer.

Correctness rules the pumps keep:

* backpressure — when the destination would block, the pump stops reading its source and
  waits for the destination to become writable; at most one pipe (1 MiB) is in flight;
* half-close — end of file from one side becomes ``shutdown(SHUT_WR)`` on the other once the
  pipe is drained; the relay ends when both directions have ended;
* resets — a reset (or broken pipe) on one side is propagated as a reset on the other
  (``SO_LINGER`` 0 then close), and both sockets are closed at once;
* timeouts — ``last_activity`` is updated on every event; the server sweeps relays and calls
  ``abort`` on idle ones, so no connection can hang.

Every loop is bounded (``_BURST`` operations per callback) so one busy connection cannot
starve the others.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import time
from typing import Any, Callable

F_SETPIPE_SZ = 1031  # <linux/fcntl.h> (F_LINUX_SPECIFIC_BASE + 7)
SPLICE_F_MOVE = 1  # <linux/splice.h>
SPLICE_F_NONBLOCK = 2
_SPLICE = hasattr(os, "splice")
_FLAGS = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
PIPE_SIZE = 1 << 20
COPY_SIZE = 1 << 16
_BURST = 16
_LINGER0 = struct.pack("ii", 1, 0)
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH})


class PipePool:
    """Non-blocking pipes of ``size`` bytes, reused; at most ``keep`` kept idle. With
    ``splice=False`` the relays copy through a buffer instead (measuring, or a kernel whose
    splice misbehaves)."""

    def __init__(self, size: int = PIPE_SIZE, keep: int = 64, splice: bool = _SPLICE, big: int = 256) -> None:
        self.size = size
        self.keep = keep
        self.splice = splice and _SPLICE
        self.big = big  # at most this many large pipes in use: bounds the kernel memory pinned
        self.in_use = 0  # by slow readers (a full pipe holds `size` bytes) to big * size
        self.idle: list[tuple[int, int]] = []

    def acquire(self) -> tuple[int, int]:
        self.in_use += 1
        if self.idle:
            return self.idle.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.in_use <= self.big:
            try:
                fcntl.fcntl(w, F_SETPIPE_SZ, self.size)
            except OSError:
                pass  # over fs.pipe-max-size or the per-user pipe quota: the default size works
        return r, w

    def release(self, pipe: tuple[int, int]) -> None:
        """Give back an *empty* pipe."""
        if len(self.idle) < self.keep:
            self.in_use -= 1
            self.idle.append(pipe)
        else:
            self.discard(pipe)

    def discard(self, pipe: tuple[int, int]) -> None:
        self.in_use -= 1
        os.close(pipe[0])
        os.close(pipe[1])

    def close(self) -> None:
        while self.idle:
            r, w = self.idle.pop()
            os.close(r)
            os.close(w)


class _Pump:
    """One direction: ``src`` → ``dst``."""

    def __init__(self, relay: "Relay", src: socket.socket, dst: socket.socket) -> None:
        self.relay = relay
        self.src = src
        self.dst = dst
        self.sfd = src.fileno()
        self.dfd = dst.fileno()
        self.pipe: tuple[int, int] | None = None
        self.pending = 0  # bytes in the pipe (splice) or in buf (copy)
        self.buf: memoryview | None = None
        self.off = 0
        self.eof = False
        self.done = False
        self.bytes = 0
        self.splice = relay.pipes.splice

    def start(self) -> None:
        self.relay.loop.add_reader(self.sfd, self.on_readable)

    def on_readable(self) -> None:
        relay = self.relay
        relay.last_activity = time.monotonic()
        try:
            for _ in range(_BURST):
                n = self._fill()
                if n is None:
                    break
                short = n < COPY_SIZE
                if n == 0:
                    # splice reports a reset as end of file (tcp_splice_read checks SOCK_DONE
                    # before sk_err): the pending socket error tells them apart.
                    err = self.src.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    self.eof = True
                    break
                if not self._drain():
                    relay.loop.remove_reader(self.sfd)
                    relay.loop.add_writer(self.dfd, self.on_writable)
                    return
                if short:
                    break  # a small read: the socket is most likely empty; skip the EAGAIN
                    # read (epoll calls again if not). Bulk reads keep looping.
            if self.eof:
                relay.loop.remove_reader(self.sfd)
                self._finish()
            elif self.pipe is not None and self.pending == 0:
                relay.pipes.release(self.pipe)
                self.pipe = None
        except OSError as e:
            relay.failed(self, e)

    def on_writable(self) -> None:
        relay = self.relay
        relay.last_activity = time.monotonic()
        try:
            if not self._drain():
                return
            relay.loop.remove_writer(self.dfd)
            if self.eof:
                self._finish()
            else:
                relay.loop.add_reader(self.sfd, self.on_readable)
        except OSError as e:
            relay.failed(self, e)

    def _fill(self) -> int | None:
        """Read once from src into the pipe/buffer: bytes read, 0 at EOF, None if it would block."""
        if self.splice:
            if self.pipe is None:
                self.pipe = self.relay.pipes.acquire()
            try:
                n = os.splice(self.sfd, self.pipe[1], self.relay.pipes.size, flags=_FLAGS)
            except BlockingIOError:
                return None
            except OSError as e:
                if e.errno != errno.EINVAL or self.pending:
                    raise
                self._to_copy()
                return self._fill()
        else:
            if self.buf is None:
                self.buf = memoryview(bytearray(COPY_SIZE))
            try:
                n = self.src.recv_into(self.buf)
            except BlockingIOError:
                return None
            self.off = 0
        self.pending += n
        self.bytes += n
        return n

    def _to_copy(self) -> None:
        """This socket pair cannot splice: fall back to copying (EINVAL from splice)."""
        if self.pipe is not None:
            self.relay.pipes.release(self.pipe)
            self.pipe = None
        self.splice = False

    def _drain(self) -> bool:
        """Write what is pending to dst; False when dst would block first."""
        while self.pending:
            try:
                if self.splice:
                    assert self.pipe is not None
                    n = os.splice(self.pipe[0], self.dfd, self.pending, flags=_FLAGS)
                else:
                    assert self.buf is not None
                    n = self.dst.send(self.buf[self.off : self.off + self.pending])
                    self.off += n
            except BlockingIOError:
                return False
            self.pending -= n
        return True

    def _finish(self) -> None:
        """Source ended and everything was delivered: half-close the destination."""
        self.done = True
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
        loop = self.relay.loop
        loop.remove_reader(self.sfd)
        loop.remove_writer(self.dfd)
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
    ``abort``. ``up``/``down`` are the byte counts client→backend and backend→client."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        backend: socket.socket,
        pipes: PipePool,
        on_close: Callable[["Relay", str], None],
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
        self.upstream = _Pump(self, client, backend)
        self.downstream = _Pump(self, backend, client)

    def start(self) -> None:
        self.upstream.start()
        self.downstream.start()

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
        for s in (self.client, self.backend):
            if reset:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
                except OSError:
                    pass
            s.close()
        self.on_close(self, how)


def reset_close(s: socket.socket) -> None:
    """Close ``s`` with a reset (SO_LINGER 0): no FIN, no TIME_WAIT; for refused clients."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    except OSError:
        pass
    s.close()
