"""agent/control without sockets: who may talk to the agent (root, the control group as primary
or supplementary group), the one-line refusals, the group named by name or number; and
control.start on a fake loop arms the idle timer only while clients are connected."""

from __future__ import annotations

from typing import Callable

import pytest

from sockgate.agent.control import ControlServer, PeerCred, allowed, group_id, start
from sockgate.errors import UsageError


def test_root_and_the_group_are_allowed() -> None:
    assert allowed(PeerCred(1, 0, 0), None, None) is None
    assert allowed(PeerCred(1, 1000, 4242), 4242, "4242") is None
    assert allowed(PeerCred(1, 1000, 1000, (7, 4242)), 4242, "sockgate") is None


def test_others_get_one_line() -> None:
    assert allowed(PeerCred(1, 1000, 1000, (7,)), 4242, "sockgate") == "uid 1000 is not root and not in group sockgate"
    assert allowed(PeerCred(1, 1000, 0), None, None) == "uid 1000 is not root (the control socket has no group)"


def test_group_by_name_or_number() -> None:
    assert group_id(None) is None and group_id("4242") == 4242 and group_id("root") == 0
    with pytest.raises(UsageError, match="^no group 'no-such-group' \\(the control socket's group\\)$"):
        group_id("no-such-group")


class FakeServer(ControlServer):
    def __init__(self) -> None:
        super().__init__("/unused/agent.sock", None, lambda r, p: None)  # type: ignore[arg-type, return-value]
        self.due: float | None = None
        self.ticks = 0
        self.reads = 0

    def fileno(self) -> int:
        return 99

    def on_readable(self) -> None:
        self.reads += 1

    def timeout(self) -> float | None:
        return self.due

    def on_timer(self) -> None:
        self.ticks += 1


class FakeLoop:
    def __init__(self) -> None:
        self.watched: dict[int, Callable[[], None]] = {}
        self.timers: list[tuple[float, Callable[[], None], list[bool]]] = []

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        del self.watched[fd]

    def call_later(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        flag = [False]
        self.timers.append((delay, callback, flag))
        return lambda: flag.__setitem__(0, True)

    def fire(self) -> None:
        """The first live timer runs (and is gone, as in a real loop)."""
        for _, callback, flag in self.timers:
            if not flag[0]:
                flag[0] = True
                callback()
                return

    def live(self) -> list[tuple[float, Callable[[], None]]]:
        return [(d, c) for d, c, f in self.timers if not f[0]]

    def stop(self) -> None:
        pass


def test_start_arms_the_idle_timer_only_while_clients_are_connected() -> None:
    server, loop = FakeServer(), FakeLoop()
    stop = start(server, loop)
    loop.watched[99]()
    assert server.reads == 1 and loop.live() == []  # no client: no timer, no wakeup
    server.due = 2.5
    loop.watched[99]()
    assert [d for d, _ in loop.live()] == [2.5]
    server.due = 1.0
    loop.watched[99]()
    assert [d for d, _ in loop.live()] == [1.0]  # re-armed, the older one cancelled
    server.due = None
    loop.fire()
    assert server.ticks == 1 and loop.live() == []
    stop()
    assert loop.watched == {}
