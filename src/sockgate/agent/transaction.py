"""Loading a policy into the agent, all or nothing: read, compile and load every service, then
swap the whole of it in and sweep once.

``_build`` reads the policy (unless given one), compiles each service with its effective bans
and loads every program into the kernel — raising, with nothing swapped, at the first thing
that fails. ``reload_now`` is the one way in for every trigger (SIGHUP, the ``reload``
request, a changed file): a policy that fails leaves the previous ``Built`` in force and says
why in the log, the status and to systemd. ``_swap`` puts a good one in force: the watcher's
filter, then one sweep over every service, naming the services the new policy dropped (their
sockets are detached).

The files the policy was read from are watched (``agent/files.py``: inotify, debounced); a
change is a reload with trigger ``file``.
"""

from __future__ import annotations

import time
from typing import Mapping

from sockgate.agent import bansink, statusdoc, toolbans
from sockgate.agent.agentstate import Built, Trigger
from sockgate.agent.banbook import BanBook
from sockgate.agent.desired import Desired, build
from sockgate.agent.files import FileWatcher, WatchingReader
from sockgate.agent.protocol import one_line
from sockgate.agent.enrol import daemon_names
from sockgate.agent.launchfiles import read_launches
from sockgate.agent.superserver import Launch, launches_for
from sockgate.agent.sweeps import Sweeps
from sockgate.bans import BannedPrefix
from sockgate.ebpf.watch import WatchSet
from sockgate.errors import PolicyError, SockgateError
from sockgate.kernel.backend import Compiled, Loaded
from sockgate.loading import load_policy
from sockgate.policy.forward import Lookup, admitted, forward_names, matched, rule_names, substitute
from sockgate.policy.ir import IPAddress, Policy
from sockgate.resolve import named_daemons, resolve
from sockgate.resolve.model import ResolvedService
from sockgate.supervisor import Loop


class Transactions(Sweeps):
    def _build(self, bans: BanBook[BannedPrefix], policy: Policy | None = None,
               keep: Mapping[str, Loaded] | None = None) -> Built:
        """Read (unless ``policy`` is given), compile and load everything (but the programs
        ``keep`` names, loaded as they are), bring the eBPF ban maps to ``bans``, or raise."""
        if policy is None:
            policy, launches = self._read()
            self._learn(policy)
        else:
            launches = self.built.launches if self.built is not None else ()
        now_ns = time.monotonic_ns()
        answers = self.namebook.in_force(self.clock())
        changed = changed_names(self.built.answers if self.built is not None else {}, answers)
        named = substitute(policy, answers, self.namebook.last(self.clock())) if forward_names(policy) else policy
        resolved: dict[str, ResolvedService] = {}
        compiled: dict[str, Compiled] = {}
        uses: dict[str, tuple[str, ...]] = {}  # service → the host names it uses (filled by compile_one)
        kept = dict(keep or {})

        def compile_one(name: str) -> Compiled:
            r = resolve(policy, name)
            uses[name] = names = tuple(sorted(rule_names(r.service.rules)))
            resolved[name] = r = resolve(named, name) if names else r
            if name in kept and changed.isdisjoint(names):
                return kept[name].compiled
            kept.pop(name, None)
            compiled[name] = c = bansink.compile_for(self.kernel, r, self._effective(bans, name, now_ns), self.opts.backend)
            return c

        daemons = named_daemons(policy)
        launched = launches_for(launches, daemon_names(daemons, self.opts.maps))
        desired = build(policy, daemons, self.opts.maps, compile_one, self.wall(), names=uses, launched=launched)
        loaded = {**{n: p for n, p in kept.items() if desired.service(n) is not None}, **self.applier.load(compiled)}
        bansink.push(self.kernel, loaded, lambda n: self._effective(bans, n, now_ns))
        return Built(policy, desired, resolved, loaded, answers, launches)

    def _learn(self, policy: Policy) -> None:
        """The host names ``policy`` uses, tracked; those never asked looked up now (a policy is
        compiled with its answers, not without them), the others asked again in the
        background (a reload is also the moment to notice a changed hosts file)."""
        names = forward_names(policy)
        now = self.clock()
        book = self.namebook.ask_again(now)
        new = [n for n in names if n not in book.entries]
        book = book.track([*book.entries, *new])
        if self.resolver is not None:
            for answer in self.resolver.lookup_all(new):
                book, _ = book.update(answer)
        self.namebook = book

    def _read(self) -> tuple[Policy, tuple[Launch, ...]]:
        """The policy from its files, and the daemons super-servers start when it enrols any;
        every file and directory the load asked for remembered (and watched)."""
        reader = WatchingReader()
        try:
            policy = load_policy(list(self.opts.files), self.opts.hosts_allow, self.opts.hosts_deny,
                                 reader=reader, listdir=reader.listdir)
            enrols = bool(named_daemons(policy) or self.opts.maps)
            return policy, read_launches(reader, self.opts.xinetd_conf, self.opts.inetd_conf, self.opts.systemd_units,
                                                 self.opts.services_file) if enrols else ()
        finally:  # a failed load is watched too: fixing the file is the next reload
            self.read_files = tuple(dict.fromkeys(reader.asked))
            self.watch_list = reader.watch_list()
            if self.files is not None:
                self.files.swap(self.watch_list)

    def reload_now(self, trigger: Trigger) -> str | None:
        """Load the policy again, all or nothing; the error (one line) when the old one stays."""
        try:
            built = self._build(self.bans)
        except SockgateError as e:
            why = failure_text(e)
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
        self.namebook = self.namebook.track(forward_names(built.policy))  # only the names in force are asked again
        if self.watcher is not None:
            self.watcher.watch(watch_set(built.desired))
        self.sweep(trigger, retired)
        if self.refusals is not None:
            self.refusals.update(built.loaded, built.resolved)

    def _policy_info(self, trigger: Trigger, ok_: bool, error: str | None) -> statusdoc.PolicyInfo:
        assert self.built is not None
        prev = self.policy_info
        loaded = self.built.desired.loaded_at if ok_ or prev is None else prev.loaded
        files = self.read_files or tuple(f for f in (*self.opts.files, self.opts.hosts_allow, self.opts.hosts_deny) if f)
        bans = toolbans.rows(self.built.policy, self.opts.hosts_allow, self.opts.hosts_deny, loaded)  # sshguard's, DenyHosts'
        return statusdoc.PolicyInfo(self.built.desired.policy_digest, loaded, files, self.wall(), ok_, trigger, error, bans)

    def summary(self) -> str:
        bad = sum(1 for r in self.rows.values() if r.row.state in ("unguarded", "retrying"))
        n = 0 if self.built is None else len(self.built.desired.services)
        return f"{n} services, {len(self.rows)} sockets, {bad} unguarded"

    # -- the policy's files --------------------------------------------------------------------

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


def changed_names(old: Mapping[str, Lookup], new: Mapping[str, Lookup]) -> frozenset[str]:
    """The names whose answer in force differs in what it admits or refuses (one side may lack
    it: failed). The same addresses in another order — DNS round robin — are no change."""
    def effect(lk: Lookup | None) -> tuple[tuple[IPAddress, ...], tuple[IPAddress, ...]] | None:
        return None if lk is None else (admitted(lk), matched(lk))

    return frozenset(n for n in {*old, *new} if effect(old.get(n)) != effect(new.get(n)))


def watch_set(d: Desired) -> WatchSet:
    ports, comms = d.watch_sets()
    return WatchSet.of(ports, comms)


def failure_text(e: SockgateError) -> str:
    if isinstance(e, PolicyError):
        return one_line(e.render(caret=False).replace("\n", "; "))
    return one_line(str(e))
