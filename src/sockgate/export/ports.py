"""Where a service listens, for the exporters: ``--map`` arguments and services(5) text.

A packet filter judges packets by protocol and destination port, so every exported service
needs ports. Native service blocks say where they listen (``service ssh tcp/22``);
hosts_access rules name daemons instead, so the operator maps them (``--map sshd=tcp/22``),
and a daemon name that is also a services(5) name (``ssh``, ``domain``, ``ntp``) falls back
to that database. Daemon names are never rewritten (``sshd`` is not ``ssh``): a guess that
picks the wrong port would guard the wrong service.

Pure: ``parse_services`` takes the text of /etc/services; ``sockgate.services_db`` reads it.
"""

from __future__ import annotations

import re
from typing import Iterable, Literal, Mapping, cast

from sockgate.errors import UsageError
from sockgate.policy.intervals import union
from sockgate.intlist import ListError, number, parse_spans
from sockgate.policy.ir import Endpoint

PortRange = tuple[int, int]
Proto = Literal["tcp", "udp"]

_MAP_RE = re.compile(r"^(?P<daemon>[^=\s]+)=(?P<proto>[a-z]+)/(?P<ports>[0-9,\-]+)$")


def merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sorted, overlapping or adjacent ranges joined: ``(22,22),(20,23),(24,30)`` → ``(20,30)``
    (inclusive ranges; the union is ``policy.intervals``'s, over half-open ones)."""
    return tuple((lo, hi - 1) for lo, hi in union((lo, hi + 1) for lo, hi in ranges))


def parse_ports(text: str, where: str) -> tuple[PortRange, ...]:
    """``22``, ``53,5353``, ``8000-8099`` → inclusive ranges; ``where`` names the argument."""
    try:
        return merge_ranges(parse_spans(text, 1, 65535, "port"))
    except ListError as e:
        raise UsageError(f"{where}: {e}") from None


def parse_map(args: Iterable[str]) -> dict[str, tuple[Endpoint, ...]]:
    """``--map DAEMON=PROTO/PORTS`` arguments (repeatable; one daemon may be mapped several
    times and listens on all of them) → daemon name → endpoints, in argument order."""
    found: dict[str, list[Endpoint]] = {}
    for arg in args:
        m = _MAP_RE.match(arg.strip())
        if m is None:
            raise UsageError(f"--map {arg!r}: expected DAEMON=PROTO/PORT, e.g. sshd=tcp/22 or ntpd=udp/123")
        proto = m["proto"]
        if proto not in ("tcp", "udp"):
            raise UsageError(f"--map {arg!r}: protocol must be tcp or udp, found {proto!r}")
        ports = parse_ports(m["ports"], f"--map {arg!r}")
        found.setdefault(m["daemon"], []).append(Endpoint(proto=cast(Proto, proto), ports=ports))
    return {name: tuple(eps) for name, eps in found.items()}


def parse_services(text: str) -> dict[str, tuple[Endpoint, ...]]:
    """services(5): ``name port/proto [aliases...] [# comment]`` → name (and each alias) →
    its tcp/udp endpoints in file order. Other protocols and malformed lines are ignored, as
    getservbyname(3) ignores them."""
    found: dict[str, list[Endpoint]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        port_s, _, proto = fields[1].partition("/")
        port = number(port_s, 1, 65535)
        if port is None or proto not in ("tcp", "udp"):
            continue
        ep = Endpoint(proto=cast(Proto, proto), ports=((port, port),))
        for name in [fields[0], *fields[2:]]:
            eps = found.setdefault(name, [])
            if ep not in eps:
                eps.append(ep)
    return {name: tuple(eps) for name, eps in found.items()}


def port_table(endpoints: Iterable[Endpoint]) -> tuple[tuple[Proto, tuple[PortRange, ...]], ...]:
    """Endpoints → ``(("tcp", ranges), ("udp", ranges))`` with each protocol's ranges merged;
    Unix endpoints are left out (they have no ports)."""
    by_proto: dict[Proto, list[PortRange]] = {}
    for ep in endpoints:
        if ep.proto != "unix":
            by_proto.setdefault(ep.proto, []).extend(ep.ports)
    return tuple((p, merge_ranges(by_proto[p])) for p in ("tcp", "udp") if p in by_proto)


def lookup(name: str, mapped: Mapping[str, tuple[Endpoint, ...]], services: Mapping[str, tuple[Endpoint, ...]]) -> tuple[Endpoint, ...]:
    """Where ``name`` listens: ``--map`` first, then services(5); empty when neither knows."""
    return mapped.get(name) or services.get(name) or ()
