"""What the eBPF backend compiles with: ``OPTIONS`` (the service state a program keeps, with
the protocol read from each packet), its counters sized by ``$SOCKGATE_COUNTERS``, and the
program ``EbpfBackend.unavailable`` verifies before ``auto`` may choose eBPF. Apart from
kernel/ebpf.py, which loads and pins, because these are decisions, not system calls: a
configuration read from a mapping and a program compiled once per process."""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

from sockgate.ebpf.program import EbpfProgram, Options, compile_service
from sockgate.errors import UsageError
from sockgate.intlist import number
from sockgate.policy.parser import parse_policy

OPTIONS = Options(protocol="any")  # layout.py's sizes; the protocol of each packet
COUNTERS_ENV = "SOCKGATE_COUNTERS"  # sources counted per service (layout.DEFAULT_COUNTERS)
COUNTERS_RANGE = (64, 1 << 24)
# What ``unavailable`` verifies: the program ``load`` would load for a service with IPv4 and
# IPv6 rules and a per-source rate limit with a ban — every map type and helper a real service
# uses (LPM tries, LRU hashes, the ring buffer, the stats array; ringbuf output, cmpxchg,
# skb_load_bytes_relative, skb->sk) — with maps of the least capacity (the code does not
# depend on capacities), so ``auto`` means "this kernel takes sockgate's program".
PROBE_POLICY = """service sg-probe {
    allow 192.0.2.1
    deny 2001:db8::/32
    limit rate 1/minute per source ban 1m
    default deny
}
"""
PROBE_OPTIONS = dataclasses.replace(OPTIONS, counters=1, buckets=1, bans=1, ring_bytes=4096)


@functools.cache
def probe_program() -> EbpfProgram:
    """The program ``unavailable`` verifies (``PROBE_POLICY``), compiled once per process."""
    (service,) = parse_policy(PROBE_POLICY, "<probe>").services
    return compile_service(service, options=PROBE_OPTIONS)


def options(environ: Mapping[str, str]) -> Options:
    """``OPTIONS`` with the counters sized by ``$SOCKGATE_COUNTERS`` when set; a value that is
    not a whole number in ``COUNTERS_RANGE`` is a one-line ``UsageError``."""
    raw = environ.get(COUNTERS_ENV)
    if raw is None:
        return OPTIONS
    low, high = COUNTERS_RANGE
    counters = number(raw, low, high)
    if counters is None:
        raise UsageError(f"${COUNTERS_ENV}={raw[:20]!r}: the sources counted per service, a number from {low} to {high}")
    return dataclasses.replace(OPTIONS, counters=counters)
