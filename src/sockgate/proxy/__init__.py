"""The guard proxy: what the kernel cannot decide, decided in user space, at line rate.

``sockgate proxy`` sits in front of an unmodified service. Its own listening sockets carry
the kernel filter for everything the source address decides (``resolve.kernelpart``), so denied
sources never wake it; it decides the rest — Unix peer credentials, host names, connection
limits and rate bans (``limits``, pushed back into the kernel filter) — per connection
(``service``), relays bytes with ``splice(2)`` (``relay``, ``udp``), logs every decision and
every finished connection (``log``), and reloads, drains and cooperates with systemd
(``server``). docs/proxy.md is the operator's guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the package must stay cheap and free of I/O modules
    from sockgate.proxy.namecache import ReverseLookup


def reverse_lookup(timeout: float, queue: int = 64) -> "ReverseLookup":
    """The host-name lookup the proxy uses: ``sockgate.lookup.SystemNameService`` (reverse
    lookup confirmed forward) behind ``namecache.NameCache`` (a bounded lane per service, a
    cache, a caller's wait bounded by ``timeout``). Its calls are made in the lane's own
    threads, so that a slow lookup holds its lane's slot and no thread is left behind."""
    from sockgate.lookup import SystemNameService
    from sockgate.proxy.namecache import NameCache

    return NameCache(SystemNameService(None), timeout, queue=queue)
