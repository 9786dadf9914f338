"""What watching costs: ``socket()+bind()+close()`` of a UDP socket without the watch hooks,
with them on a port nobody watches (filtered in the kernel), and with every bind reported
(watch-all, drained as it goes); and a bind storm's delivery.

Usage (root): PYTHONPATH=src python bench/bench_watch.py [N]

The hooks are linked to a child cgroup this process moves itself into (and out of again), so
the host's other processes are not touched; nothing is pinned.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
import uuid

from sockgate.agent.watcher import CgroupWatcher
from sockgate.ebpf.watch import WatchSet
from sockgate.linux import cgroupbpf


def binds(n: int, drain: CgroupWatcher | None = None) -> tuple[float, int]:
    """Mean µs per socket+bind+close over ``n``, and the events drained meanwhile."""
    got = 0
    t = time.perf_counter()
    for k in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.close()
        if drain is not None and k % 1000 == 999:
            got += len(drain.drain())
    if drain is not None:
        got += len(drain.drain())
    return (time.perf_counter() - t) / n * 1e6, got


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    root = cgroupbpf.cgroup2_root()
    assert root is not None, "no cgroup2 mounted"
    cg = f"{root}/sg-bench-{uuid.uuid4().hex[:8]}"
    os.mkdir(cg)
    try:
        with open(f"{cg}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        base, _ = binds(n)
        w = CgroupWatcher.open(cg)
        try:
            w.watch(WatchSet.of([("udp", 9)], []))
            filtered, _ = binds(n, w)
            w.watch(WatchSet(all=True))
            c0 = cpu()
            reported, got = binds(n, w)
            c1 = cpu()
            print(f"socket+bind+close UDP, n={n}: {base:.2f} us without hooks, {filtered:.2f} us with hooks "
                  f"(port not watched), {reported:.2f} us with every bind reported and drained "
                  f"({got} events, {w.lost} lost, {(c1 - c0) / max(got, 1) * 1e6:.1f} us CPU per bind+event)")
        finally:
            w.close()
    finally:
        with open(f"{root}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        os.rmdir(cg)


if __name__ == "__main__":
    main()
