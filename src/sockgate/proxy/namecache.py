"""Host names for the proxy: reverse lookups off the event loop, bounded, fair between services.

A peer controls how slowly its own reverse DNS answers, and the C library's resolver cannot be
interrupted: a lookup holds its thread until libc gives up (resolv.conf ``timeout`` times
``attempts``, per server). So the work is bounded where the peer cannot reach past it:

* **per service, a lane.** At most ``threads`` lookups of a service run at once, each in its
  own daemon thread; at most ``queue`` more wait, first come first served. A service whose
  clients have slow names fills its own lane only: another service's lookups never wait
  behind it.
* **per source, one lookup.** A source (``limits.source_of``: an IPv4 address, an IPv6 /64,
  one host's worth of addresses) has at most one lookup pending in a lane; connections from
  the same address share it (at most ``waiters`` of them).
* **per lookup, a deadline.** A caller waits ``timeout`` seconds at most; a queued lookup
  nobody waits for any more leaves the queue; a running one still fills the cache.
* **cut short, fail closed.** A lookup sockgate did not let finish — over a bound, past the
  deadline, or failed in sockgate itself — raises ``LookupRefused`` saying why. That is *not*
  "no name": libwrap waits for its resolver and decides with the name that comes back, which
  a ``deny`` by name may match. So the caller lets the client in only where every name would
  (``kernelpart.surely_allowed_service``) and refuses it otherwise. A lookup that finished
  without a name (no PTR record, NXDOMAIN, the resolver's own give-up) is libwrap's unknown.

Answers are cached per lane — names for ``ttl`` seconds, failures for ``negative_ttl`` (nscd's
defaults are 3600 s and 20 s) — least recently used dropped first past ``max_entries``: a
cached answer never waits, and a flood of new sources evicts only its own service's names.

The threads are daemon threads and nothing joins them: SIGTERM ends the process within
``--drain-timeout`` even while lookups hang. (A ``ThreadPoolExecutor`` is joined at
interpreter exit, after its workers have run everything still queued.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable

from sockgate.lookup import NameService, SystemNameService
from sockgate.policy.ir import IPAddress
from sockgate.proxy.limits import source_of

Answer = tuple[str | None, bool]
# what the proxy awaits for a client's host name: (service, address) → (name, verified)
ReverseLookup = Callable[[str, Any], Awaitable[Answer]]
LATE = "host-name lookup did not finish in time"
POSITIVE_TTL = 60.0
NEGATIVE_TTL = 20.0


class LookupRefused(Exception):
    """A lookup cut short: over one of the name layer's bounds, late, or failed; the message
    says which."""



@dataclass(eq=False)
class _Pending:
    address: IPAddress
    source: Hashable
    future: "asyncio.Future[Answer | str]"  # the answer, or why the lookup was cut short
    waiters: int = 0
    running: bool = False


@dataclass
class _Lane:
    """One service's lookups: queue, running count, pending by address and by source, cache."""

    queue: deque[_Pending] = field(default_factory=deque)
    running: int = 0
    pending: dict[IPAddress, _Pending] = field(default_factory=dict)
    sources: dict[Hashable, _Pending] = field(default_factory=dict)
    cache: "OrderedDict[IPAddress, tuple[float, Answer]]" = field(default_factory=OrderedDict)


class NameCache:
    """``await lookup(service, address) -> (name, verified)``; raises ``LookupRefused``."""

    def __init__(
        self,
        name_service: NameService,
        timeout: float = 2.0,
        *,
        threads: int = 4,
        queue: int = 64,
        waiters: int = 64,
        ttl: float = POSITIVE_TTL,
        negative_ttl: float = NEGATIVE_TTL,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name_service = name_service
        self.timeout = timeout
        self.threads = threads
        self.queue = queue
        self.waiters = waiters
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.clock = clock
        self.lanes: dict[str, _Lane] = {}

    async def __call__(self, service: str, address: IPAddress) -> Answer:
        lane = self.lanes.get(service)
        if lane is None:
            lane = self.lanes[service] = _Lane()
        hit = self._cached(lane, address)
        if hit is not None:
            return hit
        p = lane.pending.get(address) or self._enqueue(lane, address)
        if p.waiters >= self.waiters:
            raise LookupRefused(f"{p.waiters} connections already wait for this address's host name")
        p.waiters += 1
        try:
            answer = await asyncio.wait_for(asyncio.shield(p.future), self.timeout)
        except asyncio.TimeoutError:
            raise LookupRefused(f"{LATE} ({self.timeout:g}s)") from None
        finally:
            p.waiters -= 1
            if p.waiters == 0 and not p.running and not p.future.done():
                self._forget(lane, p)  # nobody waits for it: it leaves the queue
                lane.queue.remove(p)
        if isinstance(answer, str):
            raise LookupRefused(answer)
        return answer

    # -- the lane ---------------------------------------------------------------------------

    def _enqueue(self, lane: _Lane, address: IPAddress) -> _Pending:
        src = source_of(address)
        if src in lane.sources:
            raise LookupRefused("a host-name lookup for another address of this source is pending")
        if lane.running >= self.threads and len(lane.queue) >= self.queue:
            raise LookupRefused(f"host-name lookups of this service are at their bound ({self.threads} running, {self.queue} waiting)")
        p = _Pending(address, src, asyncio.get_running_loop().create_future())
        lane.pending[address] = lane.sources[src] = p
        lane.queue.append(p)
        self._pump(lane)
        return p

    def _pump(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        while lane.running < self.threads and lane.queue:
            p = lane.queue.popleft()
            p.running = True
            lane.running += 1
            t = threading.Thread(target=self._work, args=(loop, lane, p), name="sockgate-names", daemon=True)
            try:
                t.start()
            except RuntimeError:  # no thread to be had: fail this one, closed
                self._done(lane, p, "host-name lookup could not be started")

    def _work(self, loop: asyncio.AbstractEventLoop, lane: _Lane, p: _Pending) -> None:
        """In the lookup's thread: the blocking call, then the answer back to the loop."""
        try:
            hn = self.name_service.host_name(p.address)
            answer: Answer | str = (hn.name, hn.verified)
        except Exception as e:  # a failure of ours, not the resolver's answer: cut short
            answer = f"host-name lookup failed: {e}"
        try:
            loop.call_soon_threadsafe(self._done, lane, p, answer)
        except RuntimeError:
            pass  # the loop is closed: the proxy is exiting, nobody waits

    def _done(self, lane: _Lane, p: _Pending, answer: Answer | str) -> None:
        lane.running -= 1
        self._forget(lane, p)
        if not isinstance(answer, str):  # a lookup cut short is not an answer to cache
            self._store(lane, p.address, answer)
        if not p.future.done():
            p.future.set_result(answer)
        self._pump(lane)

    @staticmethod
    def _forget(lane: _Lane, p: _Pending) -> None:
        if lane.pending.get(p.address) is p:
            del lane.pending[p.address]
        if lane.sources.get(p.source) is p:
            del lane.sources[p.source]

    # -- the cache --------------------------------------------------------------------------

    def _cached(self, lane: _Lane, address: IPAddress) -> Answer | None:
        hit = lane.cache.get(address)
        if hit is None:
            return None
        if hit[0] <= self.clock():
            del lane.cache[address]
            return None
        lane.cache.move_to_end(address)
        return hit[1]

    def _store(self, lane: _Lane, address: IPAddress, answer: Answer) -> None:
        ttl = self.ttl if answer[0] is not None else self.negative_ttl
        lane.cache[address] = (self.clock() + ttl, answer)
        lane.cache.move_to_end(address)
        while len(lane.cache) > self.max_entries:
            lane.cache.popitem(last=False)


def reverse_lookup(timeout: float, queue: int = 64) -> ReverseLookup:
    """The host-name lookup the proxy uses: ``sockgate.lookup.SystemNameService`` (reverse
    lookup confirmed forward) behind a ``NameCache`` (a bounded lane per service, a cache, a
    caller's wait bounded by ``timeout``). Its calls are made in the lane's own threads, so
    that a slow lookup holds its lane's slot and no thread is left behind."""
    return NameCache(SystemNameService(None), timeout, queue=queue)
