"""``sockgate agent``: the wiring of the watcher, the planner, the applier and the control
socket into one long-running process (a ``supervisor.Lifecycle``).

The sequences, and why each step is where it is (docs/agent.md):

* start — load and compile every service (``desired.build``) and load every program
  (``Applier.load``) before anything else: a policy that fails exits without touching a
  socket. Then the control socket, then the **watcher before the scan** (a bind between the
  scan and the watch would otherwise go unseen; pinned events are simply planned again, the
  plan is idempotent), the full scan, one transaction. Sockets already carrying the wanted
  (service, digest, backend) are adopted untouched: an agent killed and restarted attaches
  nothing.
* events — one socket, found by its cookie in the event's process (``observe.one``), planned
  and applied alone (new sockets are independent; a transaction of one step).
* reload (SIGHUP, ``reload`` request) — all or nothing: a policy that does not load, compile or
  load into the kernel leaves the previous one in force, and says why in the log, the status
  and to systemd. Then a full scan and one transaction over every service.
* bans — the book changes (agent/bansink.py): eBPF services take it in their ban maps in place
  (no compile, no re-attach); classic services are compiled again with their effective bans
  and applied; then the banned sources' established connections are ended.
* timers — the drift sweep (a full scan every ``sweep`` seconds: what the watcher cannot see,
  such as a filter someone removed), due retries, ban expiry.
* stop — the control socket closes, the watcher's pins stay: guards never depend on the agent.

The parts live in their own modules, stacked (``agent/agentstate.py`` says why):
``sweeps`` (scans, events, retries), ``transaction`` (load, compile, swap; the file watch),
``hostnames`` (host names refreshed by TTL), ``banning`` (the ban book, expiry, CrowdSec); this module is the lifecycle, the control socket
and status.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Literal

from sockgate.agent import control as control_mod
from sockgate.agent import bansink, reconcile, statusdoc
from sockgate.agent import watcher as watcher_mod
from sockgate.agent.agentstate import SWEEP, Built, Options, Row, Trigger
from sockgate.agent.superserver import SYSTEMD_UNITS
from sockgate.agent.applier import Applier
from sockgate.agent.banbook import BanBook
from sockgate.agent.banning import Banning
from sockgate.agent.crowdfeed import CrowdsecFeed
from sockgate.agent.forward import NameBook
from sockgate.agent.names import NameResolver
from sockgate.agent.observe import Observer
from sockgate.refusallog import RefusalLogs
from sockgate.agent.protocol import Ban, Bans, Ping, Reload, Request, Response, Status, Unban, failure, ok
from sockgate.agent.transaction import watch_set
from sockgate.bans import NEVER
from sockgate.kernel import Chosen, Kernel
from sockgate.log import Log
from sockgate.linux.signalfd import SigInfo
from sockgate.supervisor import Cancel, Loop, Notifier

__all__ = ["Agent", "Built", "Options", "Row", "SWEEP", "SYSTEMD_UNITS", "Trigger"]
ORIGINS = bansink.ORIGINS


class Agent(Banning):
    drain_timeout: float | None = 0.0

    def __init__(self, opts: Options, kernel: Kernel, applier: Applier, log: Log, notifier: Notifier,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 crowdsec: CrowdsecFeed | None = None, resolver: NameResolver | None = None) -> None:
        self.opts, self.kernel, self.applier, self.log, self.notifier = opts, kernel, applier, log, notifier
        self.crowdsec = crowdsec
        self.clock, self.wall = clock, wall
        self.observer = Observer(kernel, keep=self._wanted, named=self._named)
        self.bans = BanBook()
        self.saver = bansink.StateSaver(log)  # the ban state file (``saver.error``: why not saved)
        self.crowdsec_error: str | None = None
        self.retry = reconcile.RetryBook()
        self.counters: dict[str, int] = {k: 0 for k in statusdoc.COUNTERS}
        self.rows: dict[int, Row] = {}
        self.impostors: dict[int, statusdoc.ImpostorRow] = {}  # by cookie, as the last full scan saw them
        self.namebook = NameBook()
        self.resolver = resolver
        self.asking = set()
        self.names_error = None
        self.superserved = {}  # by cookie, as the last full scan saw them
        self.refusals = None
        self.started = wall()
        self.chosen: Chosen | None = None  # the backend --backend came to, once started
        self.events = 0
        self.last_resync: float | None = None
        self.built: Built | None = None
        self.policy_info: statusdoc.PolicyInfo | None = None
        self.loop: Loop | None = None
        self.watcher: watcher_mod.Watcher | None = None
        self.server: control_mod.ControlServer | None = None
        self.files = None
        self.read_files: tuple[str, ...] = ()  # what the last load asked for
        self.watch_list = None  # and the files and directories it depends on
        self._stops: list[Cancel] = []
        self._timers: dict[str, Cancel] = {}

    # -- Lifecycle -----------------------------------------------------------------------------

    def start(self, loop: Loop) -> None:
        """Everything up to the first transaction; raises (nothing touched) on a bad policy."""
        self.loop = loop
        self.chosen = self.kernel.choose(self.opts.backend)  # probed once; UnsupportedPlatform: nothing touched
        self.log.record("notice", message=self.chosen.describe())
        self.bans = bansink.load_book(self.opts.state)
        self.built = self._build(self.bans)
        self.policy_info = self._policy_info("start", True, None)
        self.server = control_mod.ControlServer(self.opts.control, self.opts.control_group, self._handle)
        self.server.open()
        self._stops.append(control_mod.start(self.server, loop))
        self.watcher = watcher_mod.open_watcher(self.opts.watch, self.opts.cgroup, self._bpffs())
        self.watcher.watch(watch_set(self.built.desired))
        self._stops.append(watcher_mod.start(self.watcher, loop, self._on_events))
        self.log.record("notice", message=f"watching: {self.watcher.reason}")
        self._watch_files(loop)
        self.sweep("start")
        self.refusals = RefusalLogs(loop, self.opts.log_format, self.opts.log_sink, self.opts.refusal_interval,
                                      lambda text: self.log.record("notice", message=text))
        self.refusals.update(self.built.loaded, self.built.resolved)
        self._arm("sweep", self.opts.sweep, self._on_sweep)
        self._arm_expiry()
        self._start_names(loop)
        if self.crowdsec is not None:  # after the guards: the LAPI's state never delays them
            self._stops.append(self.crowdsec.start(loop, self._on_crowdsec))

    def reload(self) -> None:
        self.reload_now("signal")

    def stop(self) -> None:
        self.saver.flush()  # CrowdSec's last changes (saved at most every CROWDSEC_SAVE_S)
        for cancel in (*self._stops, *self._timers.values()):
            cancel()
        self._stops.clear()
        self._timers.clear()
        if self.server is not None:
            self.server.close()
        if self.watcher is not None:
            self.watcher.close(unpin=False)  # the hooks stay, queueing events for the next agent
        if self.files is not None:
            self.files.close()
        if self.refusals is not None:
            self.refusals.close()
        self.log.flush()

    def busy(self) -> bool:
        return False

    def abort(self) -> None:
        pass

    def on_signal(self, info: SigInfo) -> None:
        pass

    def ended(self) -> int | None:
        return None

    # -- control -------------------------------------------------------------------------------

    def _handle(self, req: Request, peer: control_mod.PeerCred) -> Response:
        body = req.body
        match body:
            case Ping():
                return ok(req.id, {"pong": True})
            case Status():
                return ok(req.id, self.status())
            case Reload():
                self.notifier.reloading()
                error = self.reload_now("request")
                self.notifier.ready()
                return failure(req.id, "policy", error) if error else ok(req.id, {"message": "reloaded"})
            case Ban():
                error = self._ban(body)
                return failure(req.id, "usage", error) if error else ok(req.id, {"message": f"banned {body.net}"})
            case Unban():
                book = self.bans.remove(body.net, None if body.origin == "any" else ORIGINS.get(body.origin), body.service)
                if book == self.bans:
                    return ok(req.id, {"message": bansink.not_banned(self.bans, body.net, body.origin)})
                error = self._set_bans(book)
                return failure(req.id, "runtime", error) if error else ok(req.id, {"message": f"unbanned {body.net}"})
            case Bans():
                return ok(req.id, {"bans": self.status()["bans"]})
        return failure(req.id, "usage", "unknown request")

    def status(self) -> dict[str, object]:
        assert self.built is not None and self.policy_info is not None
        w = self.watcher
        mode: Literal["cgroup-bpf", "poll"] = "cgroup-bpf" if w is not None and w.mode == "cgroup-bpf" else "poll"
        backend = self.chosen.name if self.chosen is not None else self.opts.backend  # (the option until start chose)
        agent = statusdoc.AgentInfo(os.getpid(), self.opts.version, self.started, backend, mode, self.opts.control,
                                    self.opts.control_group, getattr(w, "cgroup", None), self.events,
                                    w.lost if w is not None else 0, self.last_resync, dict(self.counters))
        now_ns = time.monotonic_ns()
        now, to_wall = self.clock(), self.wall() - self.clock()
        services = [statusdoc.ServiceRow(s, self.built.desired.loaded_at,
                                         tuple(r.row for r in self.rows.values() if r.service == s.name),
                                         None, len(self._effective(self.bans, s.name, now_ns)),
                                         self.name_rows(s.names, now, to_wall),
                                         bans_in=bansink.bans_in(self.built.loaded.get(s.name)))
                    for s in self.built.desired.services]
        bans = [statusdoc.BanRow(str(e.ban.network), e.ban.origin.name.lower(),
                                 None if e.services is None else tuple(sorted(e.services)),
                                 None if e.ban.expires_ns == NEVER else self.wall() + (e.ban.expires_ns - now_ns) / 1e9,
                                 self.wall() - (now_ns - e.added_ns) / 1e9, e.reason)
                for e in self.bans.entries if e.active(now_ns)]  # (the hosts files' ban lines: PolicyInfo.tool_bans)
        errors = [] if w is None or w.mode == "cgroup-bpf" else [f"watching by polling: {w.reason}"]
        if self.files is not None:
            errors += [f"{d}: not watched for changes: {why}" for d, why in sorted(self.files.problems.items())]
        sources = {} if self.crowdsec is None else {"crowdsec": self.crowdsec.status(bansink.mono_to_wall)}
        errors += ([] if self.crowdsec is None else self.crowdsec.errors()) + ([self.saver.error] if self.saver.error else [])
        errors += [self.names_error] if self.names_error else []
        errors += [self.crowdsec_error] if self.crowdsec_error else []
        errors += [self.refusals.error] if self.refusals is not None and self.refusals.error else []
        errors += [f"ban lines of the hosts files not enforced on {name}: {n} did not fit its classic program (the"
                   " earliest are in force; eBPF holds them all)" for name, n in sorted(self.built.unfit.items())]
        return statusdoc.build(agent, self.policy_info, services, bans, sources, errors, tuple(self.impostors.values()),
                               tuple(self.superserved.values()), self._degraded())

    def _degraded(self) -> list[statusdoc.Degraded]:
        """What is not in force, by kind (``statusdoc.build`` adds a failed reload and names)."""
        kinds: list[statusdoc.Degraded] = []
        kinds += ["crowdsec_lapi"] if self.crowdsec is not None and self.crowdsec.errors() else []
        kinds += ["crowdsec_bans"] if self.crowdsec_error else []
        kinds += ["names"] if self.names_error else []
        kinds += ["state"] if self.saver.error else []
        kinds += ["ban_lines"] if self.built is not None and self.built.unfit else []
        return kinds

    def _bpffs(self) -> str | None:
        return self.opts.bpffs or os.environ.get("SOCKGATE_BPFFS") or None
