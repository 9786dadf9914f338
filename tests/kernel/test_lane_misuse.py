"""The C relay (proxy/_lane.c) and its Python side under reloads and misuse: a kept service's
listeners moved whole to a new forward, a removed service retired, a forward no connect could
reach refused before anything changes; a re-entered poll refused; closing a running loop
refusing before touching the lane; a made-up descriptor number neither hanging nor sizing
the lane's table."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from sockgate.log import Log
from sockgate.policy.parser import parse_policy
from sockgate.proxy import lane as lanes
from sockgate.proxy.loop import ProxyLoop
from sockgate.proxy.server import Proxy, new_loop
from sockgate.proxy.relay import PipePool
from sockgate.proxy.spec import ProxySpec
from sockgate.urls import parse_url

pytestmark = pytest.mark.skipif(not lanes.LANE_BUILT, reason="the C relay was not built")
SRC = Path(__file__).resolve().parents[2] / "src"


@contextlib.contextmanager
def lane_proxy(wanted: list[ProxySpec], out: io.StringIO) -> Iterator[tuple[Proxy, Any]]:
    """An in-process proxy serving ``wanted`` on its own loop with the lane attached; a reload
    loads ``wanted`` as it is then (change it in place). Everything stopped at the end."""
    proxy = Proxy(wanted, log=Log("json", out), loader=lambda: list(wanted), inherit=False)
    proxy.open()
    loop = new_loop(False)
    assert isinstance(loop, ProxyLoop)
    proxy.loop = loop
    lane = lanes.attach(loop, proxy.pipes)
    try:
        for r in proxy.runners.values():
            r.start(loop, r.listeners)
        yield proxy, lane
    finally:
        for r in proxy._all():
            r.stop_accepting()
        proxy.pipes.close()
        loop.close()


@pytest.fixture
def old_backend() -> Iterator[socket.socket]:
    b = socket.socket()
    b.bind(("127.0.0.1", 0))
    b.listen(8)
    b.settimeout(0.5)
    yield b
    b.close()


@pytest.mark.parametrize("direction", ["tcp-to-unix", "tcp-to-another-tcp", "unchanged", "too-long-path"])
def test_a_reload_moves_a_kept_services_listeners_whole_or_not_at_all(old_backend: socket.socket, direction: str,
                                                                      tmp_path: Path) -> None:
    """A reload that changes a kept service's forward moves its listeners to the new target
    (the lane's registration removed, then made again: never EEXIST half-way through the
    commit); one that changes nothing leaves them serving; a forward no connect could reach (a
    Unix path over sun_path) is refused before anything changes, the old target kept."""
    new_backend = socket.socket(socket.AF_UNIX if direction == "tcp-to-unix" else socket.AF_INET)
    new_backend.bind(str(tmp_path / "b.sock") if direction == "tcp-to-unix" else ("127.0.0.1", 0))
    new_backend.listen(8)
    new_backend.settimeout(2)
    tcp_fwd = parse_url(f"tcp://127.0.0.1:{old_backend.getsockname()[1]}")
    then = {"tcp-to-unix": parse_url("unix:" + str(tmp_path / "b.sock")),
            "tcp-to-another-tcp": parse_url(f"tcp://127.0.0.1:{new_backend.getsockname()[1] if direction != 'tcp-to-unix' else 0}"),
            "unchanged": tcp_fwd,
            "too-long-path": parse_url("unix:" + str(tmp_path / ("x" * 120)))}[direction]
    svc = parse_policy("service a {\n allow 127.0.0.1\n}\n", "p.conf").services[0]
    listen = (parse_url("tcp://127.0.0.1:0"),)
    wanted = [ProxySpec(svc, listen, tcp_fwd)]
    out = io.StringIO()
    with lane_proxy(wanted, out) as (proxy, lane):
        [runner] = proxy.runners.values()
        port = runner.listeners[0].sock.getsockname()[1]
        wanted[:] = [ProxySpec(svc, listen, then)]
        proxy.reload()  # never raises
        expected = old_backend if direction in ("unchanged", "too-long-path") else new_backend
        if direction == "too-long-path":
            assert runner.target.text == tcp_fwd.display() and "at most 107 bytes" in out.getvalue()
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            for _ in range(20):
                lane.poll(100)
                try:
                    expected.settimeout(0.05)
                    expected.accept()[0].close()
                    break
                except (socket.timeout, BlockingIOError):
                    continue
            else:
                pytest.fail(f"no connection reached the {'old' if expected is old_backend else 'new'} backend")
    new_backend.close()


NESTED = textwrap.dedent("""
    import socket
    from sockgate.proxy import lane as lanes
    from sockgate.proxy.loop import ProxyLoop
    from sockgate.proxy.relay import PipePool
    loop = ProxyLoop()
    lane = lanes.attach(loop, PipePool(splice=False))
    ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(64); ls.setblocking(False)
    calls = 0
    def admit(fd, addr):
        global calls
        calls += 1
        if calls == 1:
            try:
                lane.poll(0)  # re-entered from a callback: refused
            except RuntimeError as e:
                print("refused:", e)
        elif calls == 3:
            lane.unlisten(ls.fileno())
        return False
    lane.listen(ls.fileno(), admit, lambda e: None, lambda *a: None, socket.AF_INET,
                lanes.sockaddr(socket.AF_INET, ("127.0.0.1", 9)), True)
    cs = [socket.create_connection(ls.getsockname()) for _ in range(6)]
    lane.poll(200)
    lane.close(); loop.close()
""")


def test_poll_re_entered_from_a_callback_is_refused_and_an_unlisten_mid_burst_is_safe(tmp_path: Path) -> None:
    """A ``poll`` re-entered from an admit callback would run the listener being accepted on
    under its own feet (a listener freed while its burst still reads it): it is refused with
    RuntimeError; an ``unlisten`` from a later callback of the same burst ends the burst
    safely (the listener is freed once the burst is over). In a child: a fault kills it, not
    the test run. (Valgrind memcheck, when at hand, finds no invalid access in this script.)"""
    script = tmp_path / "nested.py"
    script.write_text(NESTED)
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONMALLOC="malloc")
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "refused: lane.poll called from a lane callback" in p.stdout


def test_closing_a_running_proxy_loop_leaves_its_lane_alone() -> None:
    """``ProxyLoop.close`` used to detach and closes the lane before asyncio's own ``close``
    refuses a running loop: the call raises "Cannot close a running event loop" (as if nothing
    happened) yet every lane connection was reset without its ``finished`` callback (the
    runner's table and per-source counts keep them forever) and the listeners are gone while
    the proxy keeps running."""

    loop = ProxyLoop()
    lane = lanes.attach(loop, PipePool())
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    ends: list[object] = []
    lane.relay(b.detach(), c.detach(), "token", lambda *x: ends.append(x), False)

    async def main() -> None:
        with pytest.raises(RuntimeError):
            loop.close()
        assert loop.lane is lane and lane.count() == 1  # refused: nothing changed
        a.sendall(b"hi")
        d.settimeout(2)
        await asyncio.sleep(0.05)
        assert d.recv(10) == b"hi"

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        for s in (a, d):
            s.close()


def test_a_huge_descriptor_number_neither_hangs_nor_grows_the_table() -> None:
    """``slot_claim`` used to double an int until it exceeds the descriptor, before the
    descriptor is checked: ``listen(2**31 - 1, ...)`` overflows it (undefined behaviour; here
    an endless loop with the GIL held), and ``listen(1 << 26, ...)`` reallocates the table to
    2 GiB before epoll says EBADF (kept for the lane's life)."""
    code = textwrap.dedent("""
        import socket
        from sockgate.proxy import lane as lanes
        from sockgate.proxy.loop import ProxyLoop
        from sockgate.proxy.relay import PipePool
        lane = lanes.attach(ProxyLoop(), PipePool())
        try:
            lane.listen(2**31 - 1, print, print, print, socket.AF_INET, lanes.sockaddr(socket.AF_INET, ("127.0.0.1", 9)), True)
        except (OSError, ValueError, OverflowError):
            pass
    """)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    try:
        subprocess.run([sys.executable, "-c", code], env=env, timeout=15, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("lane.listen(2**31 - 1) never returned")


def test_a_reload_removing_a_service_retires_it_while_moving_another(old_backend: socket.socket, tmp_path: Path) -> None:
    """A reload that moves one kept service to another forward and removes another: the
    removed one is retired (its listener closed, nobody relays for it)."""
    svcs = parse_policy("service a {\n allow 127.0.0.1\n}\nservice b {\n allow 127.0.0.1\n}\n", "p.conf").services
    listen = (parse_url("tcp://127.0.0.1:0"),)
    tcp_fwd = parse_url(f"tcp://127.0.0.1:{old_backend.getsockname()[1]}")
    wanted = [ProxySpec(svcs[0], listen, tcp_fwd), ProxySpec(svcs[1], listen, tcp_fwd)]
    with lane_proxy(wanted, io.StringIO()) as (proxy, lane):
        b_port = proxy.runners[wanted[1].key].listeners[0].sock.getsockname()[1]
        wanted[:] = [ProxySpec(svcs[0], listen, parse_url("unix:" + str(tmp_path / "a.sock")))]  # b removed
        proxy.reload()
        assert [r.name for r in proxy.runners.values()] == ["a"]
        try:
            with socket.create_connection(("127.0.0.1", b_port), timeout=0.5):
                lane.poll(200)
                with pytest.raises(socket.timeout):
                    old_backend.accept()[0].close()  # b is gone: nobody relays for it
        except ConnectionRefusedError:
            pass  # b's listener closed: the safe outcome
