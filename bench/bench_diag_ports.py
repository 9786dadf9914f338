"""One service's TCP connections from a busy host's table: the full sock_diag dump filtered in
Python against the kernel-side port filter (``linux/diagbc.py``), as ``cutoff.end_denied`` and
``sockdiag.destroy_tcp`` look for them.

    sudo .venv/bin/python bench/bench_diag_ports.py [--connections 9000] [--runs 5]

Opens ``--connections`` loopback connections (two sockets each; bounded by the descriptor
limit) to one listener, then times both looks for another listener's port: CPU time
(user + system) per look, medians of ``--runs``. Everything is closed at the end.
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sockgate.linux import sockdiag  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=9000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(args.connections, (hard - 100) // 2)
    made: list[socket.socket] = []
    try:
        srv = socket.socket()
        made.append(srv)
        srv.bind(("127.0.0.1", 0))
        srv.listen(4096)
        for _ in range(n):
            made.append(socket.create_connection(srv.getsockname(), timeout=5))
            made.append(srv.accept()[0])
        other = socket.socket()
        made.append(other)
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        looks = {"full dump, filtered in Python": lambda: [s for s in sockdiag.inventory(["tcp"], {"tcp": sockdiag.ALL_STATES})
                                                            if s.local_port == port],
                 "port filter in the kernel": lambda: sockdiag.tcp_on_ports({port}, sockdiag.ALL_STATES)}
        total = len(sockdiag.inventory(["tcp"], {"tcp": sockdiag.ALL_STATES}))
        print(f"{total:,} TCP sockets on the host ({2 * n:,} made here); one look for one port, CPU ms, median of {args.runs}:")
        for name, look in looks.items():
            times = []
            for _ in range(args.runs):
                t = time.process_time()
                found = look()
                times.append(time.process_time() - t)
            print(f"  {name}: {statistics.median(times) * 1e3:.1f} ms ({len(found)} socket)")
    finally:
        for s in made:
            s.close()


if __name__ == "__main__":
    main()
