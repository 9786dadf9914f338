"""How long `sockgate ls` takes on a host with many sockets, next to `ss -tuaxpn`.

A helper process raises RLIMIT_NOFILE and opens N sockets (default 10,000) on loopback and in
the abstract Unix namespace: 40 % TCP listeners, 30 % bound UDP sockets, 20 % Unix stream
listeners, 10 % Unix socket pairs. While it holds them, each command runs RUNS times
(default 5) with its output piped, as a script would read it; the medians of wall-clock and CPU
time (user + system; steadier on a shared machine) are printed, with the command that
reproduces them.

    python bench/bench_ls.py [--sockets 10000] [--runs 5]

Traffic: none (sockets are only bound, on 127.0.0.1 and abstract names).
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time

BUDGET_S = 2.0


def hold(n: int) -> None:
    """Open ``n`` sockets, print 'ready', keep them until stdin closes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    socks: list[socket.socket] = []
    tag = secrets.token_hex(4)
    counts = {"tcp": n * 4 // 10, "udp": n * 3 // 10, "unix": n * 2 // 10}
    for _ in range(counts["tcp"]):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        socks.append(s)
    for _ in range(counts["udp"]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for i in range(counts["unix"]):
        s = socket.socket(socket.AF_UNIX)
        s.bind(f"\0sgbench-{tag}-{i}")
        s.listen(1)
        socks.append(s)
    while len(socks) + 2 <= n:
        socks.extend(socket.socketpair())
    print(f"ready {len(socks)}", flush=True)
    sys.stdin.read()


def timed(argv: list[str], runs: int) -> tuple[float, float, int]:
    """Median wall time, median CPU time (user + system) and output lines of ``argv``."""
    times, cpu = [], []
    lines = 0
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        lines = out.count("\n")
    return statistics.median(times), statistics.median(cpu), lines


def _host_sockets() -> str:
    if not shutil.which("ss"):
        return "an unknown number of sockets"
    out = subprocess.run(["ss", "-tuaxn"], capture_output=True, text=True, timeout=60).stdout
    return f"{max(0, out.count(chr(10)) - 1)} sockets (ss -tuaxn)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sockets", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hold is not None:
        hold(args.hold)
        return 0
    before = _host_sockets()
    helper = subprocess.Popen(
        [sys.executable, __file__, "--hold", str(args.sockets)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert helper.stdout is not None
        ready = helper.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise SystemExit("helper failed to open its sockets")
        print(f"helper pid {helper.pid} holds {ready[1]} sockets; the host had {before} before;"
              f" medians of {args.runs} runs, output piped")
        sg = [sys.executable, "-m", "sockgate"]
        results = [
            ("sockgate ls", timed(sg + ["ls"], args.runs)),
            ("sockgate ls -a", timed(sg + ["ls", "-a"], args.runs)),
            ("sockgate ls -a --json", timed(sg + ["ls", "-a", "--json"], args.runs)),
        ]
        if shutil.which("ss"):
            results.append(("ss -tuaxpn", timed(["ss", "-tuaxpn"], args.runs)))
        print(f"{'command':24s} {'wall':>8s} {'cpu':>8s}   lines")
        for name, (median, cpu, lines) in results:
            mark = "" if not name.startswith("sockgate") else ("  within 2 s" if median < BUDGET_S else "  OVER 2 s")
            print(f"{name:24s} {median:7.3f}s {cpu:7.3f}s   {lines}{mark}")
        print("budget: 2 s for a host with 10,000 sockets (the lines column shows how many were listed)")
        print(f"reproduce: {os.path.relpath(sys.executable)} bench/bench_ls.py --sockets {args.sockets} --runs {args.runs}")
    finally:
        if helper.stdin is not None:
            helper.stdin.close()
        helper.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
