"""``sockgate agent``: guard every socket the policy selects, as services come and go (docs/agent.md).

Parses the options into ``runtime.Options``, starts the ``Agent`` under the supervisor (SIGHUP
reloads, TERM/INT stop and leave the guards in the kernel), sends ``READY=1`` with ``--notify``
once the first transaction is in, and runs the loop. A policy that fails at start is a one-line
error (a policy error with its ``file:line:col``) and a non-zero exit; no socket is touched.
"""

from __future__ import annotations

import argparse
import sys

from sockgate import __version__
from sockgate.agent.control import DEFAULT_PATH
from sockgate.agent.crowdfeed import CrowdsecFeed
from sockgate.crowdsec.lapi import LapiClient, read_key
from sockgate.crowdsec.session import Session
from sockgate.cli.common import MAP_HELP, add_backend_arg, add_log_args, add_superserver_args, log_sink, parse_maps, unit_dirs
from sockgate.errors import UsageError
from sockgate.guard import backend_choice, require_kernel
from sockgate.kernel import Kernel, default_kernel
from sockgate.kernel.bpfops import LinuxBpf
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.ebpf import EbpfBackend
from sockgate.kernel.sockets import LINUX_OPS
from sockgate.linux.sockdiag import destroy_tcp
from sockgate.log import Log
from sockgate.supervisor import Notifier, SelectorLoop, Supervisor

def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("policy_files", nargs="*", metavar="POLICY", help="native policy files")
    p.add_argument("--hosts-allow", metavar="PATH", help="a hosts.allow file (hosts_access(5))")
    p.add_argument("--hosts-deny", metavar="PATH", help="a hosts.deny file (hosts_access(5))")
    p.add_argument("--map", action="append", default=[], metavar="DAEMON=PROTO/PORT", help=MAP_HELP)
    add_backend_arg(p)
    p.add_argument("--control", metavar="PATH", default=DEFAULT_PATH, help=f"the control socket (default {DEFAULT_PATH})")
    p.add_argument("--control-group", metavar="GROUP", help="the group that may use the control socket (default: root only)")
    p.add_argument("--notify", action="store_true", help="report READY/RELOADING/STOPPING to $NOTIFY_SOCKET (systemd)")
    add_log_args(p, "log to syslog (daemon facility) instead of stderr")
    p.add_argument("--refusal-interval", type=float, default=60.0, metavar="SECONDS",
                   help="eBPF services: one refusal line per source per SECONDS in the log (default 60)")
    p.add_argument("--keep-established", action="store_true",
                   help="do not end established connections a new or reloaded guard denies (bans still end them)")
    p.add_argument("--watch", choices=("auto", "cgroup-bpf", "poll"), default="auto",
                   help="how new sockets are noticed: cgroup BPF hooks, polling, or the first that works (default)")
    p.add_argument("--cgroup", metavar="PATH", help="watch this cgroup2 directory (default: the cgroup2 root)")
    p.add_argument("--bpffs", metavar="DIR", help="the bpf filesystem for the watch hooks and eBPF guards (default $SOCKGATE_BPFFS, else /sys/fs/bpf for eBPF)")
    p.add_argument("--state", metavar="PATH",
                   help="keep the bans in this file, so they outlive the agent (the unit: /var/lib/sockgate/bans.json)")
    p.add_argument("--sweep", type=float, default=300.0, metavar="SECONDS", help="full rescan interval (default 300)")
    add_superserver_args(p, "the ports it listens on for daemons hosts.allow names")
    p.add_argument("--resolv-conf", metavar="PATH", default="/etc/resolv.conf",
                   help="the resolver configuration for host names in rules (default /etc/resolv.conf)")
    p.add_argument("--hosts-file", metavar="PATH", default="/etc/hosts",
                   help="the hosts file asked before DNS for host names in rules (default /etc/hosts)")
    p.add_argument("--crowdsec", metavar="URL", help="enforce the decisions of this CrowdSec LAPI (http(s)://host:port)")
    p.add_argument("--crowdsec-key-file", metavar="PATH", help="the bouncer's API key (cscli bouncers add NAME -o raw)")
    p.add_argument("--crowdsec-interval", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between pulls of the decision stream (default 10)")
    p.add_argument("--crowdsec-resync", type=float, default=3600.0, metavar="SECONDS",
                   help="seconds between full pulls of every decision, which repair any delta missed (default 3600)")
    p.add_argument("--crowdsec-ca-file", metavar="PATH", help="the CA that signed an https LAPI's certificate")
    p.add_argument("--crowdsec-exempt", action="append", default=[], metavar="SERVICE",
                   help="a service CrowdSec's decisions do not apply to (repeatable)")


def crowdsec_feed(args: argparse.Namespace) -> CrowdsecFeed | None:
    """The CrowdSec bouncer the options ask for (the key read now: a bad one stops the start)."""
    given = [o for o, v in (("--crowdsec-key-file", args.crowdsec_key_file), ("--crowdsec-ca-file", args.crowdsec_ca_file),
                            ("--crowdsec-exempt", args.crowdsec_exempt)) if v]
    if args.crowdsec is None:
        if given:
            raise UsageError(f"agent: {given[0]} is for --crowdsec URL")
        return None
    if args.crowdsec_key_file is None:
        raise UsageError("agent: --crowdsec needs --crowdsec-key-file PATH (cscli bouncers add NAME -o raw > PATH)")
    if not 0.1 <= args.crowdsec_interval <= 86400:
        raise UsageError("agent: --crowdsec-interval must be between 0.1 and 86400 seconds")
    if not 1 <= args.crowdsec_resync <= 7 * 86400:
        raise UsageError("agent: --crowdsec-resync must be between 1 and 604800 seconds")
    client = LapiClient(args.crowdsec, read_key(args.crowdsec_key_file), ca_file=args.crowdsec_ca_file)
    return CrowdsecFeed(client, Session(interval_s=args.crowdsec_interval, resync_s=args.crowdsec_resync), tuple(args.crowdsec_exempt))


def run(args: argparse.Namespace) -> int:
    # The agent's own modules (about 100 ms of imports) load only when it runs: building the
    # full parser (`sockgate --help`, `--version`) imports every command module.
    from sockgate.agent.applier import Applier
    from sockgate.agent.names import NameResolver
    from sockgate.agent.runtime import Agent, Options

    if not args.policy_files and args.hosts_allow is None and args.hosts_deny is None:
        raise UsageError("agent: no policy: give POLICY files or --hosts-allow/--hosts-deny")
    if not 0.1 <= args.refusal_interval <= 86400:
        raise UsageError("agent: --refusal-interval must be between 0.1 and 86400 seconds")
    if args.sweep <= 0:
        raise UsageError("agent: --sweep must be more than 0 seconds")
    crowdsec = crowdsec_feed(args)
    require_kernel()
    opts = Options(tuple(args.policy_files), args.hosts_allow, args.hosts_deny, parse_maps(args.map),
                   backend_choice(args.backend), args.control, args.control_group, args.keep_established,
                   args.watch, args.cgroup, args.bpffs, args.sweep, __version__, args.state,
                   tuple(args.crowdsec_exempt), xinetd_conf=args.xinetd_conf, inetd_conf=args.inetd_conf,
                   systemd_units=unit_dirs(args),
                   log_format=args.log_format, log_sink=log_sink(args), refusal_interval=args.refusal_interval)
    log = Log(args.log_format, sys.stderr, sink=log_sink(args), ident="sockgate-agent")

    def say(text: str) -> None:
        log.record("error", message=text)
        log.flush()

    notifier = Notifier(args.notify, say)
    kernel = default_kernel() if args.bpffs is None else Kernel(
        [ClassicBackend(LINUX_OPS), EbpfBackend(LinuxBpf(), args.bpffs)], LINUX_OPS)  # eBPF guards pinned there too
    resolver = NameResolver(args.resolv_conf, args.hosts_file)
    agent = Agent(opts, kernel, Applier(kernel, destroy_tcp), log, notifier, crowdsec=crowdsec, resolver=resolver)
    sup = Supervisor(agent, notifier)
    loop = SelectorLoop()
    try:
        sup.start(loop)  # signals first: a SIGHUP while starting waits, it does not kill
        agent.start(loop)
        sup.ready()
        notifier.status(agent.summary())
        loop.run()
        return sup.status or 0
    finally:
        if sup.status is None:
            agent.stop()
        sup.close()
        loop.close()
        log.close()
