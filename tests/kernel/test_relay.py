"""proxy.relay in-process, on socket pairs: what closing a relay leaves behind."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
from typing import Any, Iterator

import pytest

from sockgate.proxy.loop import ProxyLoop
from sockgate.proxy.relay import PipePool, Relay

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the relay's splice pumps are Linux-only")


@pytest.fixture(params=["proxy", "asyncio"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """The proxy's own loop (relay sockets in the loop's epoll set) and a plain asyncio loop
    (the relays' own set, watched as one descriptor)."""
    lp = ProxyLoop() if request.param == "proxy" else asyncio.new_event_loop()
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


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    return a, b


def _pump_until(loop: asyncio.AbstractEventLoop, done: Any, limit: float = 5.0) -> None:
    end = loop.time() + limit
    while not done() and loop.time() < end:
        loop.run_until_complete(asyncio.sleep(0.005))
    assert done()


def test_a_short_exchange_is_copied_and_takes_no_pipe(loop: asyncio.AbstractEventLoop) -> None:
    """Copy first: 64 bytes each way never cost a pipe; the accepted socket is left blocking
    (copies pass MSG_DONTWAIT) and the backend is not set in line."""
    pipes = PipePool()
    ends: list[str] = []
    client_peer, client = _tcp_pair()  # client: as accepted, blocking
    backend_peer, backend = _tcp_pair()
    backend.setblocking(False)
    relay = Relay(loop, client, backend, pipes, lambda r, how: ends.append(how), client_inline=True)
    try:
        client_peer.sendall(b"q" * 64)
        relay.start()
        backend_peer.settimeout(3)
        assert backend_peer.recv(100) == b"q" * 64
        backend_peer.sendall(b"r" * 64)
        client_peer.settimeout(3)
        _pump_until(loop, lambda: relay.downstream.bytes == 64)
        assert client_peer.recv(100) == b"r" * 64
        client_peer.shutdown(socket.SHUT_WR)
        backend_peer.shutdown(socket.SHUT_WR)
        _pump_until(loop, lambda: ends == ["closed"])
        assert not relay.upstream.splice and not relay.downstream.splice
        assert pipes.in_use == 0 and pipes.idle == []  # no pipe was ever made
    finally:
        for s in (client_peer, backend_peer, client, backend):
            s.close()
        pipes.close()


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_bulk_switches_to_splice_with_a_blocking_accepted_socket(loop: asyncio.AbstractEventLoop, splice: bool) -> None:
    """Past a full copy buffer the pumps splice (when allowed); the accepted socket, left
    blocking by the proxy, is made non-blocking first — a splice from a blocking socket
    waits whatever SPLICE_F_NONBLOCK says, which would stall the whole loop."""
    pipes = PipePool(splice=splice)
    ends: list[str] = []
    client_peer, client = _tcp_pair()
    backend_peer, backend = _tcp_pair()
    backend.setblocking(False)
    relay = Relay(loop, client, backend, pipes, lambda r, how: ends.append(how), client_inline=True)
    data = bytes(range(256)) * 4096  # 1 MiB
    try:
        relay.start()
        for peer in (client_peer, backend_peer):
            peer.setblocking(False)
        sent = {client_peer: 0, backend_peer: 0}
        got = {client_peer: b"", backend_peer: b""}

        def step() -> bool:
            for peer in (client_peer, backend_peer):
                if sent[peer] < len(data):
                    try:
                        sent[peer] += peer.send(data[sent[peer] : sent[peer] + 65536])
                    except BlockingIOError:
                        pass
                try:
                    got[peer] += peer.recv(1 << 20)
                except BlockingIOError:
                    pass
            return all(len(g) == len(data) for g in got.values())

        _pump_until(loop, step, limit=20.0)
        assert got[client_peer] == data and got[backend_peer] == data
        assert relay.upstream.splice is splice and relay.downstream.splice is splice
        assert ends == []
    finally:
        relay.abort("test over")
        for s in (client_peer, backend_peer, client, backend):
            s.close()
        pipes.close()


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_a_reset_after_the_fin_is_a_reset(loop: asyncio.AbstractEventLoop, splice: bool) -> None:
    """A FIN then a reset reads as end of file (recv and splice alike); the event shows
    EPOLLERR and the socket error tells the reset apart, so it is propagated as one."""
    pipes = PipePool(splice=splice)
    ends: list[str] = []
    client_peer, client = _tcp_pair()
    backend_peer, backend = _tcp_pair()
    backend.setblocking(False)
    relay = Relay(loop, client, backend, pipes, lambda r, how: ends.append(how), client_inline=True)
    try:
        relay.start()
        client_peer.shutdown(socket.SHUT_WR)
        client_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client_peer.close()
        _pump_until(loop, lambda: bool(ends))
        assert ends == ["reset by client"]
        backend_peer.settimeout(3)
        with pytest.raises(ConnectionResetError):
            backend_peer.recv(10)
    finally:
        for s in (client_peer, backend_peer, client, backend):
            s.close()
        pipes.close()
