"""The eBPF backend's clean-up: registry entries whose socket is gone, then the program and
service directories nothing names any more.

``collect`` removes registry entries whose socket is gone (its cookie absent from this
namespace's sock_diag; an entry of another namespace once that namespace no longer exists —
its nsfs inode held by no process, descriptor or ``ip netns`` mount) and then program
directories no remaining entry names; both only after ``grace`` seconds, so a program loaded
but not yet attached, or a socket guarded before it is bound, is not collected. Pins are only
names: a socket keeps its program whatever is unpinned.

Listing the namespace's sockets and namespaces is what costs (seconds on a host with 100,000
sockets), so it is done only when some entry is old enough to be stale; how often a load
collects is the backend's choice (``EbpfBackend._collect_quietly``).
"""

from __future__ import annotations

import time

from sockgate.ebpf import registry
from sockgate.errors import SockgateError
from sockgate.kernel.banmaps import BanMaps
from sockgate.kernel.bpfops import BpfOps
from sockgate.kernel.ebpfstore import Paths, ktime_ns

GRACE = 60.0  # seconds a fresh registry entry or program directory is safe from ``collect``


def stale(record: registry.Record, cookie: int, live: set[int] | None, here: int | None, now_ns: int,
          grace: float, namespaces: set[int] | None = None) -> bool:
    """Whether a registry entry names a socket that is gone, once it is old enough: a socket
    of this namespace whose cookie sock_diag no longer lists, or a socket of another namespace
    that no longer exists (its recorded nsfs inode among no live namespace's, ``namespaces``).
    An inode a new namespace reuses keeps the entry: a leak, never a live guard forgotten."""
    if now_ns - record.written_ns < grace * 1e9:
        return False
    if here is not None and record.netns == here:
        return live is not None and cookie not in live
    return namespaces is not None and record.netns_ino != 0 and record.netns_ino not in namespaces


def collect(ops: BpfOps, paths: Paths, grace: float) -> tuple[int, int]:
    """Remove stale registry entries, then unreferenced program directories; how many of each."""
    now_ns = ktime_ns()
    keep: set[str] = set()
    gone = 0
    reg = ops.get(paths.registry)
    if reg is not None:
        try:
            gone, keep = _collect_registry(ops, paths, grace, reg, now_ns)
        finally:
            ops.close(reg)
    return gone, _collect_programs(ops, paths, grace, keep)


def _collect_registry(ops: BpfOps, paths: Paths, grace: float, reg: int, now_ns: int) -> tuple[int, set[str]]:
    records = [(k, registry.Record.unpack(v)) for k, v in ops.map_items(reg, registry.KEY.size, registry.RECORD.size)]
    live = here = namespaces = None  # (a dump of every socket and namespace: only when one could be stale)
    if any(now_ns - rec.written_ns >= grace * 1e9 for _, rec in records):
        live, here, namespaces = ops.live_cookies(), ops.here(), ops.live_netns()
    keep: set[str] = set()
    dead = []
    for k, rec in records:
        if stale(rec, registry.cookie(k), live, here, now_ns, grace, namespaces):
            dead.append(k)
        else:
            keep.add(paths.program(rec.service, rec.digest))
    for k in dead:
        ops.map_delete(reg, k)
    return len(dead), keep


def _collect_programs(ops: BpfOps, paths: Paths, grace: float, keep: set[str]) -> int:
    """Program directories no kept registry entry names, after ``grace``; then the
    service directories that held no program already (``_collect_service``)."""
    services = f"{paths.root}/services"
    removed = 0
    for svc in ops.listdir(services):
        left = gone = 0
        for name in ops.listdir(f"{services}/{svc}"):
            path = f"{services}/{svc}/{name}"
            if not name.startswith("prog-"):
                continue
            age = ops.age(path)
            if path not in keep and age is not None and age >= grace:
                ops.remove_tree(path)
                gone += 1
            else:
                left += 1
        removed += gone
        if not left and not gone:  # the last program went now: the directory goes next time at the earliest
            _collect_service(ops, f"{services}/{svc}", grace)
    return removed


def _collect_service(ops: BpfOps, path: str, grace: float) -> None:
    """Unpin a service directory that holds no program (so no socket's registry entry
    names it: a live guard keeps its program directory, and with it its counters and
    bans) once it has been unchanged for ``grace`` — its last program was collected at
    least that long ago — and it holds no active ban (a ban written for a service that is
    not guarded now is for its next guard). Its maps are freed when nothing else holds
    them; counters of a service no longer guarded go with them (REVIEW3 R10)."""
    age = ops.age(path)
    if age is None or age < grace:
        return
    try:
        now = time.monotonic_ns()  # BanMaps.list gives expiries on this process's clock
        if any(ban.active(now) for _, ban in BanMaps(ops, path).list()):
            return
    except (SockgateError, ValueError):
        return  # unreadable bans: kept, never lifted by a clean-up
    ops.remove_tree(path)
