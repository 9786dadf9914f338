"""``sockgate proxy``: the guard proxy (see sockgate.proxy and docs/proxy.md).

Two ways to say what to run:

* ``sockgate proxy POLICY...`` — every service of the policy that has ``listen`` and
  ``forward`` statements;
* ``sockgate proxy --listen URL [--listen URL...] --forward URL [--policy P --service S]`` —
  one service, like socat; without a policy every client is allowed (limits and logs still
  apply), with one the service is ``--service`` (or the policy's only service).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from sockgate.cli.common import add_backend_arg, add_log_args, add_policy_args, load_from_args, log_sink
from sockgate.errors import UsageError
from sockgate.guard import backend_choice
from sockgate.linux import cpus
from sockgate.log import Log
from sockgate.policy.ir import Action, Policy, Service
from sockgate.proxy import affinity
from sockgate.proxy.namecache import reverse_lookup
from sockgate.proxy.spec import ProxySettings, ProxySpec
from sockgate.urls import parse_url, parse_urls


def add_parser(p: argparse.ArgumentParser) -> None:
    add_policy_args(p, positional=True)
    p.add_argument("--listen", action="append", default=[], metavar="URL", help="listen here (repeatable): tcp://HOST:PORT, udp://..., unix:PATH, unix:@NAME")
    p.add_argument("--forward", metavar="URL", help="forward to this tcp://, udp:// or unix: URL")
    p.add_argument("--service", metavar="S", help="the policy service deciding --listen clients")
    add_log_args(p, "log to syslog (daemon facility) instead of stderr")
    add_backend_arg(p)
    p.add_argument("--refusal-interval", type=float, default=60.0, metavar="SECONDS",
                   help="eBPF filters: one refusal log line per refused source per SECONDS (60)")
    p.add_argument("--workers", default="1", metavar="N|auto",
                   help="worker processes sharing the listeners, 1-1024 (default 1; auto: one per CPU of --cpu-affinity's"
                        " list, else per CPU this process may run on)")
    p.add_argument("--cpu-affinity", default="none", metavar="none|auto|LIST",
                   help="pin worker i to one CPU: auto (with workers) the i-th this process may run on, or the i-th of"
                        " LIST (0,2-3); none: unpinned (the default)")
    p.add_argument("--accept-by-cpu", action="store_true",
                   help="each pinned worker takes the TCP connections its CPU processed (SO_INCOMING_CPU); for clients"
                        " spread over the CPUs (loopback, RSS/RPS), not for one receive queue on one CPU")
    loops = p.add_mutually_exclusive_group()
    loops.add_argument("--uvloop", action="store_true", help="run on uvloop (if installed) instead of the proxy's own epoll loop")
    loops.add_argument("--no-uvloop", action="store_true", help="the proxy's own epoll loop (the default; kept for scripts)")
    p.add_argument("--no-splice", action="store_true", help="copy through user space instead of splice(2)")
    p.add_argument("--loopback-cc", default="auto", metavar="auto|keep|NAME",
                   help="a TCP leg to this host that carries bulk data and is paced by BBR switches to this congestion"
                        " control (auto: cubic, else reno; keep: the system's choice); BBR's pacing costs a loopback"
                        " stream about a third of its rate and buys nothing there")
    p.add_argument("--relay", choices=("c", "python"), default="auto",
                   help="accept, connect and relay in C (the default where it was built) or in Python")
    p.add_argument("--idle-timeout", type=float, default=300.0, metavar="S", help="close connections idle this long (300)")
    p.add_argument("--connect-timeout", type=float, default=5.0, metavar="S", help="give up connecting to the backend after S (5)")
    p.add_argument("--drain-timeout", type=float, default=10.0, metavar="S", help="on SIGTERM wait this long for connections (10)")
    p.add_argument("--udp-timeout", type=float, default=30.0, metavar="S", help="end a UDP flow idle this long (30)")
    p.add_argument("--name-timeout", type=float, default=2.0, metavar="S", help="host-name lookup timeout (2)")
    p.add_argument("--name-queue", type=int, default=64, metavar="N",
                   help="host-name lookups waiting per service behind the 4 running; beyond, clients are refused (64)")
    p.add_argument("--max-connections", type=int, default=20000, metavar="N", help="connections at once, all services (20000)")
    p.add_argument("--max-connections-per-source", type=int, default=1024, metavar="N",
                   help="connections at once from one address (an IPv6 /64), per service (1024)")
    p.add_argument("--max-udp-flows", type=int, default=4096, metavar="N", help="UDP flows at once, per listener (4096)")
    p.add_argument("--max-udp-flows-per-source", type=int, default=256, metavar="N", help="UDP flows at once from one source (an IPv4 address, an IPv6 /64), per listener (256)")


def _has_policy(args: argparse.Namespace) -> bool:
    return bool(args.policy_files or args.policy or args.hosts_allow or args.hosts_deny)


def _load(args: argparse.Namespace) -> Policy | None:
    return load_from_args(args) if _has_policy(args) else None


def _one_off_service(args: argparse.Namespace, policy: Policy | None) -> Service:
    if policy is None:
        if args.service:
            raise UsageError("--service needs a policy (POLICY, --policy or --hosts-allow/--hosts-deny)")
        return Service(name="proxy", rules=(), default=Action.ALLOW)
    name = args.service
    if name is None:
        names = policy.service_names()
        if len(names) != 1 or policy.rules:
            raise UsageError("say which policy service decides the clients: --service NAME")
        name = names[0]
    return policy.require_service(name)


def plans_from_args(args: argparse.Namespace) -> list[ProxySpec]:
    """What to run, from the command line (and the policy files it names)."""
    policy = _load(args)
    if args.listen or args.forward:
        if not args.forward:
            raise UsageError("--listen needs --forward URL")
        svc = _one_off_service(args, policy)
        one_off = replace(svc, listen=tuple(args.listen), forward=args.forward)
        return [ProxySpec(one_off, parse_urls(args.listen), parse_url(args.forward))]
    if policy is None:
        raise UsageError("give a POLICY whose services have `listen` and `forward`, or --listen URL --forward URL")
    plans = []
    for s in policy.services:
        if s.listen and s.forward:
            plans.append(ProxySpec(s, parse_urls(s.listen), parse_url(s.forward)))
    if not plans:
        raise UsageError("no service in the policy has both `listen` and `forward`")
    return plans


def run(args: argparse.Namespace) -> int:
    # imported when run: building the full parser (`sockgate --help`) imports every command module
    from sockgate.proxy.server import Proxy

    allowed = cpus.allowed()
    pinning = affinity.parse_affinity(args.cpu_affinity)
    args.workers = affinity.parse_workers(args.workers, pinning, allowed)
    per_worker = affinity.worker_cpus(pinning, args.workers, allowed)
    if args.accept_by_cpu and not per_worker:
        raise UsageError("--accept-by-cpu needs pinned workers: more than one with --cpu-affinity auto, or a CPU list")
    for opt in ("max_connections_per_source", "max_udp_flows", "max_udp_flows_per_source"):
        if getattr(args, opt) < 1:
            raise UsageError(f"--{opt.replace('_', '-')} must be at least 1")
    if args.name_queue < 0:
        raise UsageError("--name-queue must be 0 or more")
    if not 0.1 <= args.refusal_interval <= 86400:
        raise UsageError("proxy: --refusal-interval must be between 0.1 and 86400 seconds")
    plans = plans_from_args(args)
    options = ProxySettings(
        idle_timeout=args.idle_timeout,
        connect_timeout=args.connect_timeout,
        drain_timeout=args.drain_timeout,
        udp_idle_timeout=args.udp_timeout,
        name_timeout=args.name_timeout,
        max_connections=args.max_connections,
        max_connections_per_source=args.max_connections_per_source,
        max_udp_flows=args.max_udp_flows,
        max_udp_flows_per_source=args.max_udp_flows_per_source,
        backend=backend_choice(args.backend),
        refusal_interval=args.refusal_interval,
    )
    log = Log(args.log_format, sys.stderr, sink=log_sink(args))
    proxy = Proxy(
        plans,
        options,
        log,
        loader=lambda: plans_from_args(args),
        workers=args.workers,
        cpus=per_worker,
        accept_by_cpu=args.accept_by_cpu,
        reverse_lookup=reverse_lookup(args.name_timeout, args.name_queue),
        use_uvloop=args.uvloop,
        splice=not args.no_splice,
        relay=args.relay,
        loopback_cc=args.loopback_cc,
    )
    return proxy.serve()
