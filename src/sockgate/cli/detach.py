"""``sockgate detach``: remove sockgate's filter from a running process's sockets.

Same targets as ``attach``. Only filters sockgate attached are removed; a foreign filter makes
the command refuse (nothing is changed) unless ``--force``. All or nothing, as ``attach``.
"""

from __future__ import annotations

import argparse

from sockgate.cli.attach import add_target_args, targets_from_args
from sockgate.cli.common import print_json
from sockgate.policy.source import escape


def add_parser(p: argparse.ArgumentParser) -> None:
    add_target_args(p)
    p.add_argument("--force", action="store_true", help="remove foreign filters too")


def run(args: argparse.Namespace) -> int:
    # imported when run: building the full parser (`sockgate --help`) imports every command module
    from sockgate.attach import unguard_sockets

    changes = unguard_sockets(targets_from_args(args), force=args.force)
    if args.json:
        print_json({"command": "detach", "sockets": [c.as_dict() for c in changes]})
        return 0
    for c in changes:
        what = "no filter" if c.action == "unchanged" else c.before.describe()
        print(escape(f"{c.action} pid {c.pid} fd {c.fd} {c.proto} {c.local}: {what}"))  # a marker read back: its name is theirs
    return 0
