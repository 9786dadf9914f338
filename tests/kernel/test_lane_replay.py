"""The lane's remembered path (``_lane.c``, "the remembered path"; ``service.Runner.memo``): a
source whose admission Python remembered is admitted by the lane with no call into Python, its
two records written as Python writes them, counted against the same limits, forgotten on a new
policy, aborted with the rest; anything the memo does not cover still goes to Python."""

from __future__ import annotations

import asyncio
import io
import json
import re
import select
import socket
import threading
from typing import Any, Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockgate.log import Log
from sockgate.policy.parser import parse_policy
from sockgate.proxy import lane as lanes
from sockgate.proxy.loop import ProxyLoop
from sockgate.proxy.server import Proxy, new_loop
from sockgate.proxy.service import Runner
from sockgate.proxy.spec import ProxySettings, ProxySpec
from sockgate.urls import parse_url
from support.proxyproc import EchoServer, is_reset

pytestmark = pytest.mark.skipif(not lanes.LANE_BUILT, reason="the C relay was not built")

FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def records(text: str) -> list[dict[str, Any]]:
    """The text log's records: key=value, quoted values as JSON strings."""
    out = []
    for line in text.splitlines():
        rec = {k: json.loads(v) if v.startswith('"') else v for k, v in FIELD.findall(line.split(" ", 1)[1])}
        rec["_keys"] = [k for k, _ in FIELD.findall(line.split(" ", 1)[1])]
        out.append(rec)
    return out


class Served:
    """An in-process proxy (text log) on its own loop with the lane; ``run(cond)`` turns the
    loop until ``cond()`` holds, clients run in threads."""

    def __init__(self, policy: str, echo: EchoServer, options: ProxySettings, calls: list[str]) -> None:
        self.out = io.StringIO()
        self.log = Log("text", self.out, flush_interval=0.0)
        specs = [ProxySpec(svc, (parse_url("tcp://127.0.0.1:0"),), parse_url(f"tcp://127.0.0.1:{echo.port}"))
                 for svc in parse_policy(policy, "p.conf").services]
        self.proxy = Proxy(specs, options=options, log=self.log, loader=lambda: list(specs), inherit=False)
        self.proxy.open()
        loop = new_loop(False)
        assert isinstance(loop, ProxyLoop)
        self.loop = loop
        self.proxy.loop = loop
        lanes.attach(loop, self.proxy.pipes)
        self.runners = list(self.proxy.runners.values())
        self.runner = self.runners[0]
        for r in self.runners:
            r._lane_admit = counting(r._lane_admit, calls)  # type: ignore[method-assign]
            r.start(loop, r.listeners)
        self.ports = [r.listeners[0].sock.getsockname()[1] for r in self.runners]
        self.port = self.ports[0]

    def run(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async def until() -> None:
            deadline = self.loop.time() + timeout
            while not cond():
                assert self.loop.time() < deadline, "timed out"
                await asyncio.sleep(0.005)
        self.loop.run_until_complete(until())

    def records(self) -> list[dict[str, Any]]:
        self.log.flush()
        return [r for r in records(self.out.getvalue()) if r["event"] in ("decision", "close")]

    def close(self) -> None:
        for r in self.runners:
            r.stop_accepting()
        self.proxy.pipes.close()
        self.loop.close()


def counting(admit: Callable[[int, Any], Any], calls: list[str]) -> Callable[[int, Any], Any]:
    def counted(fd: int, addr: Any) -> Any:
        calls.append(addr[0] if isinstance(addr, tuple) else "unix")
        return admit(fd, addr)
    return counted


@pytest.fixture
def served(echo: EchoServer) -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(policy: str = "service a {\n allow 127.0.0.1\n}\n", calls: list[str] | None = None, **opts: Any) -> Served:
        s = Served(policy, echo, ProxySettings(backend="cbpf", **opts), calls if calls is not None else [])
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def in_thread(fn: Callable[[], None]) -> Callable[[], bool]:
    """``fn`` started in a thread; the returned check says it finished (its error re-raised)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 (re-raised by the check)
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def done() -> bool:
        if errors:
            raise errors[0]
        return not t.is_alive()
    return done


def refused(port: int) -> None:
    assert is_reset(port), "not refused"


def exchange(port: int, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(b"x" * 64)
        got = b""
        while len(got) < 64:
            chunk = s.recv(64 - len(got))
            if not chunk:
                break
            got += chunk
        return got


def test_a_remembered_source_is_admitted_and_logged_by_the_lane_as_python_does(served: Callable[..., Served]) -> None:
    calls: list[str] = []
    s = served(calls=calls)
    done = in_thread(lambda: [exchange(s.port) for _ in range(6)] and None)
    s.run(lambda: done() and len(s.records()) == 12)
    assert calls == ["127.0.0.1", "127.0.0.1"]  # learnt, then handed to the lane: four never reached Python
    recs = s.records()
    decisions = [r for r in recs if r["event"] == "decision"]
    closes = [r for r in recs if r["event"] == "close"]
    assert len(decisions) == len(closes) == 6
    for group in (decisions, closes):
        shapes = {json.dumps({k: v for k, v in r.items() if k not in ("peer", "duration")}, sort_keys=True) for r in group}
        assert len(shapes) == 1, group  # the same fields, in the same order, with the same values
        assert all(r["peer"].startswith("127.0.0.1:") for r in group)
    assert closes[-1]["bytes_up"] == closes[-1]["bytes_down"] == "64" and closes[-1]["end"] == "closed"
    assert all(float(r["duration"]) >= 0 for r in closes)
    assert s.runner.memo.keys() == {"127.0.0.1"}
    assert s.runner.book is not None and s.runner.book.open() == 0 and s.runner.per_source == {}


def test_other_sources_and_a_new_policy_go_to_python(served: Callable[..., Served]) -> None:
    calls: list[str] = []
    s = served("service a {\n allow 127.0.0.1\n allow 127.0.0.2\n}\n", calls=calls)
    done = in_thread(lambda: [exchange(s.port) for _ in range(3)] and [exchange(s.port, "127.0.0.2")] and None)
    s.run(lambda: done() and len(s.records()) == 8)
    assert calls == ["127.0.0.1", "127.0.0.1", "127.0.0.2"]
    s.runner.install(parse_policy("service a {\n allow 127.0.0.2\n}\n", "p.conf").services[0])
    assert s.runner.memo == {}  # decided under the old policy: not replayed under the new
    done = in_thread(lambda: refused(s.port))
    s.run(lambda: done() and any(r.get("decision") == "deny" for r in s.records()))
    assert calls[-1] == "127.0.0.1"


def test_the_limits_count_the_lanes_connections(served: Callable[..., Served]) -> None:
    calls: list[str] = []
    s = served(calls=calls, max_connections_per_source=2)
    done = in_thread(lambda: [exchange(s.port) for _ in range(2)] and None)
    s.run(lambda: done() and len(s.records()) == 4)
    held = [socket.create_connection(("127.0.0.1", s.port), timeout=5) for _ in range(2)]
    try:
        assert s.runner.book is not None
        s.run(lambda: s.runner.book is not None and s.runner.book.open() == 2)
        assert s.runner.per_source == {"127.0.0.1": 2} and s.runner.busy() == 2 and len(calls) == 2
        third = in_thread(lambda: refused(s.port))  # over the limit: reset
        s.run(lambda: third() and any(r.get("decision") == "deny" for r in s.records()))
        deny = [r for r in s.records() if r.get("decision") == "deny"][-1]
        assert deny["rule"] == "limit" and "from one source" in deny["reason"] and len(calls) == 3
        s.runner.abort_all("shutdown deadline")
        s.run(lambda: s.runner.book is not None and s.runner.book.open() == 0)
        ends = [r["end"] for r in s.records() if r["event"] == "close"][-2:]
        assert ends == ["shutdown deadline", "shutdown deadline"] and s.runner.per_source == {}
    finally:
        for h in held:
            h.close()


def test_the_table_limit_counts_them_too(served: Callable[..., Served]) -> None:
    calls: list[str] = []
    s = served(calls=calls, max_connections=1)
    for n in (2, 4):  # one at a time: a second while the first is still open would be over the limit
        done = in_thread(lambda: exchange(s.port) and None)
        s.run(lambda: done() and len(s.records()) == n)
    with socket.create_connection(("127.0.0.1", s.port), timeout=5):
        s.run(lambda: s.runner.book is not None and s.runner.book.open() == 1)
        second = in_thread(lambda: refused(s.port))
        s.run(lambda: second() and any(r.get("decision") == "deny" for r in s.records()))
        assert "proxy's limit of 1" in [r for r in s.records() if r.get("decision") == "deny"][-1]["reason"]


@given(st.floats(0.0, 1e7, allow_nan=False))
def test_a_duration_is_written_as_python_writes_it(x: float) -> None:
    from sockgate.proxy import _lane

    assert _lane.duration(x) == repr(round(x, 6))


def test_the_log_keeps_the_order_of_events_across_services_and_python(served: Callable[..., Served]) -> None:
    """Records the lane writes are handed to the log before Python writes its own, and in the
    order they were written whichever service wrote them."""
    s = served("service a {\n allow 127.0.0.1\n allow 127.0.0.3\n}\nservice b {\n allow 127.0.0.1\n}\n")
    for n, port in ((2, s.ports[0]), (4, s.ports[0]), (6, s.ports[1]), (8, s.ports[1])):  # learnt, one at a time
        done = in_thread(lambda: exchange(port) and None)
        s.run(lambda: done() and len(s.records()) == n)
    # all queued before the loop turns: a's listener ready first, then b's; on a, a source not
    # learnt yet (Python writes its record) between two remembered ones (the lane writes theirs)
    held = [socket.create_connection(("127.0.0.1", s.ports[0]), timeout=5),
            socket.create_connection(("127.0.0.1", s.ports[1]), timeout=5),
            socket.create_connection(("127.0.0.1", s.ports[0]), timeout=5, source_address=("127.0.0.3", 0)),
            socket.create_connection(("127.0.0.1", s.ports[0]), timeout=5)]
    try:
        s.run(lambda: len([r for r in s.records() if r["event"] == "decision"]) == 8)
        got = [(r["service"], r["peer"].split(":")[0]) for r in s.records() if r["event"] == "decision"][4:]
        assert got == [("a", "127.0.0.1"), ("a", "127.0.0.3"), ("a", "127.0.0.1"), ("b", "127.0.0.1")], got
    finally:
        for h in held:
            h.close()


def test_a_book_that_was_not_set_up_is_refused(echo: EchoServer) -> None:
    from sockgate.proxy._lane import Book, Lane

    ep = select.epoll()
    lane = Lane(ep.fileno(), lambda message, exc: None)
    with ep, socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        with pytest.raises(TypeError):
            lane.listen(ls.fileno(), print, print, print, socket.AF_INET, lanes.sockaddr(socket.AF_INET, ("127.0.0.1", echo.port)),
                        True, Book.__new__(Book))


def test_limits_beyond_a_c_long_mean_no_limit(served: Callable[..., Served]) -> None:
    s = served(max_connections=10**30, max_connections_per_source=10**30)
    done = in_thread(lambda: [exchange(s.port) for _ in range(3)] and None)
    s.run(lambda: done() and len(s.records()) == 6)
    assert all(r["decision"] == "allow" for r in s.records())
