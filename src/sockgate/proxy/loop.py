"""The proxy's event loop: asyncio's selector loop on one epoll set that also carries the
relays' sockets, dispatched without asyncio's handles.

Why. With one worker the proxy's process is the short-connection path's bottleneck, and what
it spends over a C relay is Python time per wake-up and per connection, not system calls
(docs/benchmarks.md, issue 16). An asyncio loop watching the relays' own epoll set as one
descriptor costs two epoll waits per wake-up (the loop's, then the set's) and, per event batch,
a handle queued, popped and run through ``Context.run``; uvloop adds its own wait and, as
measured here, more context switches per connection than the standard loop. This loop keeps
asyncio for what needs it (the supervisor's signalfd, timers, the name-lookup tasks, UDP) and
lets the proxy put its hot descriptors — listeners and relay sockets — into the very epoll set
asyncio waits on, each with a handler taking the event mask, called from ``select`` itself:
one ``epoll_wait`` per wake-up, a dictionary look-up and a call per event.

A descriptor is either asyncio's (``add_reader``/``add_writer``) or the proxy's (``watch``),
never both at once. A watched socket that is closed leaves the set by itself (the relay holds
the only reference to its file); ``forget`` drops its handler, and an event for a descriptor
without a handler is ignored, which also covers one closed by an earlier handler of the same
batch. A handler that raises is reported through the loop's exception handler, as asyncio
reports a callback that raises, and the batch goes on.

With the C relay (``proxy/lane.py``, ``_lane.c``) attached, the wait itself is the lane's
``poll``: it handles the events of the descriptors the lane owns (its listeners, relay and
connecting sockets) in C and returns the others, which ``select`` dispatches as above; while
a wake-up was the lane's alone and asyncio has nothing to run, ``select`` waits again without
returning to asyncio's loop turn (``_lane_wait``).

Hand-written rather than a library: the standard library's ``selectors.EpollSelector`` is the
base; what it lacks is only the direct dispatch, a few lines.
"""

from __future__ import annotations

import asyncio
import math
import select
import selectors
import time
from typing import Callable, Protocol

Handler = Callable[[int], None]
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_MAX_EVENTS = 256
_monotonic = time.monotonic


class Poll(Protocol):
    """What the loop needs of an attached lane (``_lane.Lane``)."""

    def poll(self, timeout_ms: int, /) -> list[tuple[int, int]]: ...

    def close(self) -> None: ...


class _Selector(selectors.EpollSelector):
    """``EpollSelector`` whose ``select`` also runs the proxy's handlers (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.handlers: dict[int, Handler] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lane: Poll | None = None  # the C relay's wait, when attached (module doc)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = []
        ms = -1 if timeout is None else 0 if timeout <= 0 else math.ceil(timeout * 1e3)  # (never wake early)
        try:
            if self.lane is not None:
                events = self._lane_wait(self.lane, ms)
            else:
                events = self._selector.poll(ms * 1e-3 if ms > 0 else ms, _MAX_EVENTS)  # type: ignore[attr-defined]
        except InterruptedError:
            return ready
        handlers = self.handlers
        keys = self._fd_to_key  # type: ignore[attr-defined]
        for fd, ev in events:
            h = handlers.get(fd)
            if h is not None:
                try:
                    h(ev)
                except Exception as e:  # a bug costs that event, not the loop
                    self._report(fd, e)
                continue
            key = keys.get(fd)
            if key is not None:
                mask = (selectors.EVENT_WRITE if ev & ~_EPOLLIN else 0) | (selectors.EVENT_READ if ev & ~_EPOLLOUT else 0)
                ready.append((key, mask & key.events))
        return ready

    def _lane_wait(self, lane: Poll, ms: int) -> list[tuple[int, int]]:
        """``lane.poll`` again while it handled everything itself, until a descriptor of
        Python's is ready, the loop has work (a callback the lane's callbacks queued, a timer
        due, a stop) or ``ms`` ran out: a turn of asyncio's loop (``_run_once``) costs more
        than a wake-up of the lane, and most wake-ups of a busy proxy are the lane's alone.
        Reads asyncio's ``_ready``/``_scheduled``/``_stopping`` (the base loop's own state)."""
        loop = self.loop
        assert isinstance(loop, asyncio.base_events.BaseEventLoop)
        end = None if ms < 0 else _monotonic() + ms * 1e-3
        while True:
            events = lane.poll(ms)
            if events or ms == 0 or loop._ready or loop._stopping:  # type: ignore[attr-defined]
                return events
            if loop._scheduled:  # type: ignore[attr-defined]
                when = loop._scheduled[0].when()  # type: ignore[attr-defined]
                end = when if end is None else min(end, when)
            if end is not None:
                left = end - _monotonic()
                if left <= 0:
                    return events
                ms = math.ceil(left * 1e3)

    def _report(self, fd: int, e: Exception) -> None:
        if self.loop is not None:
            self.loop.call_exception_handler({"message": f"proxy handler for fd {fd} failed", "exception": e})




class ProxyLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with ``watch``/``forget`` for the proxy's own descriptors (module doc)."""

    def __init__(self) -> None:
        self._proxy_selector = _Selector()
        super().__init__(self._proxy_selector)
        self._proxy_selector.loop = self
        # the set and the handlers, for relay.Poller to register in directly (its hot path)
        self.epoll: select.epoll = self._proxy_selector._selector  # type: ignore[attr-defined]
        self.handlers = self._proxy_selector.handlers

    def attach(self, lane: Poll) -> None:
        """Wait through ``lane`` from now on (module doc); closed with the loop."""
        self._proxy_selector.lane = lane

    @property
    def lane(self) -> Poll | None:
        return self._proxy_selector.lane

    def close(self) -> None:
        if self.is_running():  # asyncio refuses below: refuse before the lane is touched
            raise RuntimeError("Cannot close a running event loop")
        lane, self._proxy_selector.lane = self._proxy_selector.lane, None
        if lane is not None:
            lane.close()
        super().close()

    def watch(self, fd: int, handler: Handler, events: int) -> None:
        """Call ``handler(event mask)`` from the loop's wait for ``fd`` (``events``: epoll
        flags, edge-triggered or not)."""
        sel = self._proxy_selector
        sel._selector.register(fd, events)  # type: ignore[attr-defined]
        sel.handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        """Stop watching an open ``fd``."""
        sel = self._proxy_selector
        if sel.handlers.pop(fd, None) is not None:
            try:
                sel._selector.unregister(fd)  # type: ignore[attr-defined]
            except OSError:
                pass  # already closed: the kernel dropped it

    def forget(self, fd: int) -> None:
        """Drop the handler of a descriptor that was (or is about to be) closed."""
        self._proxy_selector.handlers.pop(fd, None)


def add_reader(loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]) -> None:
    """``loop.add_reader(fd, callback)``; on a ``ProxyLoop`` a level-triggered ``watch``, so
    an accept wake-up costs no asyncio handle (listeners)."""
    if isinstance(loop, ProxyLoop):
        loop.watch(fd, lambda _ev: callback(), _EPOLLIN)
    else:
        loop.add_reader(fd, callback)


def remove_reader(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Undo ``add_reader``."""
    if isinstance(loop, ProxyLoop):
        loop.unwatch(fd)
    else:
        loop.remove_reader(fd)
