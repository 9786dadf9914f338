"""linux.signalfd against the kernel: blocked signals come back as records, with sender and code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Iterator

import pytest

from sockgate.linux.signalfd import SIGNALFD_SIGINFO, open_signalfd, read_pending

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signalfd is Linux")

SIGNALS = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD}


@pytest.fixture
def sfd() -> Iterator[int]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    fd = open_signalfd(SIGNALS)
    try:
        yield fd
    finally:
        os.close(fd)
        for sig in signal.sigpending() & SIGNALS:
            signal.sigtimedwait({sig}, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_record_size() -> None:
    assert SIGNALFD_SIGINFO.size == 128


def test_kill_self_gives_signo_code_and_pid(sfd: int) -> None:
    assert read_pending(sfd) == []
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR2)
    got = read_pending(sfd)
    assert [g.signo for g in got] == [signal.SIGUSR1, signal.SIGUSR2]
    assert all(g.pid == os.getpid() and g.uid == os.getuid() and g.code == 0 for g in got)  # SI_USER
    assert read_pending(sfd) == []


def test_sigchld_carries_the_exit_status(sfd: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    child.wait()
    got = [g for g in read_pending(sfd) if g.signo == signal.SIGCHLD]
    assert got and got[0].pid == child.pid and got[0].status == 7


def test_descriptor_is_close_on_exec_and_non_blocking(sfd: int) -> None:
    assert not os.get_inheritable(sfd)
    assert not os.get_blocking(sfd)


def test_supervisor_on_a_real_signalfd_and_selector_loop() -> None:
    """kill(self): SIGHUP reloads, SIGTERM drains and ends the loop; the mask comes back."""
    from sockgate.supervisor import Notifier, SelectorLoop, Supervisor

    events: list[str] = []

    class Command:
        drain_timeout = 1.0

        def reload(self) -> None:
            events.append("reload")
            os.kill(os.getpid(), signal.SIGTERM)

        def stop(self) -> None:
            events.append("stop")

        def busy(self) -> bool:
            return False

        def abort(self) -> None:
            events.append("abort")

        def on_signal(self, info: object) -> None:
            pass

        def ended(self) -> int | None:
            return None

    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    loop = SelectorLoop()
    sup = Supervisor(Command(), Notifier(False, events.append))
    sup.start(loop)
    try:
        assert signal.SIGHUP in signal.pthread_sigmask(signal.SIG_BLOCK, set())
        os.kill(os.getpid(), signal.SIGHUP)
        loop.run()
    finally:
        sup.close()
        loop.close()
    assert events == ["reload", "stop"] and sup.status == 0
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
