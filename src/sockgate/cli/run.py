"""``sockgate run``: bind guarded sockets and run a service with them (see sockgate.launcher)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from sockgate.cli.common import add_backend_arg, add_log_args, add_policy_args, load_from_args, log_sink
from sockgate.errors import UsageError
from sockgate.guard import backend_choice
from sockgate.urls import parse_urls

# sockgate.launcher is imported when run: building the full parser (`sockgate --help`) imports
# every command module
if TYPE_CHECKING:
    from sockgate.launcher import RunConfig


def add_parser(p: argparse.ArgumentParser) -> None:
    p.usage = "sockgate run --policy P --service S --listen URL [--listen URL ...] [options] -- COMMAND ..."
    add_policy_args(p)
    p.add_argument("--service", "-s", required=True, metavar="S", help="the service (daemon name) to enforce")
    p.add_argument(
        "--listen",
        "-l",
        action="append",
        default=[],
        metavar="URL",
        help="tcp://HOST:PORT, tcp://[V6]:PORT, tcp://:PORT (all addresses), udp://..., unix:PATH, unix:@NAME"
        " (repeatable; options ?name=&backlog=&reuseport=&mode=&owner=&group=)",
    )
    p.add_argument("--user", "-u", metavar="USER", help="run COMMAND as this user (after binding)")
    p.add_argument("--group", "-g", metavar="GROUP", help="run COMMAND with this group (default: the user's)")
    p.add_argument("--inetd", action="store_true", help="accept connections and run COMMAND per connection on stdin/stdout")
    p.add_argument("--max-conns", type=int, default=40, metavar="N", help="--inetd: at most N commands at once (default 40)")
    p.add_argument("--forward-hup", action="store_true", help="after reloading the policy on SIGHUP, pass SIGHUP to COMMAND")
    p.add_argument("--notify", action="store_true", help="report READY/RELOADING/STOPPING to $NOTIFY_SOCKET (systemd)")
    p.add_argument("--lock", action="store_true",
                   help="lock each filter (SO_LOCK_FILTER): COMMAND cannot detach it; reloads then need a restart")
    p.add_argument("--keep-established", action="store_true",
                   help="a reload leaves open the established TCP connections the new policy denies")
    p.add_argument("--guard-check", type=float, default=10.0, metavar="SECONDS", help=argparse.SUPPRESS)  # tests
    add_backend_arg(p)
    add_log_args(p, "write the refusal log to syslog (ident sockgate, facility auth) instead of stderr")
    p.add_argument("--refusal-interval", type=float, default=60.0, metavar="SECONDS",
                   help="eBPF guard: one refusal line per source per SECONDS (default 60)")
    p.add_argument("service_argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the service to run")


def run(args: argparse.Namespace) -> int:
    from sockgate.launcher import RunConfig  # (see the TYPE_CHECKING import above)

    command = list(args.service_argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("run: give the command to run after '--'")
    if not args.listen:
        raise UsageError("run: give at least one --listen URL")
    if not args.guard_check > 0:
        raise UsageError("run: --guard-check must be more than 0 seconds")
    if args.max_conns < 1:
        raise UsageError("run: --max-conns must be at least 1")
    if not 0.1 <= args.refusal_interval <= 86400:
        raise UsageError("run: --refusal-interval must be between 0.1 and 86400 seconds")
    cfg = RunConfig(
        load=lambda: load_from_args(args),
        service=args.service,
        urls=parse_urls(args.listen),
        command=tuple(command),
        user=args.user,
        group=args.group,
        inetd=args.inetd,
        max_conns=args.max_conns,
        forward_hup=args.forward_hup,
        notify=args.notify,
        backend=backend_choice(args.backend),
        log_format=args.log_format,
        log_sink=log_sink(args),
        refusal_interval=args.refusal_interval,
        lock=args.lock,
        keep_established=args.keep_established,
        guard_check=args.guard_check,
    )
    return launch(cfg)


def launch(cfg: "RunConfig") -> int:
    """Prepare (load, check, bind, guard), then supervise the command or serve inetd-style;
    the listeners are closed however that ends."""
    from sockgate import inetd, launcher  # (see the TYPE_CHECKING import above)

    gate, creds = launcher.prepare(cfg)
    try:
        if cfg.inetd:
            return inetd.serve(gate, creds)
        return launcher.supervise(gate, creds)
    finally:
        gate.close()
