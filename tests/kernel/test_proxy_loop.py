"""proxy.loop: the proxy's descriptors dispatched from asyncio's own epoll wait."""

from __future__ import annotations

import asyncio
import select
import socket
from typing import Any, Iterator

import pytest

from sockgate.proxy.loop import ProxyLoop, add_reader, remove_reader


@pytest.fixture
def loop() -> Iterator[ProxyLoop]:
    lp = ProxyLoop()
    yield lp
    lp.close()


def _spin(loop: ProxyLoop, done: Any, limit: float = 5.0) -> None:
    end = loop.time() + limit
    while not done() and loop.time() < end:
        loop.run_until_complete(asyncio.sleep(0.005))


def test_watched_and_asyncio_descriptors_share_the_wait(loop: ProxyLoop) -> None:
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    seen: list[str] = []
    try:
        loop.watch(a.fileno(), lambda ev: seen.append(f"watched {ev & select.EPOLLIN}") or a.recv(16), select.EPOLLIN)
        loop.add_reader(b.fileno(), lambda: seen.append("asyncio") or b.recv(16))
        a_peer.send(b"x")
        b_peer.send(b"y")
        _spin(loop, lambda: len(seen) >= 2)
        assert sorted(seen) == ["asyncio", f"watched {select.EPOLLIN}"]
        loop.unwatch(a.fileno())
        loop.remove_reader(b.fileno())
        a_peer.send(b"x")
        loop.run_until_complete(asyncio.sleep(0.02))
        assert len(seen) == 2  # no handler after unwatch
    finally:
        for s in (a, a_peer, b, b_peer):
            s.close()


def test_a_handler_that_raises_is_reported_and_the_batch_goes_on(loop: ProxyLoop) -> None:
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    seen: list[int] = []

    def bad(ev: int) -> None:
        a.recv(16)
        raise RuntimeError("a bug")

    try:
        loop.watch(a.fileno(), bad, select.EPOLLIN)
        loop.watch(b.fileno(), lambda ev: seen.append(ev) or b.recv(16), select.EPOLLIN)
        a_peer.send(b"x")
        b_peer.send(b"y")
        _spin(loop, lambda: bool(seen) and bool(errors))
        assert seen and isinstance(errors[0]["exception"], RuntimeError)
        loop.run_until_complete(asyncio.sleep(0.01))  # the loop still runs
    finally:
        for s in (a, a_peer, b, b_peer):
            s.close()


def test_a_forgotten_descriptor_is_ignored_after_close(loop: ProxyLoop) -> None:
    a, a_peer = socket.socketpair()
    seen: list[int] = []
    loop.watch(a.fileno(), seen.append, select.EPOLLIN | select.EPOLLET)
    loop.forget(a.fileno())
    a_peer.send(b"x")
    loop.run_until_complete(asyncio.sleep(0.02))
    assert seen == []
    a.close()
    a_peer.close()


@pytest.mark.parametrize("proxy_loop", [True, False], ids=["proxy", "asyncio"])
def test_add_reader_is_level_triggered_on_either_loop(proxy_loop: bool) -> None:
    lp = ProxyLoop() if proxy_loop else asyncio.new_event_loop()
    a, a_peer = socket.socketpair()
    calls: list[int] = []
    try:
        add_reader(lp, a.fileno(), lambda: calls.append(1))
        a_peer.send(b"x")  # never read: level-triggered, so every turn calls again
        end = lp.time() + 5
        while len(calls) < 3 and lp.time() < end:
            lp.run_until_complete(asyncio.sleep(0.005))
        assert len(calls) >= 3
        remove_reader(lp, a.fileno())
        n = len(calls)
        lp.run_until_complete(asyncio.sleep(0.02))
        assert len(calls) == n
    finally:
        a.close()
        a_peer.close()
        lp.close()
