"""Kernel verdicts, measured: which sources reach a guarded socket, and random policies.

``tcp_reach`` makes non-blocking connects from many source addresses at once and reports
which completed (a SYN the filter dropped gets no SYN-ACK: the connect is still pending when
the wait ends). ``udp_reach`` sends one datagram from each source and reports which the
server received. ``random_service`` builds a random address-only service (the IR directly, so
no parser is involved) inside a given IPv4 / IPv6 range, and ``boundary_sources`` lists the
edges of every network in it (start-1, start, end, end+1) plus random addresses.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import select
import socket
import struct
import time
from typing import Callable, Iterable, Sequence

from sockgate.policy.ir import Action, AddrMatch, AnyOf, Except, IPNetwork, Match, MatchAll, Rule, Service
from sockgate.policy.source import Span

SocketFactory = Callable[[int, int], list[socket.socket]]  # (family, count) -> sockets
LINGER0 = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = 24  # <linux/in.h>; honoured by IPv6 sockets too


def local_sockets(kind: int = socket.SOCK_STREAM) -> SocketFactory:
    def make(fam: int, count: int) -> list[socket.socket]:
        return [socket.socket(fam, kind) for _ in range(count)]

    return make


def rule(action: Action, match: Match, line: int = 1) -> Rule:
    return Rule(action, match, Span("test.policy", line, 1), f"{action} {match!r}"[:80])


def service(name: str, rules: Sequence[tuple[Action, Match]], default: Action | None) -> Service:
    return Service(name, tuple(rule(a, m, i + 1) for i, (a, m) in enumerate(rules)), default)


def nets(*texts: str) -> AddrMatch:
    return AddrMatch(tuple(ipaddress.ip_network(t) for t in texts), ",".join(texts))


def _random_net(rng: random.Random, base: IPNetwork, min_len: int) -> IPNetwork:
    plen = rng.randint(min_len, base.max_prefixlen)
    span = 1 << (base.max_prefixlen - base.prefixlen)
    addr = int(base.network_address) + rng.randrange(span)
    return ipaddress.ip_network((addr, plen), strict=False)


def random_service(
    rng: random.Random, name: str, v4: IPNetwork | None, v6: IPNetwork | None, n_rules: int = 6
) -> Service:
    """Random rules (networks, lists, ``except``) over ``v4``/``v6``, random default."""
    bases = [b for b in (v4, v6) if b is not None]

    def net() -> IPNetwork:
        base = rng.choice(bases)
        return _random_net(rng, base, base.max_prefixlen - rng.choice((4, 8, 12)))

    rules: list[tuple[Action, Match]] = []
    for _ in range(rng.randint(2, n_rules)):
        action = rng.choice((Action.ALLOW, Action.DENY))
        roll = rng.random()
        m: Match
        if roll < 0.55:
            m = AddrMatch(tuple(net() for _ in range(rng.randint(1, 3))))
        elif roll < 0.8:
            outer = net()
            m = Except(AddrMatch((outer,)), AddrMatch((_random_net(rng, outer, outer.prefixlen),)))
        elif roll < 0.93:
            m = AnyOf((AddrMatch((net(),)), AddrMatch((net(),))))
        else:
            m = MatchAll()
        rules.append((action, m))
    default = rng.choice((Action.ALLOW, Action.DENY, None))
    return service(name, rules, default)


def _networks(m: Match) -> Iterable[IPNetwork]:
    if isinstance(m, AddrMatch):
        yield from m.nets
    elif isinstance(m, AnyOf):
        for i in m.items:
            yield from _networks(i)
    elif isinstance(m, Except):
        yield from _networks(m.include)
        yield from _networks(m.exclude)


def boundary_sources(
    svc: Service, rng: random.Random, usable: Callable[[ipaddress._BaseAddress], bool], extra: int = 10
) -> list[str]:
    """Every network edge of ``svc`` (start-1, start, end, end+1) that is ``usable``, plus
    ``extra`` random addresses near them."""
    out: set[ipaddress._BaseAddress] = set()
    for r in svc.rules:
        for n in _networks(r.match):
            lo, hi = int(n.network_address), int(n.broadcast_address)
            for v in (lo - 1, lo, hi, hi + 1, rng.randint(lo, hi)):
                if 0 <= v < (1 << n.max_prefixlen):
                    out.add(ipaddress.ip_address(v) if n.version == 4 else ipaddress.IPv6Address(v))
    pool = sorted(out, key=lambda a: (a.version, int(a)))
    for _ in range(extra):
        if pool:
            a = rng.choice(pool)
            v = int(a) + rng.randint(-300, 300)
            if 0 <= v < (1 << a.max_prefixlen):
                out.add(ipaddress.IPv4Address(v) if a.version == 4 else ipaddress.IPv6Address(v))
    return [str(a) for a in sorted(out, key=lambda a: (a.version, int(a))) if usable(a)]


def _chunks(items: Sequence[str], n: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def drain_accept(listener: socket.socket) -> int:
    """Accept and close whatever is queued; how many there were."""
    listener.setblocking(False)
    n = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def tcp_reach(
    dest: dict[int, tuple[str, int]],
    sources: Sequence[str],
    make: SocketFactory,
    wait: float = 0.5,
    batch: int = 150,
    listener: socket.socket | None = None,
) -> dict[str, bool]:
    """Non-blocking connects from every source at once (in batches) to ``dest[family]``:
    True = connected within
    ``wait`` seconds, False = still pending (SYN dropped). A refused connect is an error."""
    result: dict[str, bool] = {}
    for chunk in _chunks(sources, batch):
        families = [socket.AF_INET6 if ":" in s else socket.AF_INET for s in chunk]
        socks: list[socket.socket] = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            count = families.count(fam)
            if count:
                socks.extend(make(fam, count))
        by_family = {socket.AF_INET: [s for s in socks if s.family == socket.AF_INET],
                     socket.AF_INET6: [s for s in socks if s.family == socket.AF_INET6]}
        pending: dict[int, tuple[socket.socket, str]] = {}
        try:
            for src, fam in zip(chunk, families):
                s = by_family[fam].pop()
                s.setblocking(False)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                # the port is picked at connect time, unique per 4-tuple: a busy machine's
                # TIME_WAIT sockets on the same address cannot exhaust it
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((src, 0))
                err = s.connect_ex(dest[fam])
                if err not in (0, errno.EINPROGRESS):
                    raise AssertionError(f"connect from {src}: {errno.errorcode.get(err, err)}")
                pending[s.fileno()] = (s, src)
                result[src] = False
            _wait_connected(pending, result, wait)
        finally:
            for s in socks:
                s.close()
            if listener is not None:
                drain_accept(listener)
    return result


def _wait_connected(pending: dict[int, tuple[socket.socket, str]], result: dict[str, bool], wait: float) -> None:
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + wait
    left = dict(pending)
    while left and (now := time.monotonic()) < deadline:
        for fd, _ in poller.poll(max(1, int((deadline - now) * 1000))):
            s, src = left.pop(fd)
            poller.unregister(fd)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise AssertionError(f"connect from {src}: {errno.errorcode.get(err, err)} (expected connect or silence)")
            result[src] = True


def udp_reach(
    server: socket.socket,
    dest: dict[int, tuple[str, int]],
    sources: Sequence[str],
    make: SocketFactory,
    batch: int = 100,
) -> dict[str, bool]:
    """One datagram from each source to ``dest[family]`` (payload = the source); True = the
    server received it. Datagrams already on their way (forged ones sent just before) are
    read too, and recorded under their payload."""
    result = {s: False for s in sources}
    server.setblocking(False)
    for chunk in _chunks(sources, batch):
        for fam in (socket.AF_INET, socket.AF_INET6):
            srcs = [s for s in chunk if (":" in s) == (fam == socket.AF_INET6)]
            for c, src in zip(make(fam, len(srcs)) if srcs else [], srcs):
                with c:
                    c.bind((src, 0))
                    c.sendto(src.encode(), dest[fam])
        _drain_udp(server, result)
    return result


def _drain_udp(server: socket.socket, result: dict[str, bool], quiet: float = 0.4) -> None:
    while True:
        ready, _, _ = select.select([server], [], [], quiet)
        if not ready:
            return
        try:
            data, addr = server.recvfrom(256)
        except BlockingIOError:
            continue
        src = data.decode()
        seen = unmapped(ipaddress.ip_address(addr[0].split("%", 1)[0]))
        # a forged ::ffff:a.b.c.d source reads as a.b.c.d, like a genuine IPv4 client's
        assert seen == unmapped(ipaddress.ip_address(src)), f"datagram says {src} but came from {seen}"
        result[src] = True


def unmapped(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``a``, or the IPv4 address an IPv4-mapped IPv6 address carries."""
    return a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None else a


def loopback_usable(a: ipaddress._BaseAddress) -> bool:
    """Every 127/8 address is a local source on lo, .0 and .255 ones included; only the
    broadcast 127.255.255.255 is not."""
    return a.version == 4 and a in ipaddress.ip_network("127.0.0.0/8") and str(a) != "127.255.255.255"
