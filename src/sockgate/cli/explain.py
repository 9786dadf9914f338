"""``sockgate explain``: the BPF program for a service, and a client's path through it.

Prints the program's size (instructions, disjoint ranges per family, bytes attached and the
kernel's converted size), notes on hosts_options(5) options a kernel filter does not carry out
(``spawn``, ``banners`` ...), its listing, and for each ``--client`` the instruction indices the
interpreter executes for a packet from that address, the verdict, and the decision engine's
verdict and reason beside it. The two must agree; if they ever do not, the command says so
and exits 1 (a compiler bug worth reporting). The work is ``sockgate.explain.explain`` (which
``sockgate top`` shows too).
"""

from __future__ import annotations

import argparse

from sockgate.cli.common import add_policy_args, load_from_args, print_json
from sockgate.explain import banned_networks, explain, render
from sockgate.policy.source import printable


def add_parser(p: argparse.ArgumentParser) -> None:
    add_policy_args(p, positional=True)
    p.add_argument("--service", required=True, help="the service whose program to show")
    p.add_argument("--client", action="append", default=[], metavar="ADDR",
                   help="trace a packet from this address (repeatable; IPv4, IPv6, ::ffff:a.b.c.d)")
    p.add_argument("--banned", action="append", default=[], metavar="CIDR",
                   help="also deny this source before any rule, as the proxy's bans do (repeatable)")
    p.add_argument("--no-listing", action="store_true", help="omit the program listing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    policy = load_from_args(args)
    banned = banned_networks(args.banned)
    report = explain(policy, args.service, args.client, banned, listing=not args.no_listing)
    if args.json:
        print_json(report)
    else:
        print(printable(render(report)), end="")  # rule texts, reasons: policy text
    return 0 if all(c["agree"] for c in report["clients"]) else 1
