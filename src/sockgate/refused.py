"""``sockgate refused``: who each service's eBPF filter refused, and whom it bans.

Reads what the loader pinned (ebpf/layout.py): per service, the refusal counters (an LRU map
of source → refused, first and last seen) and the two ban tries (prefix → expiry, origin),
through read-only fds checked against the layout (kernel/pins.py). Nothing is attached or
changed; the maps live on whether or not their loader runs.

A service whose maps are missing or malformed is reported and skipped, the others are still
listed; when no service could be read at all the whole command fails with the first reason
(``nothing pinned``, ``operation not permitted``). Expired bans are not listed: the program no
longer enforces them. What the program failed to do (``sg_stats``: refusal events the full
ring dropped, ``limit rate ... ban`` inserts a full ban trie refused) is said as warnings.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Mapping

from sockgate.ebpf import layout
from sockgate.ebpf.refusals import BanRow, Clock, CountRow, active, ban_row, count_row, sort_counts
from sockgate.errors import SockgateError
from sockgate.kernel import pins
from sockgate.kernel.ebpfstore import ktime_ns
from sockgate.policy.source import escape


@dataclass(frozen=True)
class Listing:
    counts: list[CountRow]
    bans: list[BanRow]
    clock: Clock
    problems: list[str] = field(default_factory=list)  # one line each, escaped


def read_refused(root: str = layout.ROOT, service: str | None = None) -> Listing:
    """Counters (most refused first) and active bans of every service, or of ``service``.
    Raises ``PinError`` when nothing readable is pinned."""
    clock = Clock(time.time_ns(), ktime_ns())  # the programs' clock: their stamps and expiries
    dirs, problems = pins.services(root)
    if service is not None:
        dirs = [d for d in dirs if d.service == service]
        if not dirs:
            raise pins.PinError(f"service {escape(service)}: nothing pinned under {escape(root)}/services")
    counts: list[CountRow] = []
    bans: list[BanRow] = []
    failures: list[SockgateError] = []
    for d in dirs:
        try:
            c, b, p = _service(d)
        except SockgateError as e:
            failures.append(e)
            problems.append(str(e))
            continue
        counts += c
        bans += [r for r in b if active(r, clock.mono_ns)]
        problems += p
    if dirs and len(failures) == len(dirs):
        raise failures[0]
    if not dirs:
        raise pins.PinError(f"{escape(root)}/services: no service has pinned objects")
    return Listing(sort_counts(counts), sorted(bans, key=_ban_order), clock, problems)


def _ban_order(r: BanRow) -> tuple[str, int, int, int]:
    return r.service, r.network.version, int(r.network.network_address), r.network.prefixlen


def _service(d: pins.ServiceDir) -> tuple[list[CountRow], list[BanRow], list[str]]:
    """One service's rows. The counters must be there; missing ban tries are no bans."""
    spec = layout.counts_spec()
    fd = pins.open_map(f"{d.path}/{pins.map_name(spec)}", spec)
    try:
        rows = [count_row(d.service, k, v) for k, v in pins.walk(fd, spec)]
    finally:
        os.close(fd)
    problems = [f"{escape(d.path)}/counts: {n} entries that name no source, skipped"
                for n in [rows.count(None)] if n]
    bans: list[BanRow] = []
    for family in (4, 6):
        spec = layout.bans_spec(family)
        path = f"{d.path}/{pins.map_name(spec)}"
        if not os.path.lexists(path):
            continue
        fd = pins.open_map(path, spec)
        try:
            found = [ban_row(d.service, family, k, v) for k, v in pins.walk(fd, spec)]
        finally:
            os.close(fd)
        bans += [b for b in found if b is not None]
        if None in found:
            problems.append(f"{escape(path)}: {found.count(None)} entries that are no ban, skipped")
    return [r for r in rows if r is not None], bans, problems + losses(d.service, _stats(d.path))


def _stats(directory: str) -> dict[layout.Stat, int]:
    fd = pins.open_stats(directory)
    if fd is None:
        return {}
    try:
        return pins.read_stats(fd)
    finally:
        os.close(fd)


def losses(service: str, stats: Mapping[layout.Stat, int]) -> list[str]:
    """Warning lines for what the program failed to do (layout.Stat), if anything."""
    out = []
    lost, failed = stats.get(layout.Stat.EVENTS_LOST, 0), stats.get(layout.Stat.BANS_FAILED, 0)
    if lost:
        out.append(f"{escape(service)}: {lost} refusal events lost (the event ring was full); the counters keep every"
                   " refusal, the refusal log may have missed sources")
    if failed:
        out.append(f"{escape(service)}: {failed} bans by `limit rate ... ban` failed (the ban trie was full); those"
                   " sources were refused by the rate, not banned")
    return out

