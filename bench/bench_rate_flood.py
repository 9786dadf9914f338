"""Allowed clients while a rate-limited source floods: eBPF's per-source token bucket.

One echo server on 127.0.0.1 (bench/_kernel_bench.py, a Python epoll loop, listen backlog
BACKLOG) whose listener sockgate guards with the eBPF backend: allow 127.0.0.0/8 with
``limit rate RATE/second per source`` (no ban), so the flooding source 127.0.0.2 is an allowed
host over its rate — each of its new connections past RATE a second is a SYN the program's
bucket drops (generic cell rate algorithm on ``sg_buckets``, docs/ebpf.md), while RATE a second
of them still complete and are accepted by the server. The allowed clients are 4 threads
looping connect / 64-byte echo / close, each connection from the next address of
127.1.0.0/16 (65,534 hosts, each well under its rate: a few connections a second at most);
the benchmark checks it afterwards in the service's pinned counters (``sockgate refused``'s
reader): no client source may have a refusal, or the run measured the clients' own limit.

Method: bench_flood.py's (PEERS.md). The flood is bench/flood.c (compiled at run time with the
machine's C compiler into a temporary directory; without one the Python stand-in, with a
warning): one process, unpaced non-blocking connects from 127.0.0.2, each abandoned after
20 ms, running through the whole flood run. Per run the server gets a no-flood and a flood run
of SECONDS each, back to back (order alternating between runs); the ratio is taken per run,
and its median over RUNS reported. ``--modes`` adds peers measured in the same run:
``ebpf-open``, the same eBPF guard without the rate limit, where every flood connect completes
(what the limit saves the clients from), and ``cbpf-deny``, bench_flood.py's kernel filter with
the flood's source denied outright (the best a filter can do: the ceiling of the ratio on this
machine at this moment).

    PYTHONPATH=src .venv/bin/python bench/bench_rate_flood.py [--runs 5] [--seconds 5] [--rate 100]

Needs root (eBPF, a bpffs): the guard is pinned in a private bpffs on a temporary directory
(``$SOCKGATE_BPFFS``), unmounted afterwards. Target (issue 13): the clients keep >= 0.8 of
their no-flood rate. Traffic: 127.0.0.0/8 only; each run is bounded by SECONDS + 2 s and the
flood by 200,000 attempts per second of run.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tempfile
from pathlib import Path

from _flood_runs import Run, flood_command, flood_name, measure, preamble, ratio, table
from _kernel_bench import Server, median

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path[:0] = [str(SRC), str(SRC.parent / "tests")]
from sockgate.refused import read_refused  # noqa: E402
from support.pinned import private_bpffs  # noqa: E402

CLIENTS = "127.1.0.0/16"
FLOOD_SOURCE = "127.0.0.2"  # run_clients' flood source
MODES = ("ebpf-rate", "ebpf-open", "cbpf-deny")
NAMES = {"ebpf-rate": "eBPF, limit rate per source", "ebpf-open": "eBPF, no limit",
         "cbpf-deny": "classic BPF, the flood's source denied"}


def server(mode: str, rate: int, backlog: int) -> Server:
    if mode == "cbpf-deny":
        return Server("kernel", {"allow": [CLIENTS], "default": "deny"}, backlog)
    spec: dict[str, object] = {"allow": ["127.0.0.0/8"], "default": "deny"}
    if mode == "ebpf-rate":
        spec["rate_per_source"] = [rate, 1]
    return Server("ebpf", spec, backlog)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="per run, with and without flood each")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rate", type=int, default=100, help="limit rate RATE/second per source")
    ap.add_argument("--backlog", type=int, default=128, help="listen backlog of the server")
    ap.add_argument("--window", type=int, default=16384, help="most flood connects in flight")
    ap.add_argument("--python-flood", action="store_true", help="use the Python flood even if cc exists")
    ap.add_argument("--modes", default=",".join(MODES), help=f"servers to measure, comma-separated, from {','.join(MODES)}")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not 0 < args.seconds <= 60 or not 1 <= args.runs <= 20 or not 1 <= args.rate <= 10**6 \
            or not modes or any(m not in MODES for m in modes):
        ap.error("--seconds in (0, 60], --runs in 1..20, --rate in 1..1000000, --modes from " + ",".join(MODES))
    if os.geteuid() != 0:
        ap.error("needs root: the eBPF backend loads programs and mounts a bpffs")
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="sockgate-rate-flood-") as tmp:
        flood_cmd = flood_command(tmp, args.python_flood, "using the Python flood")
        with private_bpffs() as bpffs:
            os.environ["SOCKGATE_BPFFS"] = bpffs  # the servers (children) and the counters' reader use it
            runs = measure(args, modes, lambda m: server(m, args.rate, args.backlog), flood_cmd, CLIENTS)
            counted = refusals(bpffs) if "ebpf-rate" in modes else {}
    load.append(os.getloadavg())
    report(args, modes, runs, counted, flood_name(flood_cmd), load)
    return 0


def refusals(bpffs: str) -> dict[str, int]:
    """Refused connections by kind of source, from the service's pinned counters."""
    clients = ipaddress.ip_network(CLIENTS)
    out = {"flood": 0, "clients": 0, "other": 0}
    for row in read_refused(f"{bpffs}/sockgate", "bench").counts:
        kind = "flood" if str(row.source) == FLOOD_SOURCE else "clients" if row.source in clients else "other"
        out[kind] += row.count.refused
    return out


def report(args: argparse.Namespace, modes: list[str], runs: dict[str, list[Run]], counted: dict[str, int],
           flood: str, load: list[tuple[float, float, float]]) -> None:
    preamble(f"PYTHONPATH=src .venv/bin/python bench/bench_rate_flood.py --runs {args.runs} --seconds {args.seconds:g}"
             f" --threads {args.threads} --rate {args.rate} --backlog {args.backlog}", args, modes, MODES, load)
    print(f"flood: {flood} from {FLOOD_SOURCE}, one process, unpaced, each connect abandoned after 20 ms;"
          f" clients from {CLIENTS}; eBPF: allow 127.0.0.0/8 (ebpf-rate: limit rate {args.rate}/second per source),"
          f" classic: allow {CLIENTS}; listen backlog {args.backlog}")
    print(f"medians of {args.runs} runs of {args.seconds:g} s without and {args.seconds:g} s with flood, {args.threads} client threads")
    c = counted
    table("guard", "refused: flood / clients", NAMES, runs,
          lambda m: f"{c['flood']:,} / {c['clients'] + c['other']:,}" if m == "ebpf-rate" else "none counted")
    if "ebpf-rate" in modes:
        print(f"clients under a rate-limited flood vs no flood: {median([ratio(x) for x in runs['ebpf-rate']]):.2f}"
              " (target >= 0.8)")
        if c["clients"] or c["other"]:
            print(f"WARNING: {c['clients'] + c['other']} client connections were refused: --rate is too low for"
                  " this machine's client rate, and the ratio measured the clients' own limit")


if __name__ == "__main__":
    sys.exit(main())
