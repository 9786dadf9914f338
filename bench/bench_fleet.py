"""CrowdSec across a simulated fleet: decision added once → packets dropped on every host.

Each configuration is a fresh fleet (tests/support/fleet.py): N hosts as N network namespaces
on one bridge, ``sockgate agent --backend ebpf --crowdsec`` in each guarding a TCP service,
one real LAPI (Debian's crowdsec) in the LAN namespace, and a prober there. A sample: a random
phase against the pulls, then ``cscli decisions add --ip 198.18.0.66`` (its own time counts,
as an operator's would), and the prober's SYNs from that address to every host until each
drops them (a silence of 50 ms, confirmed by 0.5 s more); then ``cscli decisions delete`` and
the same until each lets it in again. Propagation is the time until the *last* host drops;
the per-host times are kept too. The LAPI's CPU time over the configuration, divided by the
pulls it answered, is what the stream costs it per pull.

    PYTHONPATH=src python bench/bench_fleet.py [--hosts 1,5,10,20] [--intervals 1] [--samples 20] [--json PATH]
    PYTHONPATH=src python bench/bench_fleet.py --hosts 10 --intervals 0.5,1,2

Root. Bounded (every wait has a deadline); every namespace, process, cgroup and mount is
removed even when a configuration fails. Prints a table and the command; ``--json`` writes the
samples for a chart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import fleet  # noqa: E402

import charts  # noqa: E402

WAIT = 20.0  # seconds: the bound on one sample's propagation
STUCK_WAIT = 330.0  # a deletion a host missed: the ban's own 5 minutes end it


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def configuration(n: int, interval: float, samples: int, rng: random.Random) -> dict[str, Any]:
    with fleet.fleet(n, interval) as f:
        all_hosts: list[float] = []
        per_host: list[float] = []
        lifted: list[float] = []
        stuck: list[str] = []  # deletions some host had not applied after WAIT s, with its status
        cpu0, t_start = f.lapi_cpu_s(), time.monotonic()
        for _ in range(samples):
            time.sleep(rng.uniform(0, interval))  # a random phase against the pulls (not a synchronisation)
            t0 = time.monotonic()
            f.lapi.add(fleet.ATTACKER, "5m")
            dropped = f.until(True, t0, WAIT)
            all_hosts.append(max(dropped.values()))
            per_host.extend(dropped.values())
            assert all(f.reachable(f.hosts, fleet.BYSTANDER, 2.0).values()), "a bystander was dropped"
            t1 = time.monotonic()
            f.lapi.delete(fleet.ATTACKER)
            try:
                lifted.append(max(f.until(False, t1, WAIT).values()))
            except AssertionError as e:  # a host kept the ban: said, and waited out (bounded)
                stuck.append(str(e)[:2000])
                f.until(False, time.monotonic(), STUCK_WAIT)
        elapsed, cpu = time.monotonic() - t_start, f.lapi_cpu_s() - cpu0
    pulls = n * elapsed / interval
    return {"hosts": n, "interval": interval, "samples": all_hosts, "per_host": per_host, "lifted": lifted,
            "p50": quantile(all_hosts, 0.5), "p99": quantile(all_hosts, 0.99), "max": max(all_hosts),
            "per_host_p50": quantile(per_host, 0.5), "lift_p50": quantile(lifted, 0.5) if lifted else None,
            "lift_p99": quantile(lifted, 0.99) if lifted else None, "lapi_cpu_s": cpu,
            "cscli_retries": f.lapi.locked, "stuck": stuck, "seconds": elapsed,
            "lapi_cpu_ms_per_pull": 1e3 * cpu / pulls if pulls else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="1,5,10,20", help="fleet sizes, comma-separated")
    ap.add_argument("--intervals", default="1", help="stream intervals in seconds, comma-separated")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--chart", default=str(charts.DOCS / "fleet.png"), help="the PNG chart written (bench/charts.py); '' for none")
    a = ap.parse_args()
    if (reason := fleet.available()) is not None:
        sys.exit(f"bench_fleet: {reason}")
    rng = random.Random(a.seed)
    sizes = [int(x) for x in a.hosts.split(",")]
    intervals = [float(x) for x in a.intervals.split(",")]
    command = "PYTHONPATH=src python bench/bench_fleet.py " + " ".join(
        f"--{k} {v}" for k, v in (("hosts", a.hosts), ("intervals", a.intervals), ("samples", a.samples)))
    rows = []
    print(f"{'hosts':>5} {'interval':>8} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'host p50':>8} {'lift p50':>8}"
          f" {'lift p99':>8} {'LAPI ms/pull':>12} {'cscli retries':>13} {'stuck':>5}", flush=True)
    for interval in intervals:
        for n in sizes:
            r = configuration(n, interval, a.samples, rng)
            rows.append(r)
            per_pull = "-" if r["lapi_cpu_ms_per_pull"] is None else f"{r['lapi_cpu_ms_per_pull']:.1f}"
            print(f"{n:>5} {interval:>8g} {r['p50']:>7.2f} {r['p99']:>7.2f} {r['max']:>7.2f} {r['per_host_p50']:>8.2f}"
                  f" {r['lift_p50'] or -1:>8.2f} {r['lift_p99'] or -1:>8.2f} {per_pull:>12} {r['cscli_retries']:>13}"
                  f" {len(r['stuck']):>5}", flush=True)
            for why in r["stuck"]:
                print(f"      a deletion not applied within {WAIT:g} s: {why}", flush=True)
    print(f"({a.samples} decisions each; p50/p99: until the last host drops, from the start of cscli decisions add;"
          f" machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    print(f"reproduce: {command}")
    if a.chart:
        charts.fleet_chart(rows, Path(a.chart), command)
    if a.json:
        Path(a.json).write_text(json.dumps({"command": command, "cpus": os.cpu_count(), "load": os.getloadavg(),
                                            "configurations": rows}, indent=1))


if __name__ == "__main__":
    main()
