"""Arguments shared by every subcommand that takes a policy."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from sockgate.errors import UsageError
from sockgate.log import LogSink
from sockgate.policy.ir import Policy
from sockgate.policy.source import printable


def add_policy_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    """``--policy P`` (repeatable) or positional POLICY files, and ``--hosts-allow``/``--hosts-deny``."""
    if positional:
        p.add_argument("policy_files", nargs="*", metavar="POLICY", help="native policy files")
    p.add_argument("--policy", action="append", default=[], metavar="P", help="native policy file (repeatable)")
    p.add_argument("--hosts-allow", metavar="PATH", help="a hosts.allow file (hosts_access(5))")
    p.add_argument("--hosts-deny", metavar="PATH", help="a hosts.deny file (hosts_access(5))")


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    """``--backend auto|cbpf|ebpf`` (docs/ebpf.md: which kernel backend enforces the service)."""
    p.add_argument(
        "--backend",
        choices=("auto", "cbpf", "ebpf"),
        default="auto",
        help="kernel backend: classic BPF, eBPF, or auto (eBPF when this process may load it, else classic; default)",
    )


def load_from_args(args: argparse.Namespace) -> Policy:
    from sockgate.loading import load_policy

    files = list(getattr(args, "policy_files", None) or []) + list(args.policy or [])
    if not files and args.hosts_allow is None and args.hosts_deny is None:
        raise UsageError("no policy: give POLICY files, --policy, or --hosts-allow/--hosts-deny")
    for path in (args.hosts_allow, args.hosts_deny):
        if path is not None and not os.path.exists(path):
            # libwrap reads a missing table as empty (so a typo grants everyone): say so.
            print(printable(f"sockgate: warning: {path} does not exist; read as an empty table, as libwrap does"), file=sys.stderr)
    return load_policy(files, args.hosts_allow, args.hosts_deny)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")


def columns(table: Sequence[Sequence[str]]) -> str:
    """Rows aligned with spaces (the first row is the header); the last column is not padded."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    return "".join("  ".join(v.ljust(w) for v, w in zip(line, widths)) + "  " + line[-1] + "\n" for line in table)


def add_log_args(p: argparse.ArgumentParser, syslog_help: str) -> None:
    """``--log-format text|json`` and where records go: stderr, ``--syslog`` or ``--journal``."""
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="log records as text or JSON lines")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--syslog", action="store_true", help=syslog_help)
    where.add_argument("--journal", action="store_true", help="log to the systemd journal (native protocol) instead of stderr")


def log_sink(args: argparse.Namespace) -> LogSink:
    return "syslog" if args.syslog else "journal" if args.journal else "stderr"
