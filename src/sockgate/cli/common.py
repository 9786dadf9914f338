"""Arguments shared by every subcommand that takes a policy."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from sockgate.agent.superserver import SYSTEMD_UNITS
from sockgate.agent.model import Endpoint
from sockgate.errors import UsageError
from sockgate.loading import load_policy
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
    files = list(getattr(args, "policy_files", None) or []) + list(args.policy or [])
    if not files and args.hosts_allow is None and args.hosts_deny is None:
        raise UsageError("no policy: give POLICY files, --policy, or --hosts-allow/--hosts-deny")
    warn_missing(args.hosts_allow, args.hosts_deny)
    return load_policy(files, args.hosts_allow, args.hosts_deny)


MAP_HELP = "guard PROTO/PORT (or PORT-PORT) as DAEMON's, whoever holds it (repeatable)"


def parse_maps(items: list[str]) -> dict[str, tuple[Endpoint, ...]]:
    """``--map DAEMON=PROTO/PORT[-PORT]`` values by daemon; a UsageError naming a bad one."""
    maps: dict[str, list[Endpoint]] = {}
    for item in items:
        daemon, sep, spec = item.partition("=")
        proto, slash, ports = spec.partition("/")
        first, dash, last = ports.partition("-")
        try:
            if not (sep and slash and daemon) or proto not in ("tcp", "udp"):
                raise ValueError
            endpoint = Endpoint("tcp" if proto == "tcp" else "udp", int(first), int(last if dash else first))
        except ValueError:
            raise UsageError(f"--map {item[:60]!r}: expected DAEMON=PROTO/PORT, as sshd=tcp/22 or ntpd=udp/123") from None
        maps.setdefault(daemon, []).append(endpoint)
    return {d: tuple(eps) for d, eps in maps.items()}


def add_superserver_args(p: "argparse._ActionsContainer", what: str) -> None:
    """``--xinetd-conf``, ``--inetd-conf``, ``--systemd-units``: where super-servers say which
    daemon a port starts (agent/superserver.py)."""
    p.add_argument("--xinetd-conf", metavar="PATH", default="/etc/xinetd.conf",
                   help=f"xinetd's configuration: {what} (default /etc/xinetd.conf)")
    p.add_argument("--inetd-conf", metavar="PATH", default="/etc/inetd.conf",
                   help="inetd's configuration, for the same (default /etc/inetd.conf)")
    p.add_argument("--systemd-units", action="append", metavar="DIR",
                   help="a systemd unit directory whose .socket units say which daemon a port starts (repeatable;"
                        " default the system's, in systemd's order)")


def unit_dirs(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(args.systemd_units) if args.systemd_units else SYSTEMD_UNITS


def warn_missing(*paths: str | None) -> None:
    """libwrap reads a missing table as empty (so a typo grants everyone): say so."""
    for path in paths:
        if path is not None and not os.path.exists(path):
            print(printable(f"sockgate: warning: {path} does not exist; read as an empty table, as libwrap does"), file=sys.stderr)


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
