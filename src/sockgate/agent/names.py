"""Host-name lookups for kernel rules: /etc/hosts, then DNS with its TTLs, off the main loop.

An exact name in a rule stands in the kernel for its forward-then-reverse-confirmed addresses
(``policy/forward.py``), refreshed on the records' shortest TTL (``agent/forward.py``). The C
library (``lookup.SystemNameService``) gives no TTL, so DNS is asked through dnspython: it
reads resolv.conf (nameservers, timeout, attempts, rotate), randomises query ids and source
ports, checks that the reply answers the question, retries a truncated answer over TCP and
follows CNAME chains, giving the chain's smallest TTL. A home-written client would be some
300 lines of security-sensitive parsing whose answers become kernel allow rules.

The sources are asked in the order of the usual ``hosts: files dns``: a name or address found
in ``hosts`` is answered from it (the file is read at every lookup; its answers are asked
again after ``HOSTS_TTL``, at once when the caller watches the file and asks), else DNS. Other NSS sources (mDNS, LDAP) are not
consulted for kernel rules. Per name:

* A and AAAA of the name, as an absolute name (no search list: a rule's name is what libwrap
  compares with the verified name), NXDOMAIN or no data being an empty answer (for the
  zone's negative TTL, ``NEGATIVE_TTL`` at most for NXDOMAIN); the canonical name at the end
  of the CNAME chain (a chain in either answer counts: the two queries may see the zone change
  between them, and one answer without the CNAME must not hide it);
* the PTR names of each address (at most ``MAX_ADDRESSES``: a zone that lists more fails the
  lookup, since a refusing rule must see them all); a PTR lookup that fails marks that address
  unknown (``Reverse.names`` None) rather than failing the name;
* every query within one ``timeout`` for the whole name; past it, or on SERVFAIL, REFUSED, no
  reachable server, the name's lookup *failed* — an ``Answer`` with ``lookup`` None.

``NameResolver.submit`` queues names for one worker thread (a resolver blocks; the agent's loop
must not) and signals finished answers on an eventfd for the agent's selector.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from sockgate.agent.forward import Answer
from sockgate.loading import read_regular
from sockgate.lookup import parse_address
from sockgate.policy.forward import Lookup, Reverse, key, unmapped_address
from sockgate.policy.ir import IPAddress

HOSTS_TTL = 3600.0  # an /etc/hosts answer: asked again hourly, or when the file changes
NEGATIVE_TTL = 10.0  # NXDOMAIN, or a name or address without records of the type asked
MAX_ADDRESSES = 64
HOSTS_LIMIT = 4 << 20  # bytes of /etc/hosts read at most
PARALLEL = 64  # names looked up at once by lookup_all (threads that wait on sockets)


@dataclass(frozen=True)
class HostsFile:
    """``/etc/hosts`` as the C library's files backend reads it: the lines in order."""

    lines: tuple[tuple[IPAddress, tuple[str, ...]], ...] = ()

    @staticmethod
    def parse(text: str) -> HostsFile:
        lines = []
        for raw in text.splitlines():
            fields = raw.split("#", 1)[0].split()
            addr = parse_address(fields[0]) if len(fields) >= 2 else None
            if addr is not None:
                lines.append((addr, tuple(key(n) for n in fields[1:])))
        return HostsFile(tuple(lines))

    def forward(self, name: str) -> tuple[str, tuple[IPAddress, ...]] | None:
        """The canonical name (the first name of the first line naming ``name``) and the
        addresses of every line naming it; None when no line does."""
        hits = [(addr, names) for addr, names in self.lines if name in names]
        if not hits:
            return None
        return hits[0][1][0], tuple(dict.fromkeys(a for a, _ in hits))

    def reverse(self, address: IPAddress) -> tuple[str, ...] | None:
        """The name ``gethostbyaddr`` gives from the file (its first line's first name)."""
        return next(((names[0],) for addr, names in self.lines if addr == address), None)


class Failed(Exception):
    """A lookup that did not get an answer (the reason is the message)."""


class NameResolver:
    """Looks names up (``lookup``, blocking) or in a worker thread (``submit``/``results``)."""

    def __init__(self, resolv_conf: str = "/etc/resolv.conf", hosts: str | None = "/etc/hosts",
                 timeout: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.resolv_conf = resolv_conf
        self.hosts = hosts
        self.timeout = timeout
        self.clock = clock
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._done: list[Answer] = []
        self._lock = threading.Lock()
        self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread: threading.Thread | None = None

    # -- in the caller's thread -----------------------------------------------------------

    def lookup(self, name: str, deadline: float | None = None) -> Answer:
        """One name's answer, within ``timeout`` seconds (by ``deadline``, on time.monotonic,
        when given); never raises for DNS trouble."""
        fetched = self.clock()
        try:
            lk, ttl = self._lookup(key(name), time.monotonic() + self.timeout if deadline is None else deadline)
        except Failed as e:
            return Answer(key(name), None, 0.0, fetched, str(e))
        except (dns.exception.DNSException, ValueError) as e:  # a name DNS cannot carry
            return Answer(key(name), None, 0.0, fetched, str(e) or type(e).__name__)
        return Answer(key(name), lk, ttl, fetched)

    def lookup_all(self, names: Iterable[str]) -> list[Answer]:
        """Every name's answer at once (a thread each, at most ``PARALLEL``), all by one
        deadline ``timeout`` seconds away: this runs on the agent's loop (a policy is compiled
        with its names), so however many names and however slow the resolver, the loop — and
        the guarding of new sockets — waits one timeout, not one per batch of workers. A name
        still queued at the deadline failed."""
        todo = list(dict.fromkeys(names))
        if not todo:
            return []
        deadline = time.monotonic() + self.timeout
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(todo)), thread_name_prefix="sockgate-names") as pool:
            return list(pool.map(lambda n: self._answer(n, deadline), todo))

    def _answer(self, name: str, deadline: float | None = None) -> Answer:
        try:
            return self.lookup(name, deadline)
        except Exception as e:  # a bug must not leave a name unanswered: it failed
            return Answer(key(name), None, 0.0, self.clock(), f"lookup failed: {type(e).__name__}: {e}")

    def _lookup(self, name: str, deadline: float) -> tuple[Lookup, float]:
        hosts = self._hosts()
        found = hosts.forward(name)
        if found is not None:
            canonical, addrs = found
            return Lookup(name, canonical, tuple(Reverse(a, hosts.reverse(a)) for a in addrs)), HOSTS_TTL
        res = self._resolver()
        canonical, addrs, ttl = self._forward(res, name, deadline)
        if len(addrs) > MAX_ADDRESSES:
            raise Failed(f"{len(addrs)} addresses, more than {MAX_ADDRESSES}")
        reverses = []
        for a in addrs:
            names = hosts.reverse(a)
            if names is None:
                names, t = self._reverse(res, a, deadline)
                ttl = min(ttl, t)
            reverses.append(Reverse(a, names))
        return Lookup(name, canonical, tuple(reverses)), ttl

    def _hosts(self) -> HostsFile:
        if self.hosts is None:
            return HostsFile()
        try:
            return HostsFile.parse(read_regular(self.hosts, HOSTS_LIMIT))
        except FileNotFoundError:
            return HostsFile()
        except OSError as e:
            raise Failed(f"cannot read {self.hosts}: {e.strerror or e}") from None

    def _resolver(self) -> dns.resolver.Resolver:
        try:
            return dns.resolver.Resolver(filename=self.resolv_conf)
        except (OSError, dns.exception.DNSException) as e:
            raise Failed(f"cannot use {self.resolv_conf}: {e}") from None

    def _forward(self, res: dns.resolver.Resolver, name: str,
                 deadline: float) -> tuple[str, tuple[IPAddress, ...], float]:
        qname = dns.name.from_text(name)
        canonical, addrs, ttl = name, [], HOSTS_TTL
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            answer = _ask(res, qname, rdtype, deadline)
            if answer is None:  # NXDOMAIN (some servers say so for one type only)
                ttl = min(ttl, NEGATIVE_TTL)
                continue
            if canonical == name:  # a CNAME seen in either answer is kept: libwrap would see that name
                canonical = key(answer.canonical_name.to_text())
            ttl = min(ttl, answer.chaining_result.minimum_ttl)  # (no records: the SOA's negative TTL)
            for rd in answer.rrset or ():
                # the peer an IPv4-mapped answer stands for is its IPv4 address, and that is
                # the address whose name counts (the hosts file's, as gethostbyaddr gives it)
                a = unmapped_address(ipaddress.ip_address(rd.to_text()))
                if a not in addrs:
                    addrs.append(a)
        return canonical, tuple(addrs), float(ttl)

    def _reverse(self, res: dns.resolver.Resolver, a: IPAddress,
                 deadline: float) -> tuple[tuple[str, ...] | None, float]:
        try:
            answer = _ask(res, dns.reversename.from_address(str(a)), dns.rdatatype.PTR, deadline)
        except Failed:
            return None, NEGATIVE_TTL  # this address is unknown; the others still count
        if answer is None or not answer.rrset:
            return (), NEGATIVE_TTL
        names = tuple(key(rd.to_text()) for rd in answer.rrset)
        return names, float(answer.chaining_result.minimum_ttl)

    # -- the worker -----------------------------------------------------------------------

    def submit(self, names: Iterable[str]) -> None:
        """Look ``names`` up in the worker thread; answers come through ``results``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="sockgate-names", daemon=True)
            self._thread.start()
        for n in names:
            self._queue.put(n)

    def fileno(self) -> int:
        """Readable when ``results`` has answers."""
        return self._event

    def results(self) -> list[Answer]:
        try:
            os.eventfd_read(self._event)
        except BlockingIOError:
            pass
        with self._lock:
            out, self._done = self._done, []
        return out

    def close(self) -> None:
        """Stop the worker (after the lookup it is in, bounded by ``timeout``) and the eventfd.
        A worker still running then never writes again: the descriptor number may be reused."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(self.timeout + 1)
            self._thread = None
        with self._lock:
            if self._event >= 0:
                os.close(self._event)
                self._event = -1

    def _work(self) -> None:
        while (name := self._queue.get()) is not None:
            answer = self._answer(name)
            with self._lock:
                if self._event < 0:
                    return
                self._done.append(answer)
                os.eventfd_write(self._event, 1)


def _ask(res: dns.resolver.Resolver, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
         deadline: float) -> dns.resolver.Answer | None:
    """One query within what is left until ``deadline``: the answer (its rrset None when the
    name has no records of that type), None for NXDOMAIN; ``Failed`` otherwise."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise Failed("timed out")
    try:
        return res.resolve(qname, rdtype, search=False, lifetime=left, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return None
    except dns.resolver.LifetimeTimeout:
        raise Failed("timed out") from None
    except dns.exception.DNSException as e:
        raise Failed(str(e) or type(e).__name__) from None
