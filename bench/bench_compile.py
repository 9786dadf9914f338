"""Compile time and program size for large address policies.

Builds services directly as IR (no parsing, so only the compiler is timed): deny lists of
non-adjacent /24 networks spread over the IPv4 space (n networks → 2n+1 disjoint ranges), an
IPv6 list of /64 networks, and a mixed one; compiles each RUNS times and prints the median,
the program's size and the capacity the compiler reports.

    .venv/bin/python bench/bench_compile.py [--runs 7]

Target (issue 3): < 0.5 s for a 3,000-range policy. Pure computation: no sockets, no root.
"""

from __future__ import annotations

import argparse
import ipaddress
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sockgate.bpf import capacity, compile_service  # noqa: E402
from sockgate.policy.ir import Action, AddrMatch, IPNetwork, Rule, Service  # noqa: E402
from sockgate.policy.source import Span  # noqa: E402


def v4_nets(n: int, rnd: random.Random) -> list[IPNetwork]:
    return [ipaddress.IPv4Network((p << 9, 24)) for p in sorted(rnd.sample(range(1 << 23), n))]


def v6_nets(n: int, rnd: random.Random) -> list[IPNetwork]:
    picks = sorted(rnd.sample(range(1 << 40), n))
    return [ipaddress.IPv6Network(((0x2001 << 112) | (p << 66), 64)) for p in picks]


def service(nets: list[IPNetwork]) -> Service:
    rule = Rule(Action.DENY, AddrMatch(tuple(nets)), Span("bench.conf", 1, 1), "deny @blocklist")
    return Service("bench", (rule,), Action.ALLOW)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    rnd = random.Random(42)
    cases = {
        "IPv4 1,000 ranges": service(v4_nets(500, rnd)),
        "IPv4 3,000 ranges": service(v4_nets(1500, rnd)),
        "IPv4 3,900 ranges": service(v4_nets(1950, rnd)),
        "IPv6 500 ranges (/64)": service(v6_nets(250, rnd)),
        "mixed 2,000 IPv4 + 300 IPv6": service(v4_nets(1000, rnd) + v6_nets(150, rnd)),
    }
    print(f"machine: {platform.machine()}, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}; median of {args.runs} runs")
    print(f"{'case':<30} {'ranges':>7} {'insns':>6} {'kernel bytes':>12} {'compile ms':>11}")
    for name, svc in cases.items():
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            prog = compile_service(svc)
            times.append(time.perf_counter() - t0)
        print(f"{name:<30} {prog.ranges:>7} {len(prog):>6} {prog.ebpf_bytes:>12} {1000 * statistics.median(times):>11.1f}")
    t0 = time.perf_counter()
    cap = capacity()
    print(f"capacity: {cap['ipv4']} IPv4 ranges; IPv6: {cap['ipv6']} ranges of any network length, "
          f"{cap['ipv6_64']} of /64s, {cap['ipv6_128']} of /128 hosts (computed in {time.perf_counter() - t0:.2f} s)")
    print(f"reproduce: .venv/bin/python bench/bench_compile.py --runs {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
