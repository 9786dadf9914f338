"""How long loading a large policy takes: `sockgate check` and `sockgate lint` as a user runs them.

Writes, in a temporary directory, (1) a policy of RULES rules (default 10,000) in one service:
distinct IPv4 hosts and /24s, IPv6 /64s, some with `except`, alternating allow and deny, a few
sets; (2) a set file of LINES lines (default 100,000; IPv4 and IPv6 networks, comments, blank
lines) used by a `deny @blocklist` rule. Then runs each command RUNS times (default 3) in a
fresh interpreter, output discarded, and prints the medians of wall-clock time (the budget is
on it) and of CPU time (user + system; steadier on a shared machine), with the command that
reproduces them. The inputs come from a fixed seed, so every run and every
machine times the same files.

    python bench/bench_load.py [--rules 10000] [--lines 100000] [--runs 3]

Budgets (issue 11, item 8): `check` and `lint` of 10,000 rules under 1 s each; a policy with a
100,000-line set file under 2 s. Pure computation: no sockets, no root.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def rules_policy(n: int, rnd: random.Random) -> str:
    """One service of ``n`` distinct rules (a few shadowed ones, so lint has work to report)."""
    hosts = rnd.sample(range(1 << 24), n)
    lines = ["set office = { 192.0.2.0/24, 2001:db8:1::/48 }", "set partners = { 198.51.100.0/24 }",
             "service web tcp/80,443 {", "    deny @partners"]
    for i, h in enumerate(hosts):
        action = "allow" if i % 2 else "deny"
        v4 = ipaddress.IPv4Address((10 << 24) | h)
        if i % 5 == 0:
            lines.append(f"    {action} {ipaddress.IPv4Network((int(v4) & ~0xFF, 24))} except {v4}")
        elif i % 7 == 0:
            lines.append(f"    {action} {ipaddress.IPv6Network(((0x2001_0DB8 << 96) | (h << 64), 64))}")
        else:
            lines.append(f"    {action} {v4}")
    lines += ["    allow @office", "    default deny", "}", ""]
    return "\n".join(lines)


def set_file(n: int, rnd: random.Random) -> str:
    out = ["# blocklist: one address or network a line"]
    for i, p in enumerate(rnd.sample(range(1 << 30), n)):
        if i % 10 == 9:
            out.append(str(ipaddress.IPv6Network(((0x2001_0DB8 << 96) | (p << 66), 62))))
        elif i % 3 == 0:
            out.append(f"{ipaddress.IPv4Address(p << 2)}/30  # seen {i}")
        else:
            out.append(str(ipaddress.IPv4Address(p << 2)))
        if i % 1000 == 0:
            out.append("")
    return "\n".join(out) + "\n"


def set_policy() -> str:
    return ('set blocklist < "blocklist.txt"\n'
            "service ssh tcp/22 {\n    deny @blocklist\n    allow 10.0.0.0/8\n    default deny\n}\n")


def timed(argv: list[str], cwd: Path, runs: int) -> tuple[float, float]:
    """Median wall-clock and CPU (user + system) seconds of ``argv``, run ``runs`` times."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    walls, cpus = [], []
    for _ in range(runs):
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        walls.append(time.perf_counter() - t0)
        after = os.times()
        cpus.append(after.children_user - before.children_user + after.children_system - before.children_system)
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rnd = random.Random(11)
    py = [sys.executable, "-m", "sockgate"]
    with tempfile.TemporaryDirectory(prefix="sockgate-bench-") as tmp:
        work = Path(tmp)
        (work / "rules.conf").write_text(rules_policy(args.rules, rnd))
        (work / "blocklist.txt").write_text(set_file(args.lines, rnd))
        (work / "set.conf").write_text(set_policy())
        check = ["check", "--service", "{svc}", "--client", "10.1.2.3", "--client", "2001:db8::1", "--no-resolve"]
        cases = [
            (f"check, {args.rules:,} rules", [*check, "rules.conf"], "web", 1.0),
            (f"lint, {args.rules:,} rules", ["lint", "rules.conf"], "", 1.0),
            (f"check, {args.lines:,}-line set file", [*check, "set.conf"], "ssh", 2.0),
            (f"lint, {args.lines:,}-line set file", ["lint", "set.conf"], "", 2.0),
        ]
        print(f"machine: {platform.machine()}, {platform.system()} {platform.release()}, "
              f"Python {platform.python_version()}; median of {args.runs} runs, wall clock, "
              "interpreter start-up included")
        print(f"{'case':<34} {'wall s':>7} {'CPU s':>6} {'budget':>7}")
        worst = 0.0
        for name, argv, svc, budget in cases:
            wall, cpu = timed(py + [a.replace("{svc}", svc) for a in argv], work, args.runs)
            worst = max(worst, wall / budget)
            print(f"{name:<34} {wall:>7.2f} {cpu:>6.2f} {budget:>7.1f}{'' if wall <= budget else '  OVER BUDGET'}")
    print(f"reproduce: python bench/bench_load.py --rules {args.rules} --lines {args.lines} --runs {args.runs}")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
