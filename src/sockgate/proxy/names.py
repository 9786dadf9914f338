"""Host names for the proxy: ``sockgate.resolve`` lookups off the event loop, cached.

``NameLookup(resolver)`` is an async callable ``address -> (name, verified)``. The lookup
itself is ``resolve.Resolver.host_name`` (reverse lookup confirmed forward, as libwrap and
PARANOID define it), run on a small thread pool because the C library's resolver blocks.
Answers, failures included, are cached for ``ttl`` seconds (at most ``max_entries``, the
oldest dropped first), and concurrent lookups of one address share one query, so a burst
of connections from one client costs one lookup. The caller bounds the wait
(``Options.name_timeout``); a lookup that outlives it still fills the cache.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sockgate.resolve import HostName, Resolver

Answer = tuple[str | None, bool]


class NameLookup:
    def __init__(self, resolver: Resolver, ttl: float = 60.0, max_entries: int = 4096, threads: int = 4) -> None:
        self.resolver = resolver
        self.ttl = ttl
        self.max_entries = max_entries
        self.cache: dict[Any, tuple[float, Answer]] = {}
        self.inflight: dict[Any, asyncio.Future[HostName]] = {}
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sockgate-names")

    async def __call__(self, address: Any) -> Answer:
        now = time.monotonic()
        hit = self.cache.get(address)
        if hit is not None and hit[0] > now:
            return hit[1]
        fut = self.inflight.get(address)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = asyncio.ensure_future(loop.run_in_executor(self.pool, self.resolver.host_name, address))
            self.inflight[address] = fut
            fut.add_done_callback(lambda f: self._store(address, f))
        hn = await asyncio.shield(fut)
        return hn.name, hn.verified

    def _store(self, address: Any, fut: "asyncio.Future[HostName]") -> None:
        self.inflight.pop(address, None)
        if fut.cancelled() or fut.exception() is not None:
            return
        hn = fut.result()
        if len(self.cache) >= self.max_entries:
            for key in list(self.cache)[: self.max_entries // 4]:
                del self.cache[key]
        self.cache[address] = (time.monotonic() + self.ttl, (hn.name, hn.verified))
