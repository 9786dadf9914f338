"""Allowed clients under a denied connect flood: the kernel filter vs accept-then-close.

Three echo servers on 127.0.0.1 enforce the same policy (allow 127.0.0.1, default deny): one
with sockgate's filter on its listener (a denied SYN is dropped in the kernel), and two the
TCP Wrappers way, deciding only after the handshake: accept, decide in the daemon, close
(libwrap linked in); and a fork per accepted connection whose child decides, then closes or
serves (inetd + tcpd, without tcpd's exec). Against each, 4 client threads loop connect /
64-byte echo / close from 127.0.0.1 for SECONDS while one process floods from 127.0.0.2 with
unpaced non-blocking connects (each abandoned with RST after 20 ms, at most 4,096 in flight)
— in alternate PERIOD-long phases: flood, quiet, flood, quiet... Each connection is counted in
the phase it finished in (the first GUARD seconds of each phase left out), so one run gives
both rates under the same machine load; this machine is shared, and load swings between
separate runs are larger than the effects measured. RUNS runs per server, interleaved;
medians are reported.

    .venv/bin/python bench/bench_flood.py [--runs 5] [--seconds 10] [--period 1]

Every process shares both CPUs, as in PEERS.md: the flood generator's own CPU is not
subtracted, and on loopback that includes the receive path of every flood packet (the
softirq runs in the sending syscall), which a flood from another host would not cost.

Targets (issue 3): sockgate's rate under flood >= 0.8 of its quiet rate, and >= 10x the rate
of accept-then-close under the same flood. Traffic: 127.0.0.0/8 only, bounded by
RUNS x 3 x SECONDS.
"""

from __future__ import annotations

import argparse
import sys

from _kernel_bench import Server, machine, median, run_phased

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
    ap.add_argument("--seconds", type=float, default=10.0, help="per run: half quiet, half flood")
    ap.add_argument("--period", type=float, default=1.0, help="length of each flood / quiet phase")
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    servers = {m: Server(m, POLICY) for m in MODES}
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        for r in range(args.runs):
            for m in MODES:
                res = run_phased(servers[m].port, args.seconds, args.threads, args.period, 0.2 * args.period)
                runs[m].append(res)
                ratio = res["flood_rate"] / res["quiet_rate"] if res["quiet_rate"] else 0.0
                print(f"run {r + 1}/{args.runs} {m:13} quiet {res['quiet_rate']:7.0f} conn/s  flood"
                      f" {res['flood_rate']:7.0f} conn/s  ratio {ratio:.2f}  p99 {res['flood_p99_us'] / 1000:6.1f} ms"
                      f"  flood {res['flood_attempts_per_s']:6.0f}/s  failures {res['failures']:.0f}", file=sys.stderr)
    finally:
        for s in servers.values():
            s.close()
    report(args, runs)
    return 0


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> None:
    def med(m: str, key: str) -> float:
        return median([x[key] for x in runs[m]])

    def ratio(m: str) -> float:
        return median([x["flood_rate"] / x["quiet_rate"] if x["quiet_rate"] else 0.0 for x in runs[m]])

    print(f"machine: {machine()}")
    print(f"command: .venv/bin/python bench/bench_flood.py --runs {args.runs} --seconds {args.seconds:g}"
          f" --period {args.period:g} --threads {args.threads}")
    print(f"medians of {args.runs} runs of {args.seconds:g} s ({args.period:g} s phases), {args.threads} client threads")
    print("| enforcement | quiet conn/s | under flood conn/s | ratio | p99 quiet | p99 under flood | flood attempts/s |")
    print("|---|---|---|---|---|---|---|")
    for m in MODES:
        print(f"| {NAMES[m]} | {med(m, 'quiet_rate'):,.0f} | {med(m, 'flood_rate'):,.0f} | {ratio(m):.2f} |"
              f" {med(m, 'quiet_p99_us') / 1000:.1f} ms | {med(m, 'flood_p99_us') / 1000:.1f} ms |"
              f" {med(m, 'flood_attempts_per_s'):,.0f} |")
    print(f"sockgate under flood vs quiet: {ratio('kernel'):.2f} (target >= 0.8)")
    for m in MODES[1:]:
        if med(m, "flood_rate"):
            versus = f"{med('kernel', 'flood_rate') / med(m, 'flood_rate'):.1f}x"
        else:
            versus = "unbounded (its allowed clients completed no connection)"
        print(f"sockgate vs {NAMES[m]} under the same flood: {versus} (target >= 10x)")


if __name__ == "__main__":
    sys.exit(main())
