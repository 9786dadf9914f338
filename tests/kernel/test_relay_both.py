"""The C relay (proxy/_lane.c) against the Python one (proxy/relay.py), the oracle: the same
scenarios on real socket pairs through both, in-process on the proxy's own loop. Then what
only the lane does: accepting (the address it hands Python), connecting, the sweep's
timeouts, callbacks that raise, and descriptors closed exactly once over thousands of
connections."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from sockgate.proxy import lane as lanes
from sockgate.proxy.loop import ProxyLoop
from sockgate.proxy.relay import PipePool, Relay

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the relays' splice pumps are Linux-only")
LINGER0 = b"\1\0\0\0\0\0\0\0"


def test_the_c_relay_is_built() -> None:
    """The build makes the lane wherever a C compiler is (CI has one): without it the proxy
    falls back to the Python relay, which must not go unnoticed."""
    if not lanes.LANE_BUILT:
        if os.environ.get("CI"):
            pytest.fail("sockgate.proxy._lane is not importable: the C relay was not built")
        pytest.skip("the C relay was not built on this machine (no C compiler?)")
    from sockgate.proxy._lane import Lane

    assert lanes.choose("auto", use_uvloop=False) == "c"
    assert callable(Lane)


class Harness:
    """One relay implementation on a ``ProxyLoop``: ``relay`` hands it a socket pair, ``ends``
    collects (how, up, down) once per connection."""

    def __init__(self, impl: str, splice: bool, cc: bytes = b"") -> None:
        if impl == "c" and not lanes.LANE_BUILT:
            pytest.skip("the C relay was not built")
        self.impl = impl
        self.loop = ProxyLoop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _, ctx: self.errors.append(ctx))
        self.pipes = PipePool(splice=splice, cc=cc)
        self.lane = lanes.attach(self.loop, self.pipes) if impl == "c" else None
        self.ends: list[tuple[str, int, int]] = []
        self.relays: dict[int, Relay] = {}

    def relay(self, client: socket.socket, backend: socket.socket, client_inline: bool = False) -> int:
        key = client.fileno()
        if self.lane is not None:
            self.lane.relay(client.detach(), backend.detach(), key, self._finished, client_inline)
        else:
            r = Relay(self.loop, client, backend, self.pipes, lambda r, how: self.ends.append((how, r.up, r.down)), client_inline)
            self.relays[key] = r
            r.start()
        return key

    def _finished(self, token: object, how: str, up: int, down: int) -> None:
        self.ends.append((how, up, down))

    def abort(self, key: int, reason: str) -> None:
        if self.lane is not None:
            assert self.lane.abort(key, reason)
        else:
            self.relays[key].abort(reason)

    def spin(self, done: Callable[[], bool], limit: float = 10.0) -> None:
        end = self.loop.time() + limit
        while not (ok := done()) and self.loop.time() < end:
            self.loop.run_until_complete(asyncio.sleep(0.002))
        assert ok

    def read(self, s: socket.socket, n: int) -> bytes:
        """``n`` bytes from ``s`` (fewer at end of file), the loop running meanwhile."""
        s.setblocking(False)
        got = bytearray()
        eof = False

        def step() -> bool:
            nonlocal eof
            try:
                chunk = s.recv(n - len(got))
            except BlockingIOError:
                return False
            got.extend(chunk)
            eof = not chunk
            return eof or len(got) >= n

        self.spin(step)
        return bytes(got)

    def read_to_eof(self, s: socket.socket) -> bytes:
        got = b""
        while chunk := self.read(s, 65536):
            got += chunk
        return got

    def expect_reset(self, s: socket.socket) -> None:
        with pytest.raises(ConnectionResetError):
            self.read(s, 10)

    def close(self) -> None:
        for r in self.relays.values():
            r.abort("test over")  # (the lane resets its own when the loop closes)
        self.loop.close()
        self.pipes.close()
        assert self.errors == [], self.errors


@pytest.fixture(params=["python", "c"])
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[True, False], ids=["splice", "copy"])
def h(request: pytest.FixtureRequest, impl: str) -> Iterator[Harness]:
    harness = Harness(impl, bool(request.param))
    yield harness
    harness.close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(peer, accepted): the accepted end is blocking, as the kernel hands it over."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    return a, b


def _pairs(kind: str) -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """client peer, client (the proxy's), backend peer, backend (the proxy's, non-blocking)."""
    if kind == "unix":
        cp, c = socket.socketpair()
        bp, b = socket.socketpair()
    else:
        cp, c = _tcp_pair()
        bp, b = _tcp_pair()
    b.setblocking(False)
    return cp, c, bp, b


def _exchange(h: Harness, a: socket.socket, b: socket.socket, data_ab: bytes, data_ba: bytes) -> None:
    """Send both ways at once, non-blocking, pumping the loop; every byte must arrive."""
    for s in (a, b):
        s.setblocking(False)
    todo = {a: data_ab, b: data_ba}
    sent = {a: 0, b: 0}
    got = {a: bytearray(), b: bytearray()}
    want = {a: len(data_ba), b: len(data_ab)}

    def step() -> bool:
        for s in (a, b):
            if sent[s] < len(todo[s]):
                try:
                    sent[s] += s.send(todo[s][sent[s] : sent[s] + 262144])
                except BlockingIOError:
                    pass
            try:
                got[s] += s.recv(1 << 20)
            except BlockingIOError:
                pass
        return all(len(got[s]) >= want[s] for s in (a, b))

    h.spin(step, limit=30.0)
    assert bytes(got[b]) == data_ab and bytes(got[a]) == data_ba


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_big_transfers_both_ways_then_half_closes(h: Harness, kind: str) -> None:
    cp, c, bp, b = _pairs(kind)
    up, down = os.urandom(3 << 20), os.urandom(2 << 20)
    h.relay(c, b, client_inline=False)
    _exchange(h, cp, bp, up, down)
    cp.shutdown(socket.SHUT_WR)
    assert h.read(bp, 10) == b""  # EOF passed on; the other way still open
    bp.sendall(b"last word")
    assert h.read(cp, 9) == b"last word"
    bp.shutdown(socket.SHUT_WR)
    h.spin(lambda: bool(h.ends))
    assert h.read(cp, 10) == b""
    assert h.ends == [("closed", len(up), len(down) + 9)]
    for s in (cp, bp):
        s.close()


def test_half_close_from_the_backend_first(h: Harness) -> None:
    cp, c, bp, b = _pairs("tcp")
    h.relay(c, b, client_inline=True)
    bp.sendall(b"banner")
    bp.shutdown(socket.SHUT_WR)
    assert h.read_to_eof(cp) == b"banner"
    cp.sendall(b"still talking")
    assert h.read(bp, 13) == b"still talking"
    cp.shutdown(socket.SHUT_WR)
    h.spin(lambda: bool(h.ends))
    assert h.ends == [("closed", 13, 6)]
    for s in (cp, bp):
        s.close()


@pytest.mark.parametrize("side", ["client", "backend"])
def test_a_reset_is_propagated(h: Harness, side: str) -> None:
    cp, c, bp, b = _pairs("tcp")
    h.relay(c, b, client_inline=True)
    cp.sendall(b"go")
    assert h.read(bp, 2) == b"go"
    gone, other = (cp, bp) if side == "client" else (bp, cp)
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    gone.close()
    h.spin(lambda: bool(h.ends))
    assert h.ends == [(f"reset by {side}", 2, 0)]
    h.expect_reset(other)
    other.close()


@pytest.mark.parametrize("error", [False, True], ids=["clean", "reset-after-fin"])
def test_eof_with_and_without_an_error(h: Harness, error: bool) -> None:
    cp, c, bp, b = _pairs("tcp")
    h.relay(c, b, client_inline=True)
    cp.shutdown(socket.SHUT_WR)
    if error:  # a FIN then a reset reads as end of file: SO_ERROR tells it apart
        cp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        cp.close()
        h.spin(lambda: bool(h.ends))
        assert h.ends == [("reset by client", 0, 0)]
        bp.close()
    else:
        assert h.read(bp, 10) == b""
        bp.close()
        h.spin(lambda: bool(h.ends))
        assert h.ends == [("closed", 0, 0)]
        cp.close()


@pytest.mark.parametrize("before", [0, 1000, 65536])
@pytest.mark.parametrize("fin", [False, True], ids=["open", "fin-behind"])
def test_urgent_data_in_line_in_order(h: Harness, before: int, fin: bool) -> None:
    """Bytes, an urgent byte, more bytes (and a FIN right behind) queued before the relay
    starts, then more marks while it runs: every byte arrives, in line, in order."""
    cp, c, bp, b = _pairs("tcp")
    cp.sendall(b"a" * before)
    cp.send(b"!", socket.MSG_OOB)
    cp.sendall(b"after")
    if fin:
        cp.shutdown(socket.SHUT_WR)
    h.relay(c, b, client_inline=False)
    bp.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    want = b"a" * before + b"!after"
    assert h.read(bp, len(want)) == want
    if fin:
        assert h.read(bp, 10) == b""
    else:
        for i in range(10):
            cp.sendall(b"x%d" % i)
            cp.send(b"!", socket.MSG_OOB)
            w = b"x%d!" % i
            assert h.read(bp, len(w)) == w
    for s in (cp, bp):
        s.close()


def test_backpressure_keeps_memory_bounded(h: Harness) -> None:
    """A backend that does not read: the client can queue only what the sockets and one pipe
    hold, then it is the client that waits."""
    cp, c, bp, b = _pairs("tcp")
    h.relay(c, b, client_inline=True)
    cp.setblocking(False)
    chunk = b"y" * 65536
    sent = 0
    stalled = 0
    for _ in range(4000):
        try:
            sent += cp.send(chunk)
            stalled = 0
        except BlockingIOError:
            stalled += 1
            if stalled > 50:
                break
        h.loop.run_until_complete(asyncio.sleep(0))
    assert stalled > 50, "the relay took everything the client sent"
    assert sent < 48 << 20  # socket buffers and at most one pipe in between
    bp.setblocking(False)
    got = 0

    def drain() -> bool:
        nonlocal got
        try:
            got += len(bp.recv(1 << 20))
        except BlockingIOError:
            pass
        return got == sent

    h.spin(drain, limit=30.0)
    for s in (cp, bp):
        s.close()
    h.spin(lambda: bool(h.ends))


def test_abort_resets_both_sides(h: Harness) -> None:
    cp, c, bp, b = _pairs("tcp")
    key = h.relay(c, b, client_inline=True)
    cp.sendall(b"hi")
    assert h.read(bp, 2) == b"hi"
    h.abort(key, "idle timeout")
    assert h.ends == [("idle timeout", 2, 0)]
    for s in (cp, bp):
        h.expect_reset(s)
        s.close()


# -- what only the lane does -----------------------------------------------------------------


@pytest.fixture
def ch() -> Iterator[Harness]:
    harness = Harness("c", True)
    yield harness
    harness.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _addr_cases(tmp_path: Path) -> Iterator[tuple[str, socket.socket, Callable[[], socket.socket]]]:
    v4 = socket.create_server(("127.0.0.1", 0))
    yield "v4", v4, lambda: socket.create_connection(v4.getsockname())
    v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    yield "v6", v6, lambda: socket.create_connection(v6.getsockname()[:2])
    path = str(tmp_path / "l.sock")
    ux = socket.socket(socket.AF_UNIX)
    ux.bind(path)
    ux.listen(8)

    def unnamed() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        return s

    def abstract() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.bind(b"\0sockgate-lane-test-\xff" + os.urandom(4).hex().encode())
        s.connect(path)
        return s

    def long_path() -> socket.socket:  # the longest path Python binds (107 bytes)
        s = socket.socket(socket.AF_UNIX)
        name = str(tmp_path / "c")
        s.bind(name + "x" * (107 - len(os.fsencode(name))))
        s.connect(path)
        return s

    def full_abstract() -> socket.socket:  # sun_path filled to the end: no NUL anywhere after
        s = socket.socket(socket.AF_UNIX)
        s.bind(b"\0" + os.urandom(40).hex().encode()[:107])
        s.connect(path)
        return s

    yield "unix-unnamed", ux, unnamed
    yield "unix-abstract", ux, abstract
    yield "unix-long-path", ux, long_path
    yield "unix-full-abstract", ux, full_abstract


def test_the_address_admit_gets_is_what_python_gives(ch: Harness, tmp_path: Path) -> None:
    assert ch.lane is not None
    seen: list[tuple[int, Any]] = []

    def admit(fd: int, addr: Any) -> None:
        seen.append((fd, addr))
        return None  # taken: the test closes it

    for name, ls, dial in _addr_cases(tmp_path):
        ls.setblocking(False)
        ch.lane.listen(ls.fileno(), admit, lambda e: None, ch._finished, socket.AF_INET, lanes.sockaddr(socket.AF_INET, ("127.0.0.1", 9)), True)
        client = dial()
        ch.spin(lambda: bool(seen))
        fd, addr = seen.pop()
        with socket.socket(fileno=fd) as accepted:
            assert addr == accepted.getpeername(), name  # socketmodule's own conversion
        assert ch.lane.unlisten(ls.fileno())
        client.close()
        if name in ("v4", "v6", "unix-full-abstract"):
            ls.close()


def _backend() -> socket.socket:
    b = socket.create_server(("127.0.0.1", 0), backlog=4096)
    b.setblocking(False)
    return b


def test_accept_connect_relay_and_every_descriptor_closed_once(ch: Harness) -> None:
    """Thousands of clients through listen → admit → connect → relay, ending by close, by a
    reset from either side and by abort: no descriptor left, none closed twice (a double
    close would close a reused number: the backend's accepted sockets would go missing)."""
    assert ch.lane is not None
    backend = _backend()
    ls = socket.create_server(("127.0.0.1", 0), backlog=4096)
    ls.setblocking(False)
    tokens: list[object] = []

    def admit(fd: int, addr: Any) -> object:
        t = object()
        tokens.append(t)
        return t

    ch.lane.listen(ls.fileno(), admit, lambda e: None, ch._finished, socket.AF_INET,
                   lanes.sockaddr(socket.AF_INET, backend.getsockname()), True)
    base = _fds()
    n = 0
    for round_ in range(40):
        clients = [socket.create_connection(ls.getsockname()) for _ in range(50)]
        peers: list[socket.socket] = []

        def accepted() -> bool:
            try:
                while True:
                    peers.append(backend.accept()[0])
            except BlockingIOError:
                pass
            return len(peers) == len(clients)

        ch.spin(accepted)
        for i, (c, p) in enumerate(zip(clients, peers)):
            how = (i + round_) % 4
            if how == 0:
                c.close()
                p.close()
            elif how == 1:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                c.close()
                p.close()
            elif how == 2:
                p.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                p.close()
                c.close()
            else:
                c.sendall(b"x")
                p.close()
                c.close()
        n += len(clients)
        ch.spin(lambda: len(ch.ends) == n)
    assert ch.lane.count() == 0
    assert ch.lane.pipes()[0] == 0
    assert _fds() == base
    assert len(tokens) == n and all(up >= 0 for _, up, _ in ch.ends)
    assert ch.lane.unlisten(ls.fileno())
    ls.close()
    backend.close()


def test_connect_refused_and_connect_timeout(ch: Harness) -> None:
    assert ch.lane is not None
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    cp, c = _tcp_pair()
    ch.lane.start(c.detach(), "t", ch._finished, socket.AF_INET, lanes.sockaddr(socket.AF_INET, ("127.0.0.1", port)), True)
    ch.spin(lambda: bool(ch.ends))
    assert ch.ends.pop() == ("Connection refused", -1, -1)
    assert ch.read(cp, 10) == b""  # a plain close, as the Python path does
    cp.close()
    # a backend whose accept queue is full never answers the SYN
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    for f in fillers:
        f.setblocking(False)
        f.connect_ex(stuck.getsockname())
    cp, c = _tcp_pair()
    ch.lane.start(c.detach(), "t", ch._finished, socket.AF_INET, lanes.sockaddr(socket.AF_INET, stuck.getsockname()), True)
    ch.loop.run_until_complete(asyncio.sleep(0.2))
    ch.lane.sweep(5.0, 60.0)
    assert ch.ends == [] and ch.lane.count() == 1  # not overdue yet
    ch.lane.sweep(0.1, 60.0)
    assert ch.ends == [("connect timeout", -1, -1)] and ch.lane.count() == 0
    cp.close()
    cp, c = _tcp_pair()  # a connecting client ended by abort (drain's deadline): a plain close
    fd = c.fileno()
    ch.lane.start(c.detach(), "t", ch._finished, socket.AF_INET, lanes.sockaddr(socket.AF_INET, stuck.getsockname()), True)
    assert ch.lane.abort(fd, "shutdown") and not ch.lane.abort(fd, "shutdown")
    assert ch.ends[-1] == ("shutdown", 0, 0) and ch.lane.count() == 0
    assert ch.read(cp, 10) == b""
    for s in [cp, stuck, *fillers]:
        s.close()


def test_idle_timeout(ch: Harness) -> None:
    assert ch.lane is not None
    cp, c, bp, b = _pairs("tcp")
    ch.relay(c, b, client_inline=True)
    cp.sendall(b"hi")
    assert ch.read(bp, 2) == b"hi"
    ch.loop.run_until_complete(asyncio.sleep(0.2))
    ch.lane.sweep(5.0, 10.0)
    assert ch.ends == []
    ch.lane.sweep(5.0, 0.1)
    assert ch.ends == [("idle timeout", 2, 0)]
    ch.expect_reset(cp)
    for s in (cp, bp):
        s.close()


def test_callbacks_that_raise_are_reported_and_cost_one_connection(ch: Harness) -> None:
    assert ch.lane is not None
    backend = _backend()
    ls = socket.create_server(("127.0.0.1", 0))
    ls.setblocking(False)
    calls = 0

    def admit(fd: int, addr: Any) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("admit bug")
        return "tok"

    def finished(token: object, how: str, up: int, down: int) -> None:
        raise RuntimeError("finished bug")

    ch.lane.listen(ls.fileno(), admit, lambda e: None, finished, socket.AF_INET,
                   lanes.sockaddr(socket.AF_INET, backend.getsockname()), True)
    base = _fds()
    first = socket.create_connection(ls.getsockname())
    ch.spin(lambda: bool(ch.errors))
    ch.expect_reset(first)  # refused by the bug: reset, not left open
    first.close()
    second = socket.create_connection(ls.getsockname())
    ch.spin(lambda: ch.lane is not None and ch.lane.count() == 1)
    peer: list[socket.socket] = []

    def accepted() -> bool:
        try:
            peer.append(backend.accept()[0])
        except BlockingIOError:
            return False
        return True

    ch.spin(accepted)
    peer[0].close()
    second.close()
    ch.spin(lambda: len(ch.errors) == 2)
    messages = [str(e["exception"]) for e in ch.errors]
    assert messages == ["admit bug", "finished bug"]
    ch.errors.clear()
    assert ch.lane.count() == 0 and _fds() == base
    ch.lane.unlisten(ls.fileno())
    ls.close()
    backend.close()


@pytest.mark.parametrize("how", ["call_soon", "call_later"])
def test_work_a_lane_callback_queues_runs_without_waiting_for_the_next_timer(ch: Harness, how: str) -> None:
    """The loop stays in the lane's wait while only the lane has work (loop._Selector's
    _lane_wait); a callback that queues asyncio work must end that wait."""
    assert ch.lane is not None
    done: asyncio.Future[bool] = ch.loop.create_future()
    far = ch.loop.call_later(60, lambda: None)  # the loop's next timer, far away

    def admit(fd: int, addr: Any) -> bool:
        if how == "call_soon":
            ch.loop.call_soon(done.set_result, True)
        else:
            ch.loop.call_later(0.05, done.set_result, True)
        return False

    ls = socket.create_server(("127.0.0.1", 0))
    ls.setblocking(False)
    ch.lane.listen(ls.fileno(), admit, lambda e: None, ch._finished, socket.AF_INET,
                   lanes.sockaddr(socket.AF_INET, ("127.0.0.1", 9)), True)
    clients: list[socket.socket] = []
    # the client comes while the loop waits in the lane (wait_for's 5 s being its next timer)
    dial = threading.Timer(0.2, lambda: clients.append(socket.create_connection(ls.getsockname())))
    dial.start()
    t0 = ch.loop.time()
    ch.loop.run_until_complete(asyncio.wait_for(done, 5))
    assert ch.loop.time() - t0 < 2.0
    dial.join()
    far.cancel()
    clients[0].close()
    ch.lane.unlisten(ls.fileno())
    ls.close()


def test_out_of_descriptors_is_handed_to_python_once_not_spun(ch: Harness) -> None:
    """accept failing with EMFILE: the lane calls ``failed`` (the runner stops accepting for
    a moment, service._accept_failed) instead of waking again and again."""
    assert ch.lane is not None
    ls = socket.create_server(("127.0.0.1", 0))
    ls.setblocking(False)
    failures: list[int] = []

    def failed(err: int) -> None:
        failures.append(err)
        assert ch.lane is not None
        ch.lane.unlisten(ls.fileno())

    ch.lane.listen(ls.fileno(), lambda fd, addr: False, failed, ch._finished, socket.AF_INET,
                   lanes.sockaddr(socket.AF_INET, ("127.0.0.1", 9)), True)
    client = socket.create_connection(ls.getsockname())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    filler: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(n) for n in os.listdir("/proc/self/fd")) + 1, hard))
        try:
            while True:  # the holes below the limit too
                filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        for _ in range(20):
            ch.loop.run_until_complete(asyncio.sleep(0.005))
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert failures == [errno.EMFILE]
    client.close()
    ls.close()
