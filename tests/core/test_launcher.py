"""launcher: ``run``'s reload over the kernel seam (fake sockets: a failure on the second of
three listeners leaves the previous program on all of them, and says so), and
``RunLifecycle``, what ``run`` does with each signal (fakes for the child); and ``run``'s checks
before any socket is opened: what it refuses, word for word, the usage errors of ``prepare``
(raised before the policy is even read), and the exit code."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from sockgate import launcher
from sockgate.ebpf.layout import Origin
from sockgate.kernel import ClassicFilter, Kernel
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.ebpf import EbpfBackend
from sockgate.errors import UnsupportedInKernel, UsageError
from sockgate.launcher import SI_KERNEL, Gate, RunConfig, RunLifecycle, check_service, exit_code, prepare
from sockgate.linux.listen import Listener
from sockgate.linux.signalfd import SigInfo
from sockgate.policy.ir import Policy
from sockgate.policy.parser import parse_policy
from sockgate.urls import parse_url, parse_urls
from support.fakebpf import FakeBpf
from support.fakekernel import FakeOps, fake_kernel

OLD = parse_policy("service web {\n allow 10.0.0.0/8\n default deny\n}\n")
NEW = parse_policy("service web {\n allow 10.1.0.0/16\n default deny\n}\n")


@dataclass
class FakeSock:
    fd: int
    family: int = socket.AF_INET
    type: int = socket.SOCK_STREAM

    def fileno(self) -> int:
        return self.fd

    def getsockname(self) -> tuple[str, int]:
        return ("0.0.0.0", 8000 + self.fd)


def gate(ops: FakeOps, said: list[str], load: Policy) -> Gate:
    cfg = RunConfig(lambda: load, "web", (), ("true",), say=said.append)
    g = Gate(cfg, OLD, fake_kernel(ops))
    g.listeners = [Listener(parse_url(f"tcp://0.0.0.0:{8000 + fd}"), FakeSock(fd)) for fd in range(3)]  # type: ignore[arg-type]
    for lst in g.listeners:
        g.guard_socket(lst.sock)  # type: ignore[arg-type]
    return g


def test_a_failed_reload_leaves_the_previous_program_on_every_listener() -> None:
    ops, said = FakeOps(), []
    g = gate(ops, said, NEW)
    before = dict(ops.attached)
    assert len(set(before.values())) == 1 and isinstance(before[0], ClassicFilter)
    ops.fail_at = {len(ops.log) + 1}  # the second listener's attach
    assert g.reload() is False
    assert ops.attached == before
    assert said == ["reload failed, the previous policy stays in force: attach filter for web to tcp://0.0.0.0:8001: injected failure"]
    assert g.policy is OLD and "service web" in g.describe()


def test_a_reload_swaps_every_listener() -> None:
    ops, said = FakeOps(), []
    g = gate(ops, said, NEW)
    old = g.describe()
    assert g.reload() is True
    assert g.policy is NEW and g.describe() != old
    assert said == [f"reloaded: {g.describe()}, on 3 socket(s)"]
    assert len({ops.attached[fd] for fd in range(3)}) == 1


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


POLICY = parse_policy(
    "service web {\n"
    "  limit concurrent 5\n"
    "  allow 10.0.0.0/8 limit rate 3/second\n"
    "  allow host .example.com\n"
    "  default deny\n"
    "}\n"
    "service plain {\n"
    "  allow 10.0.0.0/8\n"
    "  default deny\n"
    "}\n"
    "service lim {\n"
    "  allow 10.0.0.0/8 limit concurrent 2 per source\n"
    "  default deny\n"
    "}\n",
    "p.conf",
)


def test_with_tcp_or_udp_listeners_what_the_kernel_cannot_enforce_is_refused() -> None:
    with pytest.raises(UnsupportedInKernel) as e:
        check_service(POLICY, "web", inet=True, backend="cbpf")  # classic BPF's words
    assert str(e.value) == (
        "service 'web': a kernel filter sees only the source address, and these 2 rules and the"
        " service-wide limits need more:\n"
        "  p.conf:3: allow 10.0.0.0/8 limit rate 3/second: has connection limits\n"
        "  p.conf:4: allow host .example.com: needs the client's host name (a DNS lookup)\n"
        "  p.conf:1: service web: limit concurrent 5: service-wide connection limits\n"
        "enforce this service with `sockgate proxy` instead"
    )


def test_with_unix_listeners_only_limits_are_refused() -> None:
    with pytest.raises(UnsupportedInKernel) as e:
        check_service(POLICY, "web", inet=False)
    assert str(e.value) == (
        "service 'web' has connection limits, which `sockgate run` does not enforce:\n"
        "  p.conf:3: allow 10.0.0.0/8 limit rate 3/second\n"
        "  p.conf:1: service web: service-wide limits\n"
        "enforce this service with `sockgate proxy` instead"
    )
    with pytest.raises(UnsupportedInKernel) as e:
        check_service(POLICY, "lim", inet=False)
    assert str(e.value) == (
        "service 'lim' has connection limits, which `sockgate run` does not enforce:\n"
        "  p.conf:12: allow 10.0.0.0/8 limit concurrent 2 per source\n"
        "enforce this service with `sockgate proxy` instead"
    )


def test_what_run_enforces_passes_and_an_unknown_service_is_named() -> None:
    check_service(POLICY, "plain", inet=True)
    check_service(POLICY, "plain", inet=False)
    with pytest.raises(UsageError, match=r"^the policy has no service 'nope' \(services: web, plain, lim\)$"):
        check_service(POLICY, "nope", inet=False)


def _unread() -> Policy:
    raise AssertionError("the policy is read only after the command line is checked")


@pytest.mark.parametrize(
    ("urls", "command", "inetd", "message"),
    [
        (("tcp://127.0.0.1:8000",), (), False, "no command to run: give it after '--'"),
        ((), ("true",), False, "nothing to listen on: give at least one --listen URL"),
        (
            ("tcp://127.0.0.1:8000", "udp://127.0.0.1:53"), ("true",), True,
            "--inetd accepts connections: stream sockets only (tcp:, unix:), not udp://127.0.0.1:53",
        ),
    ],
)
def test_prepare_refuses_a_wrong_command_line_before_reading_the_policy(
    urls: tuple[str, ...], command: tuple[str, ...], inetd: bool, message: str
) -> None:
    cfg = RunConfig(load=_unread, service="web", urls=parse_urls(list(urls)), command=command, inetd=inetd)
    with pytest.raises(UsageError) as e:
        prepare(cfg)
    assert str(e.value) == message


def test_prepare_refuses_the_service_before_binding() -> None:
    said: list[str] = []
    cfg = RunConfig(load=lambda: POLICY, service="lim", urls=parse_urls(["unix:@sockgate-test-never-bound"]),
                    command=("true",), say=said.append)
    with pytest.raises(UnsupportedInKernel, match="^service 'lim' has connection limits"):
        prepare(cfg)
    assert said == []


def test_exit_code_is_the_shells() -> None:
    assert exit_code(0) == 0
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGTERM) == 128 + signal.SIGTERM
    assert os.WIFSIGNALED(signal.SIGKILL) and exit_code(signal.SIGKILL) == 128 + signal.SIGKILL


class TimerLoop:
    """call_later recorded: the test fires the timers itself."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Any]] = []

    def call_later(self, delay: float, callback: Any) -> Any:
        entry = (delay, callback)
        self.timers.append(entry)
        return lambda: self.timers.remove(entry)


def test_run_sweeps_expired_bans_on_a_timer_while_the_guard_is_ebpf() -> None:
    """The ban tries are not LRU: without a sweep, expired bans fill them (F2)."""
    ops = FakeOps()
    backend = EbpfBackend(FakeBpf(ops), "/fake/bpf")
    kernel = Kernel([ClassicBackend(ops), backend], ops)
    cfg = RunConfig(load=lambda: OLD, service="web", urls=(), command=("true",), backend="ebpf")
    gate = Gate(cfg, OLD, kernel)
    gate.loaded = kernel.load(kernel.compile(gate.resolved, backend="ebpf"))
    maps = backend.bans("web")
    maps.put(ipaddress.ip_network("192.0.2.1/32"), 1, Origin.LIMIT)  # long expired
    loop = TimerLoop()
    sweeper = launcher.BanSweeper(loop)  # type: ignore[arg-type]
    sweeper.update(gate)
    sweeper.update(gate)  # a reload: still one timer
    assert [d for d, _ in loop.timers] == [launcher.SWEEP_INTERVAL]
    loop.timers.pop(0)[1]()  # the timer fires (and is gone)
    assert maps.list() == [] and len(loop.timers) == 1  # swept, and the next sweep scheduled
    gate.loaded = kernel.load(kernel.compile(gate.resolved, backend="cbpf"))
    sweeper.update(gate)  # no eBPF guard any more: no timer
    assert loop.timers == []


def test_ebpf_notes_say_what_the_kernel_leaves_to_the_proxy_for_tcp() -> None:
    """F4: no `ban` from a (forgeable) SYN; F3: cookie ACKs bypass the kernel's rate."""
    pol = parse_policy("service web {\n allow 10.0.0.0/8 limit rate 3/1m per source ban 1h\n"
                       " allow 192.0.2.0/24 limit rate 5/1m\n default deny\n}\n", "p.conf")
    resolved = launcher.resolve(pol, "web")
    notes = launcher.ebpf_notes(resolved, tcp=True, syncookies=1)
    assert notes == ["p.conf:2: `ban` after a per-source rate is not set by the kernel for TCP (a SYN's source can be"
                     " forged); such sources are refused by the rate, not banned — `sockgate proxy` bans after"
                     " completed handshakes"]
    assert launcher.ebpf_notes(resolved, tcp=True, syncookies=2)[1].startswith(
        "net.ipv4.tcp_syncookies=2: a replayed SYN-cookie ACK opens a connection without a SYN")
    assert launcher.ebpf_notes(resolved, tcp=False, syncookies=2) == []
    assert launcher.ebpf_notes(launcher.resolve(OLD, "web"), tcp=True, syncookies=2) == []
