"""supervisor: the state machine, driven by fake signal records, a fake loop and clock."""

from __future__ import annotations

import signal
from typing import Callable, Mapping

import pytest

from sockgate.errors import UsageError
from sockgate.linux import activation
from sockgate.linux.signalfd import SigInfo
from sockgate.supervisor import Cancel, Notifier, State, Supervisor

HUP, TERM, INT, CHLD = (SigInfo(int(s)) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD))


class FakeSource:
    def __init__(self) -> None:
        self.pending: list[SigInfo] = []
        self.closed = False

    def open(self, signals: frozenset[int]) -> int:
        self.signals = signals
        return 99

    def read(self) -> list[SigInfo]:
        out, self.pending = self.pending, []
        return out

    def child_mask(self) -> set[int]:
        return {int(signal.SIGUSR1)}

    def close(self) -> None:
        self.closed = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.watched: dict[int, Callable[[], None]] = {}
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.stopped = False

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        del self.watched[fd]

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancel:
        self.timers.append((self.now + delay, callback))
        return lambda: None

    def stop(self) -> None:
        self.stopped = True

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = sorted((t for t in self.timers if t[0] <= end), key=lambda t: t[0])
            if not due:
                break
            self.timers.remove(due[0])
            self.now = due[0][0]
            due[0][1]()
        self.now = end


class FakeCommand:
    def __init__(self, drain_timeout: float | None = 5.0) -> None:
        self.drain_timeout = drain_timeout
        self.events: list[str] = []
        self.work = 0
        self.fail: BaseException | None = None
        self.policy = "old"
        self.status: int | None = None

    def reload(self) -> None:
        self.events.append("reload")
        if self.fail is not None:
            raise self.fail
        self.policy = "new"

    def stop(self) -> None:
        self.events.append("stop")

    def busy(self) -> bool:
        return self.work > 0

    def abort(self) -> None:
        self.events.append("abort")

    def on_signal(self, info: SigInfo) -> None:
        self.events.append(f"signal {signal.Signals(info.signo).name}")

    def ended(self) -> int | None:
        return self.status


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out: list[str] = []

    def notify(state: str | Mapping[str, str], environ: Mapping[str, str] | None = None) -> bool:
        out.append(state if isinstance(state, str) else ",".join(sorted(state)))
        return True

    monkeypatch.setattr(activation, "notify", notify)
    return out


def started(cmd: FakeCommand, said: list[str] | None = None) -> tuple[Supervisor, FakeLoop, FakeSource]:
    loop, source = FakeLoop(), FakeSource()
    sup = Supervisor(cmd, Notifier(True, (said if said is not None else []).append), source=source, clock=lambda: loop.now)
    sup.start(loop)
    sup.ready()
    return sup, loop, source


def deliver(loop: FakeLoop, source: FakeSource, *infos: SigInfo) -> None:
    source.pending.extend(infos)
    loop.watched[99]()


def test_hup_reloads_between_reloading_and_ready(sent: list[str]) -> None:
    cmd = FakeCommand()
    sup, loop, source = started(cmd)
    deliver(loop, source, HUP)
    assert sent == ["READY=1", "MONOTONIC_USEC,RELOADING", "READY=1"]
    assert cmd.events == ["reload", "signal SIGHUP"] and cmd.policy == "new"
    assert sup.state is State.RUNNING


@pytest.mark.parametrize("error", [UsageError("bad rule"), RuntimeError("boom")])
def test_failed_reload_keeps_the_old_state_reports_and_says_ready(sent: list[str], error: Exception) -> None:
    cmd = FakeCommand()
    cmd.fail = error
    said: list[str] = []
    sup, loop, source = started(cmd, said)
    deliver(loop, source, HUP)
    assert cmd.policy == "old" and sup.state is State.RUNNING
    assert sent[-1] == "READY=1"
    assert len(said) == 1 and "previous state stays" in said[0] and str(error) in said[0]
    deliver(loop, source, HUP)  # and the next reload still runs
    assert cmd.events.count("reload") == 2


def test_term_stops_and_drains_until_idle(sent: list[str]) -> None:
    cmd = FakeCommand()
    cmd.work = 1
    sup, loop, source = started(cmd)
    deliver(loop, source, TERM)
    assert sup.state is State.DRAINING and sent[-1] == "STOPPING=1"
    loop.advance(1.0)
    assert not loop.stopped
    cmd.work = 0
    loop.advance(0.1)
    assert loop.stopped and sup.status == 0 and "abort" not in cmd.events
    assert sent.count("STOPPING=1") == 1


def test_drain_deadline_aborts(sent: list[str]) -> None:
    cmd = FakeCommand(drain_timeout=2.0)
    cmd.work = 3
    sup, loop, source = started(cmd)
    deliver(loop, source, INT)
    loop.advance(1.9)
    assert sup.state is State.DRAINING
    loop.advance(0.2)
    assert cmd.events[-1] == "abort" and sup.state is State.DONE and loop.stopped


def test_nothing_to_drain_ends_at_once(sent: list[str]) -> None:
    sup, loop, source = started(FakeCommand())
    deliver(loop, source, TERM)
    assert sup.state is State.DONE and sup.status == 0


def test_reload_while_draining_is_skipped(sent: list[str]) -> None:
    cmd = FakeCommand()
    cmd.work = 1
    sup, loop, source = started(cmd)
    deliver(loop, source, TERM, HUP)
    assert "reload" not in cmd.events and "MONOTONIC_USEC,RELOADING" not in sent
    assert cmd.events == ["stop", "signal SIGTERM", "signal SIGHUP"]  # still seen: run may forward it


def test_term_during_reload_stops_after_it(sent: list[str]) -> None:
    """A TERM that arrives while reload runs is read after it: the reload completes (READY=1),
    then the command stops."""
    cmd = FakeCommand()
    sup, loop, source = started(cmd)

    def reload_then_term() -> None:
        cmd.events.append("reload")
        source.pending.append(TERM)

    cmd.reload = reload_then_term  # type: ignore[method-assign]
    deliver(loop, source, HUP)
    assert sent[-1] == "READY=1" and sup.state is State.RUNNING
    loop.watched[99]()
    assert sup.state is State.DONE and sent[-1] == "STOPPING=1"


def test_second_term_is_forwarded_not_restarted(sent: list[str]) -> None:
    cmd = FakeCommand(drain_timeout=None)
    cmd.work = 1
    sup, loop, source = started(cmd)
    deliver(loop, source, TERM)
    deliver(loop, source, TERM)
    assert cmd.events == ["stop", "signal SIGTERM", "signal SIGTERM"]
    assert loop.timers == []  # no deadline: waits for the command


def test_command_that_ends_by_itself(sent: list[str]) -> None:
    """run's child exits: SIGCHLD reaps it, the supervisor ends with its status, STOPPING=1."""
    cmd = FakeCommand(drain_timeout=None)

    def reap(info: SigInfo) -> None:
        cmd.events.append(f"signal {signal.Signals(info.signo).name}")
        if info.signo == signal.SIGCHLD:
            cmd.status = 3

    cmd.on_signal = reap  # type: ignore[method-assign]
    sup, loop, source = started(cmd)
    deliver(loop, source, CHLD, HUP)
    assert sup.status == 3 and loop.stopped and sent[-1] == "STOPPING=1"
    assert "reload" not in cmd.events  # the batch ends with the command


def test_signal_records_keep_code_and_pid(sent: list[str]) -> None:
    seen: list[SigInfo] = []
    cmd = FakeCommand()
    cmd.on_signal = seen.append  # type: ignore[method-assign]
    _, loop, source = started(cmd)
    tty = SigInfo(int(signal.SIGINT), code=0x80, pid=0)
    deliver(loop, source, tty)
    assert seen == [tty]


def test_notifier_failure_is_reported_once_and_never_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def broken(state: str | Mapping[str, str], environ: Mapping[str, str] | None = None) -> bool:
        calls.append(str(state))
        raise UsageError("NOTIFY_SOCKET='relative': expected an absolute path or @abstract name")

    monkeypatch.setattr(activation, "notify", broken)
    said: list[str] = []
    cmd = FakeCommand()
    sup, loop, source = started(cmd, said)
    deliver(loop, source, HUP, TERM)
    assert len(said) == 1 and "NOTIFY_SOCKET" in said[0]
    assert len(calls) == 1 and sup.state is State.DONE


def test_disabled_notifier_sends_nothing(sent: list[str]) -> None:
    n = Notifier(False, print)
    n.ready(), n.reloading(), n.stopping(), n.status("x")
    assert sent == []


def test_close_unwatches_and_restores(sent: list[str]) -> None:
    sup, loop, source = started(FakeCommand())
    assert sup.child_mask() == {int(signal.SIGUSR1)}
    sup.close()
    assert loop.watched == {} and source.closed


def test_forwarding_lifecycle_forwards_and_ends_with_the_worst_child(monkeypatch: pytest.MonkeyPatch, sent: list[str]) -> None:
    from sockgate import supervisor as sv

    kills: list[tuple[int, int]] = []
    exits = {11: [(0, 0), (11, 0)], 12: [(12, 3 << 8)]}
    monkeypatch.setattr(sv.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    monkeypatch.setattr(sv.os, "waitpid", lambda pid, flags: exits[pid].pop(0))
    pids = [11, 12]
    sup, loop, source = started(sv.ForwardingLifecycle(pids))  # type: ignore[arg-type]
    deliver(loop, source, HUP)
    assert kills == [(11, signal.SIGHUP), (12, signal.SIGHUP)] and sent[-1] == "READY=1"
    deliver(loop, source, TERM)
    assert kills[-2:] == [(11, signal.SIGTERM), (12, signal.SIGTERM)] and sent[-1] == "STOPPING=1"
    deliver(loop, source, CHLD)
    assert pids == [11] and sup.state is State.DRAINING
    deliver(loop, source, CHLD)
    assert pids == [] and sup.status == 3 and loop.stopped


def test_selector_loop_runs_timers_and_watched_descriptors() -> None:
    import os

    from sockgate.supervisor import SelectorLoop

    loop = SelectorLoop()
    r, w = os.pipe()
    seen: list[str] = []
    try:
        def readable() -> None:
            seen.append(os.read(r, 10).decode())
            loop.stop()

        loop.watch(r, readable)
        loop.call_later(0.01, lambda: os.write(w, b"x"))
        cancel = loop.call_later(0.005, lambda: seen.append("cancelled"))
        cancel()
        loop.run()
        assert seen == ["x"]
        loop.unwatch(r)
    finally:
        loop.close()
        os.close(r)
        os.close(w)
