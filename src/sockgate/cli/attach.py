"""``sockgate attach``: guard the sockets of a running process in place.

Targets are one fd of a process (``--pid PID --fd N``), a process's TCP listeners and UDP
sockets (``--pid PID``), or every socket bound to a port (``--port PORT``, all the processes
of an SO_REUSEPORT group; naming only part of such a group is refused, as it would leave the
rest open). The policy is compiled completely first; then every socket is
guarded, or none is (changes already made are undone). Running it again swaps the filter in
place (a reload); a foreign filter is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import sys

from sockgate import inventory
from sockgate.cli.common import add_backend_arg, add_policy_args, load_from_args, print_json
from sockgate.errors import UsageError
from sockgate.guard import compile_guard
from sockgate.policy.source import escape, printable
from sockgate.resolve import resolve


def add_target_args(p: argparse.ArgumentParser) -> None:
    """``--pid PID [--fd N]`` or ``--port PORT``, ``--proto``, ``--force``, ``--json``."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=int, help="the process whose sockets to change")
    which.add_argument("--port", type=int, help="every socket bound to this local port")
    p.add_argument("--fd", type=int, help="only this descriptor of --pid")
    p.add_argument("--proto", choices=("tcp", "udp"), help="only sockets of this protocol (--port: default tcp)")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")


def targets_from_args(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.fd is not None and args.pid is None:
        raise UsageError("--fd needs --pid")
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"expected a port 1-65535, found {args.port}")
    return inventory.attach_targets(pid=args.pid, fd=args.fd, port=args.port, proto=args.proto)


def add_parser(p: argparse.ArgumentParser) -> None:
    add_policy_args(p)
    p.add_argument("--service", required=True, help="the service of the policy to enforce")
    add_target_args(p)
    p.add_argument("--force", action="store_true", help="replace a filter sockgate did not attach")
    p.add_argument("--keep-established", action="store_true",
                   help="leave open the established TCP connections whose peer the policy denies")
    add_backend_arg(p)


def run(args: argparse.Namespace) -> int:
    # imported when run: building the full parser (`sockgate --help`) imports every command module
    from sockgate.attach import guard_sockets

    policy = load_from_args(args)
    compile_guard(policy, args.service, args.backend)  # refuse a bad policy (or backend) before looking at any process
    for note in resolve(policy, args.service).option_notes:
        print(printable(f"sockgate attach: note: {note}"), file=sys.stderr)
    guarded, changes, ended = guard_sockets(policy, args.service, targets_from_args(args), force=args.force,
                                            backend=args.backend, keep_established=args.keep_established)
    for problem in ended.problems:
        print(printable(f"sockgate attach: warning: {problem}"), file=sys.stderr)
    if args.json:
        print_json(
            {
                "command": "attach",
                "service": guarded.service,
                "digest": guarded.digest,
                "instructions": guarded.instructions,
                "backend": guarded.backend,
                "backend_reason": guarded.why,
                "sockets": [c.as_dict() for c in changes],
                "ended_connections": ended.count,
            }
        )
        return 0
    for c in changes:
        was = "" if c.before.state == "none" else f" (was {c.before.describe()})"
        # was: a filter read back from someone else's socket, its marker's name theirs
        print(escape(f"{c.action} pid {c.pid} fd {c.fd} {c.proto} {c.local}: service {guarded.service}"
                     f" digest {guarded.digest}, {guarded.instructions} instructions, {guarded.describe()}{was}"))
    if ended.count:
        print(f"ended {ended.count} established connection(s) the policy denies")
    return 0
