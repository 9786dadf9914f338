"""``sockgate top``: a live view of sockets, refusals, bans and the agent's health (docs/top.md).

A shell: parse the options, build the ``Feed`` (the host and the agent's control socket) and
run the textual app over it. textual is an optional extra; without it the command says in one
line how to install it, and nothing else of sockgate is affected. The policy files are optional:
they are what ``explain`` (the ``e`` key) compiles, as ``sockgate explain`` would.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from sockgate.agent.protocol import ProtocolError, parse_duration
from sockgate.cli.common import add_policy_args, load_from_args
from sockgate.cli.status import add_control
from sockgate.errors import UsageError
from sockgate.kernel.ebpfstore import Paths, default_mount
from sockgate.top.feed import Feed

INSTALL = "sockgate top needs textual: pip install 'sockgate[top]'"
NO_TERMINAL = "sockgate top needs a terminal on its input and output; for text, use sockgate status, ls or refused"


def add_parser(p: argparse.ArgumentParser) -> None:
    add_policy_args(p, positional=True)
    add_control(p)
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="seconds between refreshes (default 2)")
    p.add_argument("--ban-for", default="1h", metavar="DURATION",
                   help="how long the b key bans a source: 30s, 10m, 2h, 1d, or 'never' to ban until unbanned (default 1h)")
    # where the eBPF backend pins, read when no agent answers ($SOCKGATE_BPFFS, else /sys/fs/bpf)
    p.add_argument("--root", default=Paths(default_mount()).root, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("textual") is None:
        raise UsageError(INSTALL)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(NO_TERMINAL)
    if not 0.2 <= args.interval <= 3600:
        raise UsageError(f"--interval must be 0.2-3600 seconds, got {args.interval:g}")
    try:
        ban_for = None if args.ban_for == "never" else parse_duration(args.ban_for)
    except ProtocolError as e:
        raise UsageError(f"--ban-for: {e.message}") from None
    wants_policy = args.policy_files or args.policy or args.hosts_allow or args.hosts_deny
    policy = load_from_args(args) if wants_policy else None
    from sockgate.top.app import TopApp  # the optional extra, checked above

    TopApp(Feed(args.control, args.root), policy, args.interval, ban_for).run()
    return 0
