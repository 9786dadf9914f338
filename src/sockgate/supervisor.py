"""One supervisor for every long-running command: signals, reload, sd_notify, drain.

``sockgate run`` (a child to watch), ``run --inetd`` (an accept loop) and the proxy (asyncio)
each need the same things around their own work: SIGHUP reloads, SIGTERM/SIGINT stop
accepting and drain for a while, SIGCHLD reaps, and systemd hears ``READY=1``,
``RELOADING=1`` (with ``MONOTONIC_USEC``), ``STOPPING=1`` and ``STATUS=`` at the right
moments. Written three times, the three drifted (one let a broken ``NOTIFY_SOCKET`` stop the
command, another swallowed it silently). Here it is written once, as a state machine driven by
signal records, and a command supplies only a ``Lifecycle``.

Signals come through one descriptor (``linux.signalfd``), so the same supervisor runs in a
blocking loop, a ``selectors`` loop next to listeners, or asyncio: each of those only has to
``watch`` a descriptor and ``call_later``. The signals are blocked while the supervisor runs;
``child_mask`` is the mask every exec'd child must get back. Start the supervisor before any
thread exists: threads inherit the mask of the thread that creates them, and a thread with the
signals unblocked would take them the ordinary way.

Rules of the state machine (tests/core/test_supervisor.py):

* SIGHUP while running: ``RELOADING=1``, ``Lifecycle.reload`` (all-or-nothing; it reports its
  own outcome; an exception is reported here and the running state stays), ``READY=1``.
  While draining, a reload is skipped: the command is going away;
* the first SIGTERM/SIGINT: ``STOPPING=1``, ``Lifecycle.stop``, then drain: the command ends
  once ``busy()`` is false, or at the deadline after ``abort()``;
* every signal, handled here or not, then goes to ``Lifecycle.on_signal`` (SIGCHLD to reap,
  other signals to forward); a command that ends by itself says so through ``ended()``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import selectors
import signal
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Protocol

from sockgate.errors import SockgateError
from sockgate.linux import activation
from sockgate.linux.signalfd import SigInfo, open_signalfd, read_pending

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
DEFAULT_SIGNALS = frozenset({signal.SIGHUP, signal.SIGCHLD, *STOP_SIGNALS})
DRAIN_POLL = 0.05  # seconds between busy() checks while draining with a deadline

Cancel = Callable[[], None]


def failure_text(e: BaseException) -> str:
    """An error for a one-line report: ours as they are, anything else named as internal."""
    return str(e) if isinstance(e, SockgateError) else f"internal error {type(e).__name__}: {e}"


class Loop(Protocol):
    """The command's event loop, as far as the supervisor needs it."""

    def watch(self, fd: int, callback: Callable[[], None]) -> None: ...

    def unwatch(self, fd: int) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancel: ...

    def stop(self) -> None: ...


class Lifecycle(Protocol):
    """What a command supplies."""

    @property
    def drain_timeout(self) -> float | None: ...  # None: wait as long as busy()

    def reload(self) -> None: ...  # all-or-nothing; reports its own outcome

    def stop(self) -> None: ...  # stop accepting

    def busy(self) -> bool: ...  # work left to drain

    def abort(self) -> None: ...  # the drain deadline passed

    def on_signal(self, info: SigInfo) -> None: ...  # SIGCHLD, signals to forward

    def ended(self) -> int | None: ...  # the exit status once the command is over by itself


class SignalSource(Protocol):
    """Where signal records come from: a signalfd, or a fake in tests."""

    def open(self, signals: frozenset[int]) -> int: ...  # the descriptor to watch

    def read(self) -> list[SigInfo]: ...

    def child_mask(self) -> set[int]: ...

    def close(self) -> None: ...


class SignalFd:
    """The real source: block the signals in this thread, read them from a signalfd."""

    def __init__(self) -> None:
        self.fd = -1
        self.saved: set[int] = set()
        self.blocked: frozenset[int] = frozenset()

    def open(self, signals: frozenset[int]) -> int:
        if signal.SIGCHLD in signals:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # an inherited SIG_IGN would reap behind our back
        self.saved = {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, signals)}
        self.blocked = signals
        self.fd = open_signalfd(signals)
        return self.fd

    def read(self) -> list[SigInfo]:
        return read_pending(self.fd)

    def child_mask(self) -> set[int]:
        return set(self.saved)

    def close(self) -> None:
        if self.fd >= 0:
            read_pending(self.fd)  # the command is over: a late SIGHUP must not kill it on unblock
            os.close(self.fd)
            self.fd = -1
            signal.pthread_sigmask(signal.SIG_SETMASK, self.saved)


class Notifier:
    """sd_notify in one place: off unless enabled; a broken ``NOTIFY_SOCKET`` is reported
    once and never stops the command."""

    def __init__(self, enabled: bool, say: Callable[[str], None]) -> None:
        self.enabled = enabled
        self.say = say
        self.failed = False

    def _send(self, send: Callable[[], bool]) -> None:
        if not self.enabled or self.failed:
            return
        try:
            send()
        except SockgateError as e:
            self.failed = True
            self.say(f"sd_notify: {e}; no further notifications")

    def ready(self) -> None:
        self._send(activation.ready)

    def reloading(self) -> None:
        self._send(activation.reloading)

    def stopping(self) -> None:
        self._send(activation.stopping)

    def status(self, text: str) -> None:
        self._send(lambda: activation.status(text))


class State(str, Enum):
    IDLE = "idle"  # not started
    RUNNING = "running"
    DRAINING = "draining"
    DONE = "done"


class Supervisor:
    def __init__(
        self,
        lifecycle: Lifecycle,
        notifier: Notifier,
        signals: frozenset[int] = DEFAULT_SIGNALS,
        source: SignalSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifecycle = lifecycle
        self.notifier = notifier
        self.signals = signals
        self.source: SignalSource = source if source is not None else SignalFd()
        self.clock = clock
        self.state = State.IDLE
        self.status: int | None = None  # the exit status, once DONE
        self.loop: Loop | None = None
        self.fd = -1
        self.deadline: float | None = None
        self.said_stopping = False

    def start(self, loop: Loop) -> None:
        """Block the signals, open their descriptor, watch it."""
        self.loop = loop
        self.fd = self.source.open(self.signals)
        loop.watch(self.fd, self.on_readable)
        self.state = State.RUNNING

    def ready(self) -> None:
        """``READY=1``: the command says it serves."""
        self.notifier.ready()

    def child_mask(self) -> set[int]:
        """The signal mask every exec'd child must get back."""
        return self.source.child_mask()

    def forget(self) -> None:
        """In a forked child: drop what came from the parent's supervisor; the signals stay
        blocked until the child's own supervisor reads them."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def close(self) -> None:
        if self.loop is not None and self.fd >= 0:
            self.loop.unwatch(self.fd)
        self.fd = -1
        self.source.close()

    # -- the state machine ---------------------------------------------------------------

    def on_readable(self) -> None:
        self.handle(self.source.read())

    def handle(self, infos: list[SigInfo]) -> None:
        for info in infos:
            if self.state is State.DONE:
                return
            if info.signo == signal.SIGHUP:
                self._reload()
            elif info.signo in STOP_SIGNALS:
                self._stop()
            self.lifecycle.on_signal(info)
            if self._check():
                return

    def _reload(self) -> None:
        if self.state is not State.RUNNING:
            return
        self.notifier.reloading()
        try:
            self.lifecycle.reload()
        except Exception as e:  # noqa: BLE001 - a failed reload never stops the command
            self.notifier.say(f"reload failed, the previous state stays in force: {failure_text(e)}")
        finally:
            self.notifier.ready()

    def _stop(self) -> None:
        if self.state is not State.RUNNING:
            return
        self.state = State.DRAINING
        self._say_stopping()
        self.lifecycle.stop()
        timeout = self.lifecycle.drain_timeout
        if timeout is not None:
            self.deadline = self.clock() + timeout
            self._poll()

    def _poll(self) -> None:
        if self.state is not State.DRAINING or self.loop is None:
            return
        if self.deadline is not None and self.clock() >= self.deadline and self.lifecycle.busy():
            self.lifecycle.abort()
            self._finish(self._ended_or(0))
            return
        if self._check():
            return
        self.loop.call_later(DRAIN_POLL, self._poll)

    def _check(self) -> bool:
        """End the command if it is over by itself, or drained; True once DONE."""
        if self.state is State.DONE:
            return True
        ended = self.lifecycle.ended()
        if ended is not None:
            self._finish(ended)
            return True
        if self.state is State.DRAINING and not self.lifecycle.busy():
            self._finish(0)
            return True
        return False

    def _ended_or(self, default: int) -> int:
        ended = self.lifecycle.ended()
        return default if ended is None else ended

    def _say_stopping(self) -> None:
        if not self.said_stopping:
            self.said_stopping = True
            self.notifier.stopping()

    def _finish(self, status: int) -> None:
        self._say_stopping()
        self.state = State.DONE
        self.status = status
        if self.loop is not None:
            self.loop.stop()


class ForwardingLifecycle:
    """A parent whose children do the work (the proxy's workers): SIGHUP and the stop
    signals go on to every child, each child drains by itself, and the parent ends once all
    are reaped, with the worst exit status (1 for a child killed by a signal)."""

    drain_timeout: float | None = None

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids  # shared with the caller: only children not reaped yet
        self.worst = 0

    def _forward(self, sig: int) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # exited; SIGCHLD reaps it

    def reload(self) -> None:
        self._forward(signal.SIGHUP)

    def stop(self) -> None:
        pass  # the signal itself is forwarded in on_signal

    def busy(self) -> bool:
        return bool(self.pids)

    def abort(self) -> None:
        pass  # never called: no drain deadline

    def on_signal(self, info: SigInfo) -> None:
        if info.signo in STOP_SIGNALS:
            self._forward(info.signo)
        elif info.signo == signal.SIGCHLD:
            for pid in list(self.pids):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, 0
                if done == pid:
                    self.pids.remove(pid)  # reaped: never signalled again (its pid may be reused)
                    code = os.waitstatus_to_exitcode(status)
                    self.worst = max(self.worst, code if code >= 0 else 1)

    def ended(self) -> int | None:
        return None if self.pids else self.worst


# -- loops ---------------------------------------------------------------------------------


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class SelectorLoop:
    """A ``selectors`` loop with timers: ``run`` and inetd's accept loop (for ``run`` it
    watches the signal descriptor alone: the blocking loop)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.sel = selectors.DefaultSelector()
        self.clock = clock
        self.timers: list[_Timer] = []
        self.seq = itertools.count()
        self.running = False

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.sel.register(fd, selectors.EVENT_READ, callback)

    def unwatch(self, fd: int) -> None:
        self.sel.unregister(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancel:
        timer = _Timer(self.clock() + delay, next(self.seq), callback)
        heapq.heappush(self.timers, timer)

        def cancel() -> None:
            timer.cancelled = True

        return cancel

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        self.running = True
        while self.running:
            for key, _ in self.sel.select(self._timeout()):
                key.data()
                if not self.running:
                    return
            self._fire()

    def _timeout(self) -> float | None:
        while self.timers and self.timers[0].cancelled:
            heapq.heappop(self.timers)
        return max(0.0, self.timers[0].when - self.clock()) if self.timers else None

    def _fire(self) -> None:
        now = self.clock()
        while self.running and self.timers and self.timers[0].when <= now:
            timer = heapq.heappop(self.timers)
            if not timer.cancelled:
                timer.callback()

    def close(self) -> None:
        self.sel.close()


class AsyncioLoop:
    """The proxy's loop: readers and ``call_later`` of asyncio; ``stop`` resolves ``done``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
        self.loop = loop
        self.done = done

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.add_reader(fd, callback)

    def unwatch(self, fd: int) -> None:
        self.loop.remove_reader(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancel:
        return self.loop.call_later(delay, callback).cancel

    def stop(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
