"""What a large filter costs an allowed client: connection rate through a 3,000-range filter
vs the same server with no filter, and the time to compile that policy.

The policy allows 1,500 /24 networks spread over the IPv4 space plus 127.0.0.1 (default
deny), which the compiler turns into 3,000+ disjoint ranges and a balanced search of about
12 comparisons; every packet of every connection (accepted sockets inherit the listener's
filter) runs it. 4 client threads loop connect / 64-byte echo / close from 127.0.0.1 for
SECONDS per run; runs alternate between the two servers, RUNS times; medians are reported.

    .venv/bin/python bench/bench_filter_cost.py [--runs 5] [--seconds 5]

Targets (issue 3): rate with filter >= 0.95 of the rate without; compile < 0.5 s.
Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time

from _kernel_bench import Server, machine, median, run_clients, service_from


def policy(networks: int = 1500) -> dict[str, object]:
    step = (1 << 32) // networks
    allow = [f"{ipaddress.IPv4Address((i * step) & ~0xFF)}/24" for i in range(1, networks)]
    return {"allow": allow + ["127.0.0.1/32"], "default": "deny"}


def compile_times(spec: dict[str, object], runs: int) -> tuple[float, int, int]:
    from sockgate.bpf import compile_service

    svc = service_from(spec)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        prog = compile_service(svc)
        times.append(time.perf_counter() - t0)
    return median(times), prog.ranges4, len(prog.insns)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    spec = policy()
    compile_s, ranges, insns = compile_times(spec, args.runs)
    servers = {"none": Server("plain", spec), "filter": Server("kernel", spec)}
    rates: dict[str, list[float]] = {k: [] for k in servers}
    try:
        for r in range(args.runs):
            for name, srv in servers.items():
                res = run_clients(srv.port, args.seconds, args.threads)
                rates[name].append(res["rate"])
                print(f"run {r + 1}/{args.runs} {name:6} {res['rate']:8.0f} conn/s p99 {res['p99_us'] / 1000:.1f} ms",
                      file=sys.stderr)
    finally:
        for s in servers.values():
            s.close()
    none, filt = median(rates["none"]), median(rates["filter"])
    print(f"machine: {machine()}")
    print(f"command: .venv/bin/python bench/bench_filter_cost.py --runs {args.runs} --seconds {args.seconds} --threads {args.threads}")
    print(f"filter: {ranges} IPv4 ranges, {insns} instructions; compile {compile_s * 1000:.0f} ms (median of {args.runs}, target < 500 ms)")
    print("| listener | conn/s (median) | ratio |")
    print("|---|---|---|")
    print(f"| no filter | {none:,.0f} | 1.00 |")
    print(f"| {ranges}-range sockgate filter | {filt:,.0f} | {filt / none if none else 0:.2f} |")
    print(f"filter vs no filter: {filt / none if none else 0:.2f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
