"""Allowed clients under a denied connect flood: the kernel filter vs accept-then-close.

Three echo servers on 127.0.0.1 enforce the same policy (allow 127.0.0.1, default deny): one
with sockgate's filter on its listener (a denied SYN is dropped in the kernel), and two the
TCP Wrappers way, deciding only after the handshake: accept, decide in the daemon, close
(libwrap linked in); and a fork per accepted connection whose child decides, then closes or
serves (inetd + tcpd, without tcpd's exec). For each, 4 client threads loop
connect / 64-byte echo / close from 127.0.0.1 for SECONDS, without and with an unpaced flood
of non-blocking connects from 127.0.0.2 (each abandoned with RST after 20 ms, at most 4,096
in flight). Runs are interleaved and repeated RUNS times; medians are reported, as ratios to
the same server's no-flood rate, and sockgate's flooded rate against accept-then-close's.

    .venv/bin/python bench/bench_flood.py [--runs 5] [--seconds 5]

Targets (issue 3): sockgate >= 0.8 of its no-flood rate, and >= 10x accept-then-close under
the same flood. Traffic: 127.0.0.0/8 only; bounded by RUNS x 4 x SECONDS.
"""

from __future__ import annotations

import argparse
import sys

from _kernel_bench import Server, machine, median, run_clients

POLICY = {"allow": ["127.0.0.1/32"], "default": "deny"}
MODES = ("kernel", "accept-close", "inetd-fork")
NAMES = {
    "kernel": "sockgate kernel filter",
    "accept-close": "accept-then-close in the daemon (libwrap)",
    "inetd-fork": "fork per connection, then check (inetd + tcpd)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    servers = {m: Server(m, POLICY) for m in MODES}
    rates: dict[tuple[str, bool], list[float]] = {(m, f): [] for m in MODES for f in (False, True)}
    p99: dict[tuple[str, bool], list[float]] = {k: [] for k in rates}
    floods: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for r in range(args.runs):
            for m in MODES:
                for f in (False, True):
                    res = run_clients(servers[m].port, args.seconds, args.threads, with_flood=f)
                    rates[(m, f)].append(res["rate"])
                    p99[(m, f)].append(res["p99_us"])
                    if f:
                        floods[m].append(res["flood_rate"])
                    flood = f"flood {res['flood_rate']:7.0f}/s" if f else "no flood     "
                    print(f"run {r + 1}/{args.runs} {m:13} {flood} {res['rate']:8.0f} conn/s"
                          f"  p99 {res['p99_us'] / 1000:7.1f} ms  failures {res['failures']:.0f}", file=sys.stderr)
    finally:
        for s in servers.values():
            s.close()
    med = {k: median(v) for k, v in rates.items()}
    print(f"machine: {machine()}")
    print(f"command: .venv/bin/python bench/bench_flood.py --runs {args.runs} --seconds {args.seconds} --threads {args.threads}")
    print(f"medians of {args.runs} runs of {args.seconds:g} s, {args.threads} client threads")
    print("| enforcement | no flood conn/s | flood conn/s | ratio | p99 under flood | flood attempts/s |")
    print("|---|---|---|---|---|---|")
    for m in MODES:
        ratio = med[(m, True)] / med[(m, False)] if med[(m, False)] else 0.0
        name = NAMES[m]
        print(f"| {name} | {med[(m, False)]:,.0f} | {med[(m, True)]:,.0f} | {ratio:.2f} |"
              f" {median(p99[(m, True)]) / 1000:.1f} ms | {median(floods[m]):,.0f} |")
    k_ratio = med[("kernel", True)] / med[("kernel", False)] if med[("kernel", False)] else 0.0
    print(f"sockgate under flood vs no flood: {k_ratio:.2f} (target >= 0.8)")
    for m in MODES[1:]:
        if med[(m, True)]:
            versus = f"{med[('kernel', True)] / med[(m, True)]:.1f}x"
        else:
            versus = "unbounded (its allowed clients completed no connection)"
        print(f"sockgate vs {NAMES[m]} under the same flood: {versus} (target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
