"""The method bench_flood.py and bench_rate_flood.py share (PEERS.md), written once: the flood
command, the servers' interleaved no-flood and flood runs, and the result table's common part.

Per run each server gets its no-flood and its flood run back to back (the order alternating
between runs, so slow drifts of the shared machine's load cancel), servers interleaved; the
ratio is taken per run and its median over the runs reported. Each benchmark adds what is its
own: its servers, its extra column, its verdict lines.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Mapping, Sequence

from _kernel_bench import Server, build_flood, machine, median, python_flood, run_clients

Run = dict[str, dict[str, float]]  # "quiet" / "flood" -> the numbers of that run
HEADER = "no flood conn/s | under flood conn/s | ratio (per run) | p99 no flood / flood | stalled ≥ 0.9 s + failed per run |" \
         " flood attempts/s (its CPU)"


def flood_command(tmp: str, use_python: bool, warning: str) -> list[str]:
    """flood.c compiled into ``tmp``; the Python stand-in (with ``warning`` on stderr) when
    asked or when there is no C compiler."""
    cmd = None if use_python else build_flood(tmp)
    if cmd is None:
        print(f"WARNING: no C compiler (or --python-flood): {warning}", file=sys.stderr)
        cmd = python_flood()
    return cmd


def flood_name(cmd: Sequence[str]) -> str:
    return "python" if cmd[0] == sys.executable else "flood.c"


def ratio(res: Run) -> float:
    return res["flood"]["rate"] / res["quiet"]["rate"] if res["quiet"]["rate"] else 0.0


def med(runs: Sequence[Run], kind: str, key: str) -> float:
    return median([x[kind][key] for x in runs])


def measure(args: argparse.Namespace, modes: Sequence[str], server: Callable[[str], Server], flood_cmd: list[str],
            sources: str | None = None) -> dict[str, list[Run]]:
    """``args.runs`` interleaved runs of ``args.seconds`` each way against ``server(mode)`` for
    every mode (``args.threads`` client threads, at most ``args.window`` flood connects in
    flight, from 127.0.0.1 or each address of ``sources``); every server closed afterwards."""
    servers: dict[str, Server] = {}
    runs: dict[str, list[Run]] = {m: [] for m in modes}
    budget = int(200_000 * (args.seconds + 1))
    width = max(map(len, modes))
    try:
        for m in modes:
            servers[m] = server(m)
        for r in range(args.runs):
            for m in modes:
                res: Run = {}
                for kind in (("quiet", "flood") if r % 2 == 0 else ("flood", "quiet")):
                    cmd = flood_cmd if kind == "flood" else None
                    res[kind] = run_clients(servers[m].port, args.seconds, args.threads, cmd, budget, args.window, sources)
                runs[m].append(res)
                q, f = res["quiet"], res["flood"]
                print(f"run {r + 1}/{args.runs} {m:{width}} no flood {q['rate']:6.0f}/s p99 {q['p99_us'] / 1000:5.1f} ms |"
                      f" flood {f['rate']:6.0f}/s p99 {f['p99_us'] / 1000:6.1f} ms stalls {f['stalls']:.0f}"
                      f" fail {f['failures']:.0f} | ratio {ratio(res):.2f} | flood {f['flood_rate']:6.0f}/s"
                      f" ({f['flood_cpu_share']:.0%} of a CPU) listen overflows {f['ListenOverflows']:.0f}", file=sys.stderr)
    finally:
        for s in servers.values():
            s.close()
    return runs


def preamble(command: str, args: argparse.Namespace, modes: Sequence[str], all_modes: Sequence[str],
             load: Sequence[tuple[float, float, float]]) -> None:
    """The lines above a table: the machine, the load before and after, the command that
    reproduces the run (``command`` with the options every flood benchmark has appended)."""
    print(f"machine: {machine()}")
    print("load average (1/5/15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(*load[0], *load[1]))
    print(f"command: {command} --window {args.window}" + (" --python-flood" if args.python_flood else "")
          + (f" --modes {','.join(modes)}" if list(modes) != list(all_modes) else ""))


def table(first: str, last: str, names: Mapping[str, str], runs: Mapping[str, list[Run]],
          extra: Callable[[str], str]) -> None:
    """The result table: a row per mode, the shared columns between ``first`` (the mode's
    name) and ``last`` (``extra(mode)``)."""
    print(f"| {first} | {HEADER} | {last} |")
    print("|---|---|---|---|---|---|---|---|")
    for m, rs in runs.items():
        per = ", ".join(f"{ratio(x):.2f}" for x in rs)
        stalls = median([x["flood"]["stalls"] + x["flood"]["failures"] for x in rs])
        print(f"| {names[m]} | {med(rs, 'quiet', 'rate'):,.0f} | {med(rs, 'flood', 'rate'):,.0f} |"
              f" {median([ratio(x) for x in rs]):.2f} ({per}) |"
              f" {med(rs, 'quiet', 'p99_us') / 1000:.1f} / {med(rs, 'flood', 'p99_us') / 1000:.1f} ms | {stalls:.0f} |"
              f" {med(rs, 'flood', 'flood_rate'):,.0f} ({med(rs, 'flood', 'flood_cpu_share'):.0%}) | {extra(m)} |")
