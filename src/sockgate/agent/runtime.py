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

Hooks for what plugs in later: ``Agent.reload_now(trigger)`` is what a file watcher calls
(trigger ``file``); forward host names enter through ``Agent.names`` (service → names, shown in
status) and a substitution of their answers before ``_build`` compiles.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Container, Literal, Mapping

from sockgate.agent import control as control_mod
from sockgate.agent import bansink, reconcile, statusdoc, toolbans
from sockgate.agent import watcher as watcher_mod
from sockgate.agent.applier import Applier, Outcome
from sockgate.agent.banbook import BanBook
from sockgate.agent.crowdfeed import CrowdsecFeed
from sockgate.agent.desired import Desired, build
from sockgate.agent.enrol import impostor_of, select
from sockgate.agent.files import FileWatcher, WatchingReader, WatchList
from sockgate.agent.model import Endpoint, Observed, SocketEvent, Want
from sockgate.agent.observe import AllPorts, Look, Observer, describe
from sockgate.agent.protocol import Ban, Bans, Ping, Reload, Request, Response, Status, Unban, failure, ok, one_line
from sockgate.bans import NEVER, BannedPrefix, Origin
from sockgate.ebpf.watch import WatchSet
from sockgate.errors import PolicyError, SockgateError
from sockgate.kernel import BackendChoice, Kernel
from sockgate.kernel.backend import Compiled, Loaded
from sockgate.loading import load_policy
from sockgate.log import Log
from sockgate.crowdsec.stream import Report
from sockgate.policy.ir import IPNetwork, Policy
from sockgate.resolve import named_daemons, resolve
from sockgate.resolve.model import ResolvedService
from sockgate.linux import procfs
from sockgate.linux.signalfd import SigInfo
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


@dataclass(frozen=True)
class Built:
    """One policy compiled and loaded, every service of it: what a reload swaps in whole."""

    policy: Policy
    desired: Desired
    resolved: Mapping[str, ResolvedService]
    loaded: Mapping[str, Loaded]


@dataclass(frozen=True)
class Row:
    service: str
    row: statusdoc.SocketRow


class Agent:
    drain_timeout: float | None = 0.0

    def __init__(self, opts: Options, kernel: Kernel, applier: Applier, log: Log, notifier: Notifier,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 crowdsec: CrowdsecFeed | None = None) -> None:
        self.opts, self.kernel, self.applier, self.log, self.notifier = opts, kernel, applier, log, notifier
        self.crowdsec = crowdsec
        self.clock, self.wall = clock, wall
        self.observer = Observer(kernel, keep=self._wanted)
        self.bans: BanBook[BannedPrefix] = BanBook()
        self.saver = bansink.StateSaver(log)  # the ban state file (``saver.error``: why not saved)
        self.retry = reconcile.RetryBook()
        self.counters: dict[str, int] = {k: 0 for k in statusdoc.COUNTERS}
        self.rows: dict[int, Row] = {}
        self.impostors: dict[int, statusdoc.ImpostorRow] = {}  # by cookie, as the last full scan saw them
        self.names: Mapping[str, tuple[str, ...]] = {}
        self.started = wall()
        self.events = 0
        self.last_resync: float | None = None
        self.built: Built | None = None
        self.policy_info: statusdoc.PolicyInfo | None = None
        self.loop: Loop | None = None
        self.watcher: watcher_mod.Watcher | None = None
        self.server: control_mod.ControlServer | None = None
        self.files: FileWatcher | None = None
        self.read_files: tuple[str, ...] = ()  # what the last load asked for
        self.watch_list: WatchList | None = None  # and the files and directories it depends on
        self._stops: list[Cancel] = []
        self._timers: dict[str, Cancel] = {}

    # -- Lifecycle -----------------------------------------------------------------------------

    def start(self, loop: Loop) -> None:
        """Everything up to the first transaction; raises (nothing touched) on a bad policy."""
        self.loop = loop
        self.bans = bansink.load_book(self.opts.state)
        self.built = self._build(self.bans)
        self.policy_info = self._policy_info("start", True, None)
        self.server = control_mod.ControlServer(self.opts.control, self.opts.control_group, self._handle)
        self.server.open()
        self._stops.append(control_mod.start(self.server, loop))
        self.watcher = watcher_mod.open_watcher(self.opts.watch, self.opts.cgroup, self._bpffs())
        self.watcher.watch(self._watch_set(self.built.desired))
        self._stops.append(watcher_mod.start(self.watcher, loop, self._on_events))
        self.log.record("notice", message=f"watching: {self.watcher.reason}")
        self._watch_files(loop)
        self.sweep("start")
        self._arm("sweep", self.opts.sweep, self._on_sweep)
        self._arm_expiry()
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
        self.log.flush()

    def busy(self) -> bool:
        return False

    def abort(self) -> None:
        pass

    def on_signal(self, info: SigInfo) -> None:
        pass

    def ended(self) -> int | None:
        return None

    # -- policy --------------------------------------------------------------------------------

    def _build(self, bans: BanBook[BannedPrefix], policy: Policy | None = None,
               keep: Mapping[str, Loaded] | None = None) -> Built:
        """Read (unless ``policy`` is given), compile and load everything (but the programs
        ``keep`` names, loaded as they are), bring the eBPF ban maps to ``bans``, or raise."""
        if policy is None:
            reader = WatchingReader()
            try:
                policy = load_policy(list(self.opts.files), self.opts.hosts_allow, self.opts.hosts_deny,
                                     reader=reader, listdir=reader.listdir)
            finally:  # a failed load is watched too: fixing the file is the next reload
                self.read_files = tuple(dict.fromkeys(reader.asked))
                self.watch_list = reader.watch_list()
                if self.files is not None:
                    self.files.swap(self.watch_list)
        now_ns = time.monotonic_ns()
        resolved: dict[str, ResolvedService] = {}
        compiled: dict[str, Compiled] = {}
        kept = dict(keep or {})

        def compile_one(name: str) -> Compiled:
            resolved[name] = r = resolve(policy, name)
            if name in kept:
                return kept[name].compiled
            compiled[name] = c = bansink.compile_for(self.kernel, r, self._effective(bans, name, now_ns), self.opts.backend)
            return c

        desired = build(policy, named_daemons(policy), self.opts.maps, compile_one, self.wall(), names=self.names)
        loaded = {**{n: p for n, p in kept.items() if desired.service(n) is not None}, **self.applier.load(compiled)}
        bansink.push(self.kernel, loaded, lambda n: self._effective(bans, n, now_ns))
        return Built(policy, desired, resolved, loaded)

    def reload_now(self, trigger: Trigger) -> str | None:
        """Load the policy again, all or nothing; the error (one line) when the old one stays."""
        try:
            built = self._build(self.bans)
        except SockgateError as e:
            why = _why(e)
            self.policy_info = self._policy_info(trigger, False, why)
            self.log.record("error", message=f"reload failed, the previous policy stays in force: {why}")
            self.notifier.status(one_line(f"reload failed: {why}"))
            self.log.flush()
            return why
        self._swap(built, trigger)
        self.policy_info = self._policy_info(trigger, True, None)
        self.notifier.status(self.summary())
        self.log.record("notice", message=f"policy loaded ({trigger}): {len(built.desired.services)} services")
        return None

    def _swap(self, built: Built, trigger: Trigger) -> None:
        old = self.built
        self.built = built
        retired = () if old is None else tuple(s.name for s in old.desired.services
                                                if built.desired.service(s.name) is None)
        if self.watcher is not None:
            self.watcher.watch(self._watch_set(built.desired))
        self.sweep(trigger, retired)

    def _policy_info(self, trigger: Trigger, ok_: bool, error: str | None) -> statusdoc.PolicyInfo:
        assert self.built is not None
        prev = self.policy_info
        loaded = self.built.desired.loaded_at if ok_ or prev is None else prev.loaded
        files = self.read_files or tuple(f for f in (*self.opts.files, self.opts.hosts_allow, self.opts.hosts_deny) if f)
        bans = toolbans.rows(self.built.policy, self.opts.hosts_allow, self.opts.hosts_deny, loaded)  # sshguard's, DenyHosts'
        return statusdoc.PolicyInfo(self.built.desired.policy_digest, loaded, files, self.wall(), ok_, trigger, error, bans)

    # -- scanning and applying -----------------------------------------------------------------

    def _wanted(self, sock: Observed) -> bool:
        """Selected, or guarded by us (to detach it); an impostor's is noted for status only."""
        if self.built is not None and (fake := impostor_of(self.built.desired, sock)) is not None:
            self.impostors[sock.cookie] = statusdoc.ImpostorRow(fake, sock)
        return self.built is not None and (select(self.built.desired, sock) is not None or sock.cookie in self.rows)

    def _ports(self) -> Container[int]:
        assert self.built is not None
        d = self.built.desired
        if any(s.selector.daemon is not None for s in d.services):
            return AllPorts()
        # and the ports of what this agent guards: a service a reload dropped is detached there
        return {p for _, p in d.watch_sets()[0]} | {r.row.sock.port for r in self.rows.values()}

    def sweep(self, trigger: Trigger | Literal["sweep", "retry", "resync"], retired: tuple[str, ...] = (),
              only: frozenset[int] | None = None) -> None:
        """A full scan (of ``only``'s cookies when given) planned and applied in one transaction."""
        self.impostors = {} if only is None else self.impostors
        with self.observer.scan(self._ports(), only) as look:
            self._cycle(look, full=only is None, retired=retired, trigger=trigger)
            unseen = set() if only is None else only - set(look.held)
        if unseen:  # not seen by this scan (another namespace, or closed: the next full sweep tells)
            now = self.clock()
            for cookie in unseen:
                a = self.retry.entries.get(cookie)
                if a is not None:
                    self.retry = self.retry.failed(cookie, a.kind, a.reason, now, a.tried)
            self._arm_retry()

    def _cycle(self, look: Look, full: bool, retired: tuple[str, ...] = (), trigger: str = "event") -> None:
        assert self.built is not None
        built = self.built
        now = self.clock()
        plan = reconcile.plan(built.desired, look.observed, self.retry, now, retired)
        outcome = self.applier.apply(plan, built.loaded, look.held)
        retry = plan.retry
        for change, kind, reason in outcome.failed:
            retry = retry.failed(change.cookie, kind, reason, now, change)
            self.log.record("error", message=f"not guarded: {describe(look.held[change.cookie].observed)}: {reason}")
        for cookie, _ in outcome.applied:
            retry = retry.succeeded(cookie)
        self.retry = retry.forget(look.held) if full else retry
        self._count(plan, outcome)
        self._record(look, plan, outcome, full)
        self._end_denied(look, outcome, trigger)
        self._arm_retry()
        self.log.flush()

    def _count(self, plan: reconcile.Plan, outcome: Outcome) -> None:
        for cookie in plan.adopted:
            if cookie not in self.rows:
                self.counters["adopted"] += 1
        for _, kind in outcome.applied:
            key = {"attach": "attached", "reload": "reloaded", "replace": "replaced", "detach": "detached"}[kind]
            self.counters[key] += 1

    def _record(self, look: Look, plan: reconcile.Plan, outcome: Outcome, full: bool) -> None:
        assert self.built is not None
        applied = dict(outcome.applied)
        adopted = set(plan.adopted)
        now_wall = self.wall()
        if full:  # (a scan sees this namespace only: another's sockets leave by their close event)
            ours = (0, procfs.netns_of(os.getpid()))
            for gone in [c for c, r in self.rows.items() if c not in look.held and r.row.sock.netns in ours]:
                self._forget(gone)
        for cookie, h in look.held.items():
            sel = select(self.built.desired, h.observed)
            if not isinstance(sel, Want):
                self._forget(cookie)
                continue
            before = self.rows.get(cookie)
            u = self.retry.unguarded(cookie)
            if u is not None:
                state: statusdoc.SocketState = "retrying" if u.retry_at is not None else "unguarded"
                retry_at = None if u.retry_at is None else now_wall + (u.retry_at - self.clock())
                row = statusdoc.SocketRow(h.observed, state, None, u.reason, u.attempts, retry_at)
            elif cookie in applied:
                row = statusdoc.SocketRow(h.observed, "guarded", now_wall)
                self.log.record("notice", message=f"{applied[cookie]}: {describe(h.observed)} for {sel.service}")
            elif cookie in adopted:
                kept = before is not None and before.row.state in ("guarded", "adopted")
                row = replace(before.row, sock=h.observed) if kept and before else statusdoc.SocketRow(h.observed, "adopted", now_wall)
            else:
                continue
            self.rows[cookie] = Row(sel.service, row)
            if self.watcher is not None and row.state in ("guarded", "adopted"):
                self.watcher.track(cookie, h.observed.port)

    def _forget(self, cookie: int) -> None:
        if self.rows.pop(cookie, None) is not None and self.watcher is not None:
            self.watcher.untrack(cookie)

    def _end_denied(self, look: Look, outcome: Outcome, trigger: str) -> None:
        """Established connections the new guards deny (unless --keep-established)."""
        if self.opts.keep_established or self.built is None:
            return
        by_service: dict[str, list[Observed]] = {}
        for cookie, kind in outcome.applied:
            row = self.rows.get(cookie)
            if kind != "detach" and row is not None:
                by_service.setdefault(row.service, []).append(look.held[cookie].observed)
        now_ns = time.monotonic_ns()
        for name, socks in by_service.items():
            r = self.built.resolved.get(name)
            if r is None:
                continue
            try:
                n = self.applier.end_denied(socks, r, [b.network for b in self._effective(self.bans, name, now_ns)])
            except SockgateError as e:
                self.log.record("error", message=f"could not end denied connections of {name}: {e}")
                continue
            if n:
                self.counters["destroyed"] += n
                self.log.record("notice", message=f"ended {n} established connection(s) {name} denies ({trigger})")

    # -- events and timers ---------------------------------------------------------------------

    def _on_events(self, events: list[SocketEvent]) -> None:
        self.events += len(events)
        if any(e.kind in ("resync", "lost") for e in events):
            self.last_resync = self.wall()
            self.sweep("resync")
            return
        seen: set[int] = set()
        for ev in events:
            if ev.kind == "release":
                self._forget(ev.cookie)
                self.retry = self.retry.succeeded(ev.cookie)
            elif ev.is_socket and ev.cookie not in seen:
                seen.add(ev.cookie)
                try:
                    with self.observer.one(ev) as look:
                        self._cycle(look, full=False)
                except SockgateError as e:
                    self.log.record("error", message=f"{ev.proto}/{ev.port} (pid {ev.pid}): {e}; rescanning")
                    self.sweep("resync")

    def _watch_files(self, loop: Loop) -> None:
        """Reload when a file the policy was read from changes (debounced: agent/files.py)."""
        self.files = FileWatcher()
        if self.watch_list is not None:
            self.files.swap(self.watch_list)
        fd = self.files.fileno()
        loop.watch(fd, self._on_files)
        self._stops.append(lambda: loop.unwatch(fd))

    def _on_files(self) -> None:
        if self.files is not None and self.files.readable(self.clock()):
            self._arm_files()

    def _arm_files(self) -> None:
        at = None if self.files is None else self.files.fire_at()
        if at is not None:
            self._arm("files", at - self.clock(), self._on_files_due)

    def _on_files_due(self) -> None:
        self._timers.pop("files", None)
        if self.files is None:
            return
        if self.files.due(self.clock()):
            self.notifier.reloading()
            self.reload_now("file")
            self.notifier.ready()
        else:
            self._arm_files()

    def _arm(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old()
        if self.loop is not None:
            self._timers[name] = self.loop.call_later(max(delay, 0.0), callback)

    def _on_sweep(self) -> None:
        self._timers.pop("sweep", None)
        self._arm("sweep", self.opts.sweep, self._on_sweep)
        self._guarded(lambda: self.sweep("sweep"))

    def _arm_retry(self) -> None:
        wake = self.retry.next_wake()
        if wake is None:
            old = self._timers.pop("retry", None)
            if old is not None:
                old()
            return
        self._arm("retry", wake - self.clock(), self._on_retry)

    def _on_retry(self) -> None:
        self._timers.pop("retry", None)
        due = self.retry.due(self.clock())
        self._guarded(lambda: self.sweep("retry", only=due) if due else self._arm_retry())

    def _arm_expiry(self) -> None:
        end = self.bans.next_expiry()
        if end is not None:
            self._arm("bans", (end - time.monotonic_ns()) / 1e9 + 0.01, self._on_expiry)

    def _on_expiry(self) -> None:
        self._timers.pop("bans", None)
        self._guarded(lambda: self._expire())

    def _expire(self) -> None:
        error = self._set_bans(self.bans.expire(time.monotonic_ns()))
        if error is not None:
            self.log.record("error", message=f"lifting expired bans: {error}")

    def _guarded(self, work: Callable[[], None]) -> None:
        """A timer's work: a failure is logged, never the end of the agent."""
        try:
            work()
        except SockgateError as e:
            self.log.record("error", message=str(e))
            self.log.flush()

    # -- bans ----------------------------------------------------------------------------------

    def _set_bans(self, book: BanBook[BannedPrefix], save_within: float = 0.0) -> str | None:
        """``book`` in force: eBPF services' maps in place, classic services compiled again
        and applied (bansink.py); the error when nothing changed. Saved within ``save_within`` s."""
        assert self.built is not None
        old = self.built
        now_ns = time.monotonic_ns()
        try:
            if bansink.needs_program(old.loaded):
                maps = {n: p for n, p in old.loaded.items() if bansink.bans_in(p) == "maps"}
                built = self._build(book, old.policy, keep=maps)
            else:
                bansink.push(self.kernel, old.loaded, lambda n: self._effective(book, n, now_ns))
                built = old
        except SockgateError as e:
            return _why(e)
        self.bans = book
        if built is not old:
            self._swap(built, "bans")
        self._arm_expiry()
        self.saver.save(self.opts.state, book, self.loop, save_within)
        return None

    def _ban(self, body: Ban) -> str | None:
        assert self.built is not None
        if body.service is not None and self.built.desired.service(body.service) is None:
            return f"no service {body.service} in the agent's policy"
        error = self._set_bans(self.bans.add(bansink.entry(body.net, body.seconds, body.origin, body.service,
                                                            body.reason, time.monotonic_ns())))
        if error is None:
            self._end_banned([body.net], body.service)
        return error

    def _effective(self, book: BanBook[BannedPrefix], service: str, now_ns: int) -> tuple[BannedPrefix, ...]:
        """``service``'s bans: the book's, but CrowdSec's where ``--crowdsec-exempt`` names it."""
        exempt = (Origin.CROWDSEC,) if service in self.opts.crowdsec_exempt else ()
        return book.effective(service, now_ns, exempt)

    def _on_crowdsec(self, report: Report) -> None:
        """A pull that changed CrowdSec's bans: the origin's entries replaced by the decisions
        held, in force on every service but the exempt ones, their connections ended."""
        if not (report.changed or report.startup) or self.crowdsec is None:
            return
        book, new = self.crowdsec.book(self.bans, report, time.monotonic_ns())
        error = None if book == self.bans else self._set_bans(book, bansink.CROWDSEC_SAVE_S)
        if error is not None:
            self.log.record("error", message=f"CrowdSec decisions not applied, the previous bans stay: {error}")
        elif new:
            self._end_banned(new, lambda s: s not in self.opts.crowdsec_exempt)
        self.log.flush()

    def _end_banned(self, nets: list[IPNetwork], service: str | None | Callable[[str], bool]) -> None:
        wanted = service if callable(service) else (lambda s: service is None or s == service)
        socks = [r.row.sock for r in self.rows.values() if wanted(r.service)]
        try:
            n = self.applier.end_banned(socks, nets)
        except SockgateError as e:
            self.log.record("error", message=f"could not end the banned source's connections: {e}")
            return
        self.counters["destroyed"] += n

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
                book = self.bans.remove(body.net, None if body.origin == "any" else bansink.ORIGINS.get(body.origin), body.service)
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
        agent = statusdoc.AgentInfo(os.getpid(), self.opts.version, self.started, self.opts.backend, mode, self.opts.control,
                                    self.opts.control_group, getattr(w, "cgroup", None), self.events,
                                    w.lost if w is not None else 0, self.last_resync, dict(self.counters))
        now_ns = time.monotonic_ns()
        services = [statusdoc.ServiceRow(s, self.built.desired.loaded_at,
                                         tuple(r.row for r in self.rows.values() if r.service == s.name),
                                         None, len(self._effective(self.bans, s.name, now_ns)),
                                         bans_in=bansink.bans_in(self.built.loaded.get(s.name)))
                    for s in self.built.desired.services]
        bans = [statusdoc.BanRow(str(e.ban.network), e.ban.origin.name.lower(),
                                 None if e.services is None else tuple(sorted(e.services)),
                                 None if e.ban.expires_ns == NEVER else self.wall() + (e.ban.expires_ns - now_ns) / 1e9,
                                 self.wall() - (now_ns - e.added_ns) / 1e9, e.reason)
                for e in self.bans.entries if e.active(now_ns)]
        errors = [] if w is None or w.mode == "cgroup-bpf" else [f"watching by polling: {w.reason}"]
        if self.files is not None:
            errors += [f"{d}: not watched for changes: {why}" for d, why in sorted(self.files.problems.items())]
        sources = {} if self.crowdsec is None else {"crowdsec": self.crowdsec.status(bansink.mono_to_wall)}
        errors += ([] if self.crowdsec is None else self.crowdsec.errors()) + ([self.saver.error] if self.saver.error else [])
        return statusdoc.build(agent, self.policy_info, services, bans, sources, errors, tuple(self.impostors.values()))

    # -- helpers -------------------------------------------------------------------------------

    def _watch_set(self, d: Desired) -> WatchSet:
        ports, comms = d.watch_sets()
        return WatchSet.of(ports, comms)

    def _bpffs(self) -> str | None:
        return self.opts.bpffs or os.environ.get("SOCKGATE_BPFFS") or None

    def summary(self) -> str:
        bad = sum(1 for r in self.rows.values() if r.row.state in ("unguarded", "retrying"))
        n = 0 if self.built is None else len(self.built.desired.services)
        return f"{n} services, {len(self.rows)} sockets, {bad} unguarded"


def _why(e: SockgateError) -> str:
    if isinstance(e, PolicyError):
        return one_line(e.render(caret=False).replace("\n", "; "))
    return one_line(str(e))
