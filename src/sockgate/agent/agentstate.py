"""The agent's options, the state its parts share, and the timer helper they all use.

``runtime.Agent`` is one object (a ``supervisor.Lifecycle``) but its work falls into parts that
each read and change the same few fields — the policy in force (``built``), the socket rows,
the retry book, the ban book. Each part is a module with one class, stacked in the order they
call each other: ``sweeps.Sweeps`` (scans, events, retries) on this base,
``transaction.Transactions`` (load, compile, swap all or nothing, then a sweep; the file watch) on it,
``hostnames.HostNames`` (host-name answers refreshed, their services recompiled) on that,
``banning.Banning`` (the ban book, expiry, CrowdSec; a ban may be a transaction) on that, and
``runtime.Agent`` (the lifecycle, the control socket, status) last. This base declares the
shared state once, so every part is type-checked against the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

from sockgate.agent import control as control_mod
from sockgate.agent import bansink, reconcile, statusdoc
from sockgate.agent import watcher as watcher_mod
from sockgate.agent.applier import Applier
from sockgate.agent.banbook import BanBook, BanEntry
from sockgate.agent.crowdfeed import CrowdsecFeed
from sockgate.agent.desired import Desired
from sockgate.agent.files import FileWatcher, WatchList
from sockgate.agent.forward import NameBook
from sockgate.agent.model import Endpoint
from sockgate.agent.names import NameResolver
from sockgate.agent.observe import Observer
from sockgate.agent.superserver import SYSTEMD_UNITS, Launch
from sockgate.bans import BannedPrefix, Origin
from sockgate.errors import SockgateError
from sockgate.kernel import BackendChoice, Kernel
from sockgate.kernel.backend import Loaded
from sockgate.loading import LOGIN_DEFS
from sockgate.log import Log, LogFormat, LogSink
from sockgate.policy.forward import Lookup
from sockgate.policy.ir import Policy
from sockgate.refusallog import DEFAULT_INTERVAL, RefusalLogs
from sockgate.resolve.model import ResolvedService
from sockgate.supervisor import Cancel, Loop, Notifier

SWEEP = 300.0
Trigger = Literal["start", "signal", "file", "request", "names", "bans"]


@dataclass(frozen=True)
class Options:
    files: tuple[str, ...] = ()
    hosts_allow: str | None = None
    hosts_deny: str | None = None
    maps: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    backend: BackendChoice = "auto"
    control: str = control_mod.DEFAULT_PATH
    control_group: str | None = None
    keep_established: bool = False
    watch: Literal["auto", "cgroup-bpf", "poll"] = "auto"
    cgroup: str | None = None
    bpffs: str | None = None
    sweep: float = SWEEP
    version: str = ""  # for status (the package's, from the command line)
    state: str | None = None  # the ban state file (bans outlive the agent); None: kept in memory only
    crowdsec_exempt: tuple[str, ...] = ()  # services CrowdSec's decisions do not apply to
    xinetd_conf: str | None = "/etc/xinetd.conf"  # super-servers' configurations (agent/superserver.py)
    inetd_conf: str | None = "/etc/inetd.conf"
    systemd_units: tuple[str, ...] = SYSTEMD_UNITS  # the unit directories, in systemd's order
    services_file: str = "/etc/services"
    login_defs: str | None = LOGIN_DEFS  # its SYS_UID_MAX: who is a system account (enrol.plausible)
    log_format: LogFormat = "text"  # the refusal log of the eBPF services (refusallog.RefusalLogs)
    log_sink: LogSink = "stderr"
    refusal_interval: float = DEFAULT_INTERVAL  # seconds: one line per refused source per interval


@dataclass(frozen=True)
class Built:
    """One policy compiled and loaded, every service of it: what a reload swaps in whole."""

    policy: Policy
    desired: Desired
    resolved: Mapping[str, ResolvedService]
    loaded: Mapping[str, Loaded]
    answers: Mapping[str, Lookup] = field(default_factory=dict)  # the host-name answers compiled in
    launches: tuple[Launch, ...] = ()  # the daemons super-servers start (agent/superserver.py), as read with it
    tools: tuple[BanEntry[BannedPrefix], ...] = ()  # the hosts files' ban lines, as bans (agent/toolbans.py)
    unfit: Mapping[str, int] = field(default_factory=dict)  # classic service → its ban lines that did not fit


@dataclass(frozen=True)
class Row:
    service: str
    row: statusdoc.SocketRow


class AgentState:
    """The fields every part of the agent reads (set up by ``runtime.Agent.__init__``)."""

    opts: Options
    kernel: Kernel
    applier: Applier
    log: Log
    notifier: Notifier
    crowdsec: CrowdsecFeed | None
    clock: Callable[[], float]
    wall: Callable[[], float]
    observer: Observer
    bans: BanBook[BannedPrefix]
    saver: bansink.StateSaver  # the ban state file (``saver.error``: why the last save failed)
    crowdsec_error: str | None  # why CrowdSec's decisions held are not all in force (retried at each pull)
    retry: reconcile.RetryBook
    counters: dict[str, int]
    rows: dict[int, Row]
    impostors: dict[int, statusdoc.ImpostorRow]
    namebook: NameBook  # the host-name answers (agent/forward.py)
    resolver: NameResolver | None  # None: no lookups, every name fails (closed)
    asking: set[str]  # names the resolver's worker is looking up
    names_error: str | None  # why the last refresh of changed names could not be applied
    superserved: dict[int, statusdoc.SuperservedRow]  # listeners of super-servers for unknown daemons
    refusals: RefusalLogs | None  # the refusal log (None until start)
    events: int
    last_resync: float | None
    built: Built | None
    policy_info: statusdoc.PolicyInfo | None
    loop: Loop | None
    watcher: watcher_mod.Watcher | None
    files: FileWatcher | None
    read_files: tuple[str, ...]
    watch_list: WatchList | None
    _stops: list[Cancel]
    _timers: dict[str, Cancel]

    def _arm(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        """Timer ``name`` (one of each) to fire ``callback`` after ``delay`` seconds."""
        self._disarm(name)
        if self.loop is not None:
            self._timers[name] = self.loop.call_later(max(delay, 0.0), callback)

    def _disarm(self, name: str) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old()

    def _guarded(self, work: Callable[[], None]) -> None:
        """A timer's work: a failure is logged, never the end of the agent."""
        try:
            work()
        except SockgateError as e:
            self.log.record("error", message=str(e))
            self.log.flush()

    def _effective(self, book: BanBook[BannedPrefix], service: str, now_ns: int,
                   tools: Sequence[BanEntry[BannedPrefix]] | None = None) -> tuple[BannedPrefix, ...]:
        """``service``'s bans: the book's, but CrowdSec's where ``--crowdsec-exempt`` names it,
        and the ban lines of the hosts files (``tools``; by default those of the policy in
        force: ``Built.tools``)."""
        exempt = (Origin.CROWDSEC,) if service in self.opts.crowdsec_exempt else ()
        if tools is None:
            tools = self.built.tools if self.built is not None else ()
        if tools:
            book = BanBook((*book.entries, *tools))
        return book.effective(service, now_ns, exempt)
