"""What a large filter costs an allowed client: connection rate through a 3,000-range filter
vs the same server with no filter, and the time to compile that policy.

The policy allows 1,500 /24 networks spread over the IPv4 space plus 127.0.0.1 (default
deny), which the compiler turns into 3,000+ disjoint ranges and a balanced search of about
12 comparisons; every packet of every connection (accepted sockets inherit the listener's
filter) runs it. 4 client threads loop connect / 64-byte echo / close from 127.0.0.1 for
SECONDS per run, against one server process with two listeners in the same event loop (one
plain, one guarded), each thread taking them in turn connection by connection, so both see
the same machine load at the same moments (this machine is shared: load swings between
runs are larger than the effect measured). A closed loop's rate is 1 / mean connection time;
the ratio is taken per run and its median over RUNS runs reported.

    .venv/bin/python bench/bench_filter_cost.py [--runs 5] [--seconds 5]

Targets (issue 3): rate with filter >= 0.95 of the rate without; compile < 0.5 s.

With ``--backend ebpf --prefixes N`` (root: CAP_BPF, and a private bpf filesystem the bench
mounts and removes) the guarded listener carries instead the eBPF backend's program for a policy
that first denies N generated IPv4 prefixes (a set file's worth: a third /24s, the rest hosts)
and the sibling of every prefix of 127.0.0.1 from /9 to /32 — so every packet's lookup in the
trie of N entries walks the deepest path there is and misses — and allows everyone else
(``_kernel_bench.blocklist``). Issue 13's target: with 1,000,000 prefixes
>= 0.95 of no filter.

    sudo .venv/bin/python bench/bench_filter_cost.py --backend ebpf --prefixes 1000000 [--runs 5] [--seconds 5]

Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import sys
import time
from pathlib import Path

import charts
from _kernel_bench import Server, machine, median, run_alternate, service_from

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from support.pinned import private_bpffs  # noqa: E402


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
    ap.add_argument("--control", action="store_true", help="A/A check: two plain listeners (ratio should be ~1)")
    ap.add_argument("--backend", choices=("cbpf", "ebpf"), default="cbpf")
    ap.add_argument("--prefixes", type=int, default=0, help="eBPF: prefixes denied first (a set file's worth)")
    ap.add_argument("--chart", help="the PNG chart written (bench/charts.py; default docs/bench/filter-cost-rate.png,"
                    " with --backend ebpf docs/bench/filter-cost-ebpf-rate.png)")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        return measure(args, stack)


def measure(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    spec = policy()
    if args.backend == "ebpf":
        spec = {"allow": ["127.0.0.1/32"], "default": "allow", "backend": "ebpf", "deny_generated": args.prefixes,
                "bpffs": stack.enter_context(private_bpffs())}
        compile_s, ranges, insns = 0.0, 0, 0
    else:
        compile_s, ranges, insns = compile_times(spec, args.runs)
    server = Server("pair-control" if args.control else "pair", spec)
    names = ("none", "filter")
    ratios: list[float] = []
    rates: dict[str, list[float]] = {k: [] for k in names}
    try:
        for r in range(args.runs):
            res = run_alternate(server.ports, args.seconds, args.threads)
            # each server's closed-loop rate, as if the clients had spent the whole run on it
            per = {k: res["count"][i] / res["seconds"][i] * args.threads for i, k in enumerate(names)}
            for k in names:
                rates[k].append(per[k])
            ratios.append(per["filter"] / per["none"])
            print(f"run {r + 1}/{args.runs}: none {per['none']:7.0f} conn/s, filter {per['filter']:7.0f} conn/s,"
                  f" ratio {ratios[-1]:.3f}", file=sys.stderr)
    finally:
        server.close()
    none, filt = median(rates["none"]), median(rates["filter"])
    print(f"machine: {machine()}")
    control = " --control" if args.control else ""
    ebpf = f" --backend ebpf --prefixes {args.prefixes}" if args.backend == "ebpf" else ""
    print(f"command: .venv/bin/python bench/bench_filter_cost.py --runs {args.runs} --seconds {args.seconds}"
          f" --threads {args.threads}{control}{ebpf}")
    if args.control:
        print("CONTROL RUN: both listeners are unfiltered")
    if ebpf:
        print(f"filter: the eBPF backend's program, {args.prefixes:,} denied prefixes + 24 next to 127.0.0.1"
              " in its tries, default allow")
        ranges = args.prefixes
    else:
        print(f"filter: {ranges} IPv4 ranges, {insns} instructions; compile {compile_s * 1000:.0f} ms (median of {args.runs}, target < 500 ms)")
    print(f"{args.threads} client threads alternating between the two listeners connection by connection,"
          f" {args.runs} runs of {args.seconds:g} s; medians")
    print("| listener | conn/s | ratio |")
    print("|---|---|---|")
    print(f"| no filter | {none:,.0f} | 1.00 |")
    what = f"eBPF, {ranges:,}-prefix" if ebpf else f"{ranges}-range"
    print(f"| {what} sockgate filter | {filt:,.0f} | {median(ratios):.3f} |")
    print(f"filter vs no filter: {median(ratios):.3f} (median of per-run ratios; runs {', '.join(f'{x:.3f}' for x in ratios)};"
          " target >= 0.95)")
    if not args.control:
        chart = args.chart or str(charts.DOCS / ("filter-cost-ebpf-rate.png" if ebpf else "filter-cost-rate.png"))
        charts.bars(Path(chart), f"Allowed clients' connection rate with a {what} filter", ["no filter", f"{what} sockgate filter"],
                    {"conn/s": [none, filt]}, "connections/s (median)",
                    charts.caption(f"bench/bench_filter_cost.py --runs {args.runs} --seconds {args.seconds:g}{ebpf}; the two"
                                   " listeners alternate connection by connection"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
