"""Allowed clients under a denied connect flood: the kernel filter vs accept-then-close.

Four echo servers on 127.0.0.1 enforce the same policy (allow 127.0.0.1, default deny), all
with the same listen backlog (BACKLOG, default 128: Python's default for listen(), sshd's;
4096 is SOMAXCONN, a systemd socket unit's default): one with sockgate's filter on its
listener (a denied SYN is dropped in the kernel: no SYN-ACK, no accept-queue slot), and three
the TCP Wrappers way, deciding only after the handshake: accept, ask the system's libwrap
(hosts_ctl(3) on a hosts.allow/hosts.deny pair), close — TCP Wrappers linked into the
daemon; the same with sockgate's engine deciding in-process (the most charitable
accept-then-close, about 60 % of libwrap's cost per call; the run
measures both and prints them); and a fork per accepted
connection whose child decides, then closes or serves (inetd + tcpd, without tcpd's exec).

Method (PEERS.md): 4 client threads loop connect / 64-byte echo / close from 127.0.0.1 for
SECONDS against one server — once alone ("no flood") and once while a single process floods
from 127.0.0.2 with unpaced non-blocking connects, each abandoned after 20 ms (bench/flood.c,
compiled at run time with the machine's C compiler into a temporary directory; if there is
none, the Python stand-in in _kernel_bench.py, with a warning: alone against a filtered
listener it reached about 3/4 of flood.c's rate here, most of either's time being the
kernel's connect path). The
flood runs continuously through the flood run (from 0.5 s before the clients start until
just after they stop), as in PEERS' "the same server without flood" vs "with flood": a flood
that alternates with quiet phases shorter than a few seconds would let allowed connects whose
SYN was dropped finish (1 s later, after the SYN retransmit) in a quiet phase and be counted
there. Per run, each server gets its no-flood and its flood run back to back (the order
alternates between runs so slow drifts of the shared machine's load cancel), servers
interleaved; the ratio is taken per run and its median over RUNS reported.

    .venv/bin/python bench/bench_flood.py [--runs 5] [--seconds 5] [--backlog 128]

Every process shares both CPUs, as in PEERS.md: the flood generator's own CPU is not
subtracted, and on loopback that includes the kernel's receive path of every flood packet
(softirq runs in the sending syscall), which a flood from another host would not cost.

Targets (issue 3): sockgate's rate under flood >= 0.8 of its no-flood rate, and >= 10x the
rate of accept-then-close under the same flood. Traffic: 127.0.0.0/8 only; each run is
bounded by SECONDS + 2 s and the flood by 200,000 attempts per second of run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import charts
from _flood_runs import Run, flood_command, flood_name, measure, med, preamble, ratio, table
from _kernel_bench import Libwrap, Server, has_libwrap, median, service_from

POLICY = {"allow": ["127.0.0.1/32"], "default": "deny"}
MODES = ("kernel", "libwrap", "accept-close", "inetd-fork")
NAMES = {
    "kernel": "sockgate kernel filter",
    "libwrap": "accept-then-close in the daemon, libwrap's hosts_ctl",
    "accept-close": "accept-then-close in the daemon, sockgate's engine",
    "inetd-fork": "fork per connection, then check (inetd + tcpd)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="per run, with and without flood each")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--backlog", type=int, default=128, help="listen backlog of every server")
    ap.add_argument("--window", type=int, default=16384, help="most flood connects in flight")
    ap.add_argument("--python-flood", action="store_true", help="use the Python flood even if cc exists")
    ap.add_argument("--modes", default=",".join(MODES), help="servers to measure, comma-separated")
    ap.add_argument("--chart", default=str(charts.DOCS / "flood.png"), help="the PNG chart written (bench/charts.py)")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not 0 < args.seconds <= 60 or args.runs < 1 or any(m not in MODES for m in modes):
        ap.error("--seconds must be in (0, 60], --runs >= 1, --modes from " + ",".join(MODES))
    if "libwrap" in modes and not has_libwrap():
        ap.error("libwrap.so.0 is not installed (Debian: apt-get install libwrap0, which tcpd pulls in);"
                 " or leave libwrap out of --modes")
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="sockgate-flood-") as tmp:
        flood_cmd = flood_command(tmp, args.python_flood, "using the Python flood, which reached about 3/4 of"
                                  " flood.c's connects/s here; the flood's rate is in the output")
        runs = measure(args, modes, lambda m: Server(m, POLICY, args.backlog), flood_cmd)
    load.append(os.getloadavg())
    report(args, modes, runs, flood_name(flood_cmd), load)
    chart(args, modes, runs)
    if "libwrap" in modes:
        print(decision_costs())
    return 0


def decision_costs(calls: int = 20_000, repeats: int = 7) -> str:
    """What the two in-daemon checks cost per connection: libwrap's ``hosts_ctl`` and
    sockgate's engine (with the peer parsed from text, as the accept loop does)."""
    import statistics
    import timeit

    from sockgate.decide import decide_resolved
    from sockgate.peers import Peer
    from sockgate.resolve import resolve_service

    svc = resolve_service(service_from(POLICY))  # resolved once, as a daemon would
    with tempfile.TemporaryDirectory(prefix="sockgate-libwrap-") as tmp:
        wrap = Libwrap(POLICY, tmp)
        checks = {
            "libwrap hosts_ctl": lambda: wrap.allowed("127.0.0.2"),
            "sockgate engine": lambda: decide_resolved(svc, Peer.parse("127.0.0.2")).allowed,
        }
        cost = {k: statistics.median(timeit.repeat(f, number=calls, repeat=repeats)) / calls * 1e6 for k, f in checks.items()}
    return "decision cost per denied connection (median of {} x {:,} calls): {}".format(
        repeats, calls, ", ".join(f"{k} {v:.1f} us" for k, v in cost.items()))


def report(args: argparse.Namespace, modes: list[str], runs: dict[str, list[Run]], flood: str,
           load: list[tuple[float, float, float]]) -> None:
    preamble(f".venv/bin/python bench/bench_flood.py --runs {args.runs} --seconds {args.seconds:g}"
             f" --threads {args.threads} --backlog {args.backlog}", args, modes, MODES, load)
    print(f"flood: {flood}, one process, unpaced, each connect abandoned after 20 ms, at most {args.window} in flight;"
          f" listen backlog {args.backlog} on every server")
    print(f"medians of {args.runs} runs of {args.seconds:g} s without and {args.seconds:g} s with flood, {args.threads} client threads")
    table("enforcement", "listen overflows per run", NAMES, runs, lambda m: f"{med(runs[m], 'flood', 'ListenOverflows'):,.0f}")
    if "kernel" not in modes:
        return
    print(f"sockgate under flood vs no flood: {median([ratio(x) for x in runs['kernel']]):.2f} (target >= 0.8)")
    for m in modes:
        if m == "kernel":
            continue
        pairs = [(k["flood"]["rate"], o["flood"]["rate"]) for k, o in zip(runs["kernel"], runs[m])]
        vs = [a / b if b else float("inf") for a, b in pairs]
        print(f"sockgate vs {NAMES[m]} under the same flood: {median(vs):.1f}x"
              f" (per run {', '.join(f'{v:.1f}' for v in vs)}; target >= 10x)")


SHORT = {"kernel": "sockgate (kernel filter)", "libwrap": "accept-then-close (libwrap)",
         "accept-close": "accept-then-close (sockgate engine)", "inetd-fork": "inetd + tcpd (fork per connection)"}


def chart(args: argparse.Namespace, modes: list[str], runs: dict[str, list[Run]]) -> None:
    """The table's first two columns as bars: allowed clients without and under the flood."""
    rates = {kind: [med(runs[m], kind, "rate") for m in modes] for kind in ("quiet", "flood")}
    charts.bars(Path(args.chart), "Allowed clients under a denied connect flood", [SHORT[m] for m in modes],
                {"no flood": rates["quiet"], "under flood": rates["flood"]}, "allowed connections/s (median)",
                charts.caption(f"bench/bench_flood.py --runs {args.runs} --seconds {args.seconds:g}, {args.threads} client"
                               f" threads, backlog {args.backlog}, flood from 127.0.0.2 on the same CPUs"))


if __name__ == "__main__":
    sys.exit(main())
