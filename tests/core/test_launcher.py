"""launcher.RunLifecycle: what `sockgate run` does with each signal, with fakes for the child."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace
from typing import Any

import pytest

from sockgate import launcher
from sockgate.launcher import SI_KERNEL, RunLifecycle
from sockgate.linux.signalfd import SigInfo


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    monkeypatch.setattr(launcher.os, "kill", lambda pid, sig: out.append((pid, sig)))
    return out


def life(forward_hup: bool = False) -> RunLifecycle:
    gate: Any = SimpleNamespace(cfg=SimpleNamespace(forward_hup=forward_hup), reloads=0)
    gate.reload = lambda: setattr(gate, "reloads", gate.reloads + 1)
    r = RunLifecycle(gate)
    r.pid = 4242
    return r


def test_signals_are_forwarded_except_a_terminals_own(kills: list[tuple[int, int]]) -> None:
    r = life()
    r.on_signal(SigInfo(int(signal.SIGTERM)))
    r.on_signal(SigInfo(int(signal.SIGINT), code=SI_KERNEL))  # the terminal sent the command its copy
    r.on_signal(SigInfo(int(signal.SIGTERM), code=SI_KERNEL))  # not a terminal signal: forwarded
    r.on_signal(SigInfo(int(signal.SIGUSR1)))
    assert kills == [(4242, signal.SIGTERM), (4242, signal.SIGTERM), (4242, signal.SIGUSR1)]


@pytest.mark.parametrize("forward", [False, True])
def test_hup_reaches_the_command_only_when_asked(kills: list[tuple[int, int]], forward: bool) -> None:
    r = life(forward)
    r.reload()
    r.on_signal(SigInfo(int(signal.SIGHUP)))
    assert r.gate.reloads == 1  # type: ignore[attr-defined]
    assert kills == ([(4242, signal.SIGHUP)] if forward else [])


def test_sigchld_reaps_and_ends_with_the_status(monkeypatch: pytest.MonkeyPatch) -> None:
    r = life()
    results = iter([(0, 0), (4242, 3 << 8)])
    monkeypatch.setattr(launcher.os, "waitpid", lambda pid, flags: next(results))
    r.on_signal(SigInfo(int(signal.SIGCHLD)))
    assert r.busy() and r.ended() is None
    r.on_signal(SigInfo(int(signal.SIGCHLD)))
    assert not r.busy() and r.ended() == 3 and r.drain_timeout is None


def test_exit_code_after_a_signal() -> None:
    assert launcher.exit_code(signal.SIGTERM) == 128 + signal.SIGTERM
    assert os.WIFSIGNALED(signal.SIGTERM)
