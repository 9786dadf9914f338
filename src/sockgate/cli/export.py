"""``sockgate export --format nft|pf POLICY...``: the policy as host firewall rules.

Rendering is complete before anything is written: on any error nothing reaches stdout or
``-o FILE``. Warnings (rules left out with ``--skip-userspace``, options a packet filter
cannot carry, services sharing a port) go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

from sockgate.cli.common import add_policy_args, load_from_args
from sockgate.errors import AdapterError
from sockgate.policy.source import printable
from sockgate.export import FORMATS, export
from sockgate.export.ports import parse_map
from sockgate.services_db import SERVICES_PATH, read_services


def add_parser(p: argparse.ArgumentParser) -> None:
    add_policy_args(p, positional=True)
    p.add_argument("--format", "-f", choices=FORMATS, required=True, help="nft (nftables ruleset) or pf (pf.conf fragment)")
    p.add_argument("--table", default="sockgate", metavar="NAME", help="nftables table / pf anchor name (default sockgate)")
    p.add_argument("--action", choices=("drop", "reject"), default="drop", help="what a deny does (default drop)")
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="DAEMON=PROTO/PORT",
        help="where a daemon listens, e.g. sshd=tcp/22 (repeatable; services(5) names need none)",
    )
    p.add_argument("--services-file", metavar="PATH", help=f"services(5) database (default {SERVICES_PATH}, skipped when missing)")
    p.add_argument(
        "--skip-userspace",
        action="store_true",
        help="leave out rules a packet filter cannot express (they then never match) instead of failing",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")


def run(args: argparse.Namespace) -> int:
    mapped = parse_map(args.map)
    policy = load_from_args(args)
    result = export(
        policy,
        args.format,
        table=args.table,
        action=args.action,
        mapped=mapped,
        services_db=read_services(args.services_file or SERVICES_PATH, required=args.services_file is not None),
        skip_userspace=args.skip_userspace,
    )
    for w in result.warnings:
        print(f"sockgate: warning: {w}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(result.text)
        return 0
    _write(args.output, result.text)
    return 0


def _write(path: str, text: str) -> None:
    """Replace ``path`` whole: a new file made in its directory with ``O_EXCL`` under a name
    nobody can guess (``mkstemp``), then renamed over it. A predictable temporary name would
    let anyone who can write the directory plant a symlink there and have root write through
    it; ``rename`` replaces a symlink at ``path`` itself, never its target."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sockgate-export-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise AdapterError(f"cannot write {printable(path)}: {e.strerror}", errno=e.errno, target=path) from None
