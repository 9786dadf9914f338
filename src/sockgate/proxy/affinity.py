"""Which CPU each proxy worker runs on (``--cpu-affinity``), decided without touching the
system: the CPUs this process may run on come in as an argument (``linux.cpus.allowed``).

``none`` (the default) leaves the workers to the scheduler. ``auto`` pins worker i to the i-th
CPU the proxy may run on (modulo their number) when there is more than one worker; a list
(``0,2-3``, as ``taskset -c`` writes it) pins them in its order, even a single one, and names
only CPUs the proxy may run on. Pinned workers may also ask for the connections their CPU
processed (``--accept-by-cpu``, ``linux.cpus.steer``) — opt-in: with one CPU handling every
packet (a single-queue network card without RPS, one busy client), one worker would take
every connection (docs/proxy.md, Performance).
"""

from __future__ import annotations

from typing import Literal, Sequence, assert_never

from sockgate.errors import UsageError
from sockgate.intlist import ListError, items, number, parse_spans, spans_of

MAX_CPU = 8191  # CONFIG_NR_CPUS's upper bound: a larger number is a typo, not a CPU
MAX_WORKERS = 1024

Affinity = Literal["auto", "none"] | tuple[int, ...]


def parse_affinity(text: str) -> Affinity:
    """``auto``, ``none`` or a CPU list (each CPU once, in the order first given)."""
    match text:
        case "auto":
            return "auto"
        case "none":
            return "none"
    try:
        spans = parse_spans(text, 0, MAX_CPU, "CPU")
    except ListError as e:
        raise UsageError(f"--cpu-affinity: {e} (or auto, none)") from None
    if sum(b - a + 1 for a, b in spans) > 4 * (MAX_CPU + 1):  # repeats: bounded work, not a list
        raise UsageError(f"--cpu-affinity: the list names more than {4 * (MAX_CPU + 1)} CPUs, counting repeats")
    return tuple(dict.fromkeys(c for a, b in spans for c in range(a, b + 1)))


def parse_workers(text: str, affinity: Affinity, allowed: Sequence[int]) -> int:
    """``--workers``: 1 to MAX_WORKERS, or ``auto``: one per CPU of the affinity list, else
    one per CPU the proxy may run on (at most MAX_WORKERS)."""
    if text == "auto":
        return min(MAX_WORKERS, len(affinity) if isinstance(affinity, tuple) else len(allowed))
    n = number(text, 1, MAX_WORKERS)
    if n is None:
        raise UsageError(f"--workers: expected a number from 1 to {MAX_WORKERS} or auto, found {text[:20]!r}")
    return n


def worker_cpus(affinity: Affinity, workers: int, allowed: Sequence[int]) -> tuple[int, ...]:
    """The CPU of each worker, in order (() for unpinned)."""
    match affinity:
        case "none":
            return ()
        case "auto":
            cpus = tuple(sorted(allowed)) if workers > 1 else ()
        case tuple():
            outside = [c for c in affinity if c not in allowed]
            if outside:
                raise UsageError(f"--cpu-affinity: CPU {outside[0]} is not one this process may run on ({cpu_list(allowed)})")
            cpus = affinity
        case _:
            assert_never(affinity)
    return tuple(cpus[i % len(cpus)] for i in range(workers)) if cpus else ()


def cpu_list(cpus: Sequence[int]) -> str:
    """CPUs as a list reads them: 0-3,6."""
    return ",".join(items(spans_of(cpus)))
