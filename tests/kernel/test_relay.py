"""proxy.relay in-process, on socket pairs: what closing a relay leaves behind."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
from typing import Any, Iterator

import pytest

from sockgate.proxy.relay import PipePool, Relay

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the relay's splice pumps are Linux-only")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    lp.set_exception_handler(lambda _, ctx: errors.append(ctx))
    yield lp
    lp.close()
    assert errors == [], errors


def _relay(loop: asyncio.AbstractEventLoop, pipes: PipePool, ends: list[str]) -> tuple[Relay, socket.socket, socket.socket]:
    client, client_peer = socket.socketpair()
    backend, backend_peer = socket.socketpair()
    for s in (client, backend):
        s.setblocking(False)
    relay = Relay(loop, client, backend, pipes, lambda r, how: ends.append(how))
    relay.start()
    return relay, client_peer, backend_peer


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_a_continuation_queued_before_the_close_runs_harmlessly(loop: asyncio.AbstractEventLoop, splice: bool) -> None:
    pipes = PipePool(splice=splice)
    ends: list[str] = []
    relay, client_peer, backend_peer = _relay(loop, pipes, ends)
    try:
        client_peer.sendall(b"x" * 1000)
        # a pump that used up its burst leaves a continuation on the loop; the relay closes
        # before it runs (an idle timeout or a reset on the other pump in the same batch)
        relay.upstream.queued = True
        loop.call_soon(relay.upstream._resume)
        relay.downstream.queued = True
        loop.call_soon(relay.downstream._resume)
        relay.abort("idle timeout")
        loop.run_until_complete(asyncio.sleep(0.01))
        assert ends == ["idle timeout"]
        assert relay.client.fileno() == -1 and relay.backend.fileno() == -1
    finally:
        client_peer.close()
        backend_peer.close()
        pipes.close()


def test_a_finished_relay_is_freed_without_the_collector(loop: asyncio.AbstractEventLoop) -> None:
    pipes = PipePool()
    ends: list[str] = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        relay, client_peer, backend_peer = _relay(loop, pipes, ends)
        client_peer.sendall(b"hello")
        client_peer.shutdown(socket.SHUT_WR)
        loop.run_until_complete(asyncio.sleep(0.05))
        assert backend_peer.recv(100) == b"hello" and backend_peer.recv(100) == b""
        backend_peer.shutdown(socket.SHUT_WR)
        loop.run_until_complete(asyncio.sleep(0.05))
        assert ends == ["closed"] and client_peer.recv(100) == b""
        del relay
        assert [o for o in gc.get_objects() if type(o) is Relay] == []  # no cycle kept it alive
        client_peer.close()
        backend_peer.close()
    finally:
        if was_enabled:
            gc.enable()
        pipes.close()
