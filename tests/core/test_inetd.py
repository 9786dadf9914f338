"""inetd: the environment's address forms, and the accept loop as a Lifecycle with fakes."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any, Callable

from sockgate.inetd import _plain, _Server, _unix_name
from sockgate.linux.signalfd import SigInfo


def test_plain_addresses() -> None:
    assert _plain("::ffff:192.0.2.1") == "192.0.2.1"
    assert _plain("2001:db8::1") == "2001:db8::1"
    assert _plain("fe80::1%eth0") == "fe80::1%eth0"
    assert _plain("192.0.2.1") == "192.0.2.1"


def test_unix_names() -> None:
    assert _unix_name(b"\0abstract") == "@abstract"
    assert _unix_name(b"/run/x.sock") == "/run/x.sock"
    assert _unix_name("/run/y.sock") == "/run/y.sock"


class Loop:
    def __init__(self) -> None:
        self.watched: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        del self.watched[fd]


class Child:
    def __init__(self) -> None:
        self.code: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)

    def wait(self) -> int:
        self.code = -9
        return -9


def server(max_conns: int = 1) -> tuple[Any, Loop, Any]:
    a = SimpleNamespace(fileno=lambda: 7, setblocking=lambda flag: None)
    gate: Any = SimpleNamespace(cfg=SimpleNamespace(max_conns=max_conns), listeners=[SimpleNamespace(sock=a)])
    loop = Loop()
    s = _Server(gate, None, loop)  # type: ignore[arg-type]
    s.open()
    return s, loop, a


def test_listeners_set_aside_at_the_limit_and_back_after_sigchld() -> None:
    s, loop, a = server()
    assert a.fileno() in loop.watched
    child = Child()
    s.children.append(child)
    s._update()
    assert loop.watched == {}
    child.code = 0
    s.on_signal(SigInfo(int(signal.SIGCHLD)))
    assert a.fileno() in loop.watched and s.children == []


def test_stop_terms_children_then_abort_kills() -> None:
    s, loop, _ = server(max_conns=5)
    child = Child()
    s.children.append(child)
    s.stop()
    assert loop.watched == {} and child.signals == [signal.SIGTERM] and s.busy()
    s.on_signal(SigInfo(int(signal.SIGCHLD)))
    assert loop.watched == {}  # stopping: never accepting again
    s.abort()
    assert child.signals[-1] == signal.SIGKILL and not s.busy() and s.ended() is None
