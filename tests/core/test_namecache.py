"""proxy.namecache: host-name lookups bounded per service, per source and per lookup, cached.

The resolver here is a fake whose lookups of "slow" addresses block until the test opens a
gate — a client that controls how slowly its own reverse DNS answers. The real thing (the C
library against a DNS server that delays its answers) is in tests/kernel/test_proxy_names.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import threading
import time
from typing import Any, Awaitable, Callable

import pytest

from sockgate.proxy.namecache import LookupRefused, NameCache
from sockgate.lookup import HostName
from sockgate.policy.ir import IPAddress


class Gated:
    """``host_name`` blocks for addresses in ``slow`` until ``gate`` is set; counts calls."""

    def __init__(self, named: dict[str, str], slow: Callable[[IPAddress], bool] = lambda a: False) -> None:
        self.named = {ipaddress.ip_address(k): v for k, v in named.items()}
        self.slow = slow
        self.gate = threading.Event()
        self.calls: list[IPAddress] = []
        self.lock = threading.Lock()

    def addresses(self, name: str) -> tuple[IPAddress, ...]:
        return tuple(a for a, n in self.named.items() if n == name)

    def host_name(self, address: IPAddress) -> HostName:
        with self.lock:
            self.calls.append(address)
        if self.slow(address):
            self.gate.wait(30)
        name = self.named.get(address)
        return HostName(name, name is not None)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def slow_127_1(a: IPAddress) -> bool:
    return str(a).startswith("127.1.")


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 20))


async def settle(cond: Callable[[], bool]) -> None:
    """Let the loop run until ``cond`` holds (the lanes' state changes on the loop)."""
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


async def outcome(fut: Awaitable[Any]) -> Any:
    try:
        return await fut
    except LookupRefused as e:
        return e


def test_a_service_flooded_with_slow_names_does_not_starve_another() -> None:
    res = Gated({"127.0.0.9": "fast.test"}, slow_127_1)
    look = NameCache(res, timeout=5, threads=2, queue=4)

    async def body() -> None:
        flood = [asyncio.ensure_future(outcome(look("slow", ip(f"127.1.0.{i}")))) for i in range(1, 51)]
        await settle(lambda: len(res.calls) == 2)
        refused = [f.result() for f in flood if f.done()]
        assert len(refused) == 50 - 6 and all(isinstance(r, LookupRefused) for r in refused)
        assert "at their bound (2 running, 4 waiting)" in str(refused[0])
        t0 = time.monotonic()
        assert await look("fast", ip("127.0.0.9")) == ("fast.test", True)  # another service: its own lane
        assert time.monotonic() - t0 < 1.0
        assert len(res.calls) == 3  # and the flood still runs two at a time
        waiting = [f for f in flood if not f.done()]
        res.gate.set()
        assert await asyncio.gather(*waiting) == [(None, False)] * 6
        assert not look.lanes["slow"].pending and not look.lanes["slow"].sources

    run(body)


def test_cached_names_are_answered_while_the_lane_is_full() -> None:
    res = Gated({"127.0.0.9": "fast.test"}, slow_127_1)
    look = NameCache(res, timeout=5, threads=1, queue=1)

    async def body() -> None:
        assert await look("svc", ip("127.0.0.9")) == ("fast.test", True)
        busy = [asyncio.ensure_future(outcome(look("svc", ip(f"127.1.0.{i}")))) for i in (1, 2)]
        await settle(lambda: len(res.calls) == 2)
        assert isinstance(await look("svc", ip("127.0.0.9")), tuple)  # from the cache, at once
        assert isinstance(await outcome(look("svc", ip("127.1.0.3"))), LookupRefused)
        res.gate.set()
        await asyncio.gather(*busy)

    run(body)


def test_one_lookup_per_source_shared_by_its_connections() -> None:
    res = Gated({}, lambda a: True)
    look = NameCache(res, timeout=5, threads=4, queue=4, waiters=3)

    async def body() -> None:
        same = [asyncio.ensure_future(look("svc", ip("2001:db8::1"))) for _ in range(3)]
        await settle(lambda: len(res.calls) == 1)
        over = await outcome(look("svc", ip("2001:db8::1")))
        assert isinstance(over, LookupRefused) and "3 connections already wait" in str(over)
        # another address of the same /64 is the same source; another /64 is not
        sibling = await outcome(look("svc", ip("2001:db8::ffff:1")))
        assert isinstance(sibling, LookupRefused) and "another address of this source" in str(sibling)
        other = asyncio.ensure_future(look("svc", ip("2001:db8:0:1::1")))
        await settle(lambda: len(res.calls) == 2)
        res.gate.set()
        assert await asyncio.gather(*same, other) == [(None, False)] * 4
        assert len(res.calls) == 2

    run(body)


def test_a_late_lookup_is_cut_short_not_nameless_and_leaves_the_queue() -> None:
    """Late is not "no name": libwrap would have waited for the name, which a deny rule may
    match, so the caller hears that the lookup was cut short (and decides fail-closed)."""
    res = Gated({}, slow_127_1)
    look = NameCache(res, timeout=0.2, threads=1, queue=8)

    async def body() -> None:
        answers = await asyncio.gather(*(look("svc", ip(f"127.1.0.{i}")) for i in range(1, 5)), return_exceptions=True)
        assert all(isinstance(a, LookupRefused) and "did not finish in time" in str(a) for a in answers)
        lane = look.lanes["svc"]
        assert not lane.queue and lane.running == 1 and len(res.calls) == 1  # nobody waits: gone
        res.gate.set()
        await settle(lambda: lane.running == 0)
        assert not lane.pending and not lane.sources

    run(body)


def test_answers_and_failures_are_cached_for_their_ttl() -> None:
    now = [1000.0]
    res = Gated({"192.0.2.1": "a.test"})
    look = NameCache(res, ttl=60, negative_ttl=20, clock=lambda: now[0])

    async def body() -> None:
        for _ in range(3):
            assert await look("s", ip("192.0.2.1")) == ("a.test", True)
            assert await look("s", ip("192.0.2.2")) == (None, False)
        assert len(res.calls) == 2
        now[0] += 21  # the failure has expired, the name has not
        await look("s", ip("192.0.2.1"))
        await look("s", ip("192.0.2.2"))
        assert res.calls[2:] == [ip("192.0.2.2")]
        now[0] += 40
        await look("s", ip("192.0.2.1"))
        assert res.calls[3:] == [ip("192.0.2.1")]

    run(body)


def test_the_cache_drops_the_least_recently_used() -> None:
    res = Gated({})
    look = NameCache(res, max_entries=2)

    async def body() -> None:
        for a in ("192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.3", "192.0.2.1", "192.0.2.2"):
            await look("s", ip(a))
        assert [str(a) for a in res.calls] == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.2"]

    run(body)


def test_a_failing_resolver_cuts_the_lookup_short_and_caches_nothing() -> None:
    class Broken(Gated):
        def host_name(self, address: IPAddress) -> HostName:
            raise UnicodeError("label too long")

    async def body() -> None:
        look = NameCache(Broken({}))
        with pytest.raises(LookupRefused, match="host-name lookup failed: label too long"):
            await look("s", ip("192.0.2.1"))
        assert not look.lanes["s"].cache

    run(body)


def test_hanging_lookups_do_not_hold_the_process_at_exit() -> None:
    """The lookup threads are never joined: the process ends while libc still hangs."""
    code = (
        "import asyncio, ipaddress, threading, time\n"
        "from sockgate.proxy.namecache import NameCache\n"
        "class Hang:\n"
        "    def host_name(self, a): threading.Event().wait()\n"
        "    def addresses(self, n): return ()\n"
        "look = NameCache(Hang(), timeout=0.1, threads=4, queue=64)\n"
        "async def main():\n"
        "    await asyncio.gather(*(look('s', ipaddress.ip_address(f'127.1.0.{i}')) for i in range(1, 60)),\n"
        "                         return_exceptions=True)\n"
        "asyncio.run(main())\n"
        "print('done', flush=True)\n"
    )
    t0 = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: a lookup thread was joined")
    assert out.returncode == 0 and out.stdout == "done\n", out.stderr
    assert time.monotonic() - t0 < 5
