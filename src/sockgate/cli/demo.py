"""``sockgate demo``: run a guarded echo service on loopback and look at it from two sources."""

from __future__ import annotations

import argparse

from sockgate.errors import UsageError


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how long the denied source waits before calling the port filtered (default 0.5)",
    )


def run(args: argparse.Namespace) -> int:
    # imported when run: building the full parser (`sockgate --help`) imports every command module
    from sockgate import demo

    if not 0.05 <= args.timeout <= 60:
        raise UsageError("demo: --timeout must be between 0.05 and 60 seconds")
    report = demo.run(timeout=args.timeout)
    print(demo.render(report), flush=True)
    return 0 if report.ok else 1
