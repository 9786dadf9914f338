"""Which CPU each proxy worker runs on, and which worker the kernel hands a connection to.

With ``--workers N`` each worker is pinned to one CPU (``sched_setaffinity``) and its
``SO_REUSEPORT`` listeners ask for the connections whose handshake the kernel processed on
that CPU (``SO_INCOMING_CPU``: a reuseport group prefers the sockets whose CPU matches, and
hashes over all of them when none does). The handshake is processed where the packet came in:
on loopback the client's CPU, from a network card its receive queue's. The worker that accepts
then runs where the connection already is: no wake-up sent to the other CPU, no cache lines
moved, and no worker sharing a CPU with its twin while the other CPU holds the client — what
nginx's ``worker_cpu_affinity`` and haproxy's ``cpu-map`` give. Unpinned, the two workers of a
2-CPU machine made fewer connections per second than one (docs/benchmarks.md, "Issue 16: one
worker per CPU").

The CPU list syntax (``0,2-3``, as ``taskset -c`` and cpusets write it) is parsed here by
hand: ten lines, and no library in the dependencies reads it.
"""

from __future__ import annotations

import os
import socket
from typing import Literal

from sockgate.errors import UsageError

MAX_CPU = 8191  # CONFIG_NR_CPUS's upper bound: a larger number is a typo, not a CPU

Affinity = Literal["auto", "none"] | tuple[int, ...]


def parse_affinity(text: str) -> Affinity:
    """``auto``, ``none`` or a CPU list such as ``0,2-3`` (each CPU once, in the order given)."""
    if text in ("auto", "none"):
        return text  # type: ignore[return-value]  # narrowed by the test above
    cpus: dict[int, None] = {}  # ordered, each CPU once
    for part in text.split(","):
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()) or not first.isascii() or not last.isascii():
            raise UsageError(f"--cpu-affinity: {text!r} is not auto, none or a CPU list such as 0,2-3")
        lo, hi = int(first), int(last) if sep else int(first)
        if hi < lo or hi > MAX_CPU:
            raise UsageError(f"--cpu-affinity: {part!r} is not a range of CPUs (0-{MAX_CPU}, low to high)")
        cpus.update(dict.fromkeys(range(lo, hi + 1)))
    return tuple(cpus)


def allowed() -> list[int]:
    """The CPUs this process may run on (its affinity mask: a cpuset, ``taskset``, systemd's
    ``CPUAffinity=``), lowest first."""
    return sorted(os.sched_getaffinity(0))


def worker_cpus(affinity: Affinity, workers: int) -> tuple[int, ...]:
    """The CPUs the workers are pinned to, worker i to the i-th modulo their number; () for
    none. ``auto`` pins only with more than one worker, to the CPUs this process may run on;
    a list names CPUs it may run on, or it is refused."""
    if affinity == "none" or (affinity == "auto" and workers <= 1):
        return ()
    mine = allowed()
    if affinity == "auto":
        return tuple(mine)
    outside = [c for c in affinity if c not in mine]
    if outside:
        raise UsageError(f"--cpu-affinity: CPU {outside[0]} is not one this process may run on ({_ranges(mine)})")
    return affinity


def pin(cpu: int) -> None:
    """Run this process on ``cpu`` only (its threads started later inherit it)."""
    os.sched_setaffinity(0, {cpu})


def steer(sock: socket.socket, cpu: int) -> None:
    """Ask the reuseport group of ``sock`` for the connections processed on ``cpu``."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_INCOMING_CPU, cpu)


def incoming_cpu(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_INCOMING_CPU)


def _ranges(cpus: list[int]) -> str:
    out: list[str] = []
    for c in cpus:
        if out and out[-1].rpartition("-")[2] == str(c - 1):
            out[-1] = f"{out[-1].partition('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)
