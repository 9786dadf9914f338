"""The agent's scans: the full sweep, one socket after a watcher event, and due retries.

A sweep (start, reload, resync, the drift timer, due retries) looks at every socket the policy
selects (``observe.scan``), plans (``reconcile.plan``) and applies in one transaction
(``Applier.apply``); an event is one socket, found by its cookie in the event's process
(``observe.one``), planned and applied alone (new sockets are independent). After either, the
rows ``status`` shows are brought up to date, failures go on the retry book with their reason,
and the established connections the new guards deny are ended (unless ``--keep-established``).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Container, Literal

from sockgate.agent import reconcile, statusdoc
from sockgate.agent.agentstate import AgentState, Row, Trigger
from sockgate.agent.applier import Outcome
from sockgate.agent.desired import Desired
from sockgate.agent.enrol import identifies, impostor_of, select
from sockgate.agent.superserver import is_superserver, unknown_why
from sockgate.agent.model import HolderInfo, Observed, SocketEvent, Want
from sockgate.agent.observe import AllPorts, Look, describe
from sockgate.errors import SockgateError
from sockgate.linux import procfs

_APPLIED = {"attach": "attached", "reload": "reloaded", "replace": "replaced", "detach": "detached"}


class Sweeps(AgentState):
    def _wanted(self, sock: Observed) -> bool:
        """Selected, or guarded by us (to detach it); an impostor's, and a super-server's
        listener for a daemon no configuration names, are noted for status only."""
        if self.built is None:
            return False
        d = self.built.desired
        if (fake := impostor_of(d, sock)) is not None:
            self.impostors[sock.cookie] = statusdoc.ImpostorRow(fake, sock)
        selected = select(d, sock)
        if selected is None and _enrols(d) and any(is_superserver(h) for h in sock.holders):
            self.superserved[sock.cookie] = statusdoc.SuperservedRow(
                sock, unknown_why(self.built.launches, sock.proto, sock.port))
        return selected is not None or sock.cookie in self.rows

    def _named(self, holder: HolderInfo) -> bool:
        """Whether ``holder`` has an enrolled daemon's name, or a super-server's while daemons
        are enrolled (only then is who it is read)."""
        if self.built is None:
            return False
        return identifies((s.selector.daemon for s in self.built.desired.services if s.selector.daemon is not None), holder)

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
        self.superserved = {} if only is None else self.superserved
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
            self.counters[_APPLIED[kind]] += 1

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

    def _on_sweep(self) -> None:
        self._timers.pop("sweep", None)
        self._arm("sweep", self.opts.sweep, self._on_sweep)
        self._guarded(lambda: self.sweep("sweep"))

    def _arm_retry(self) -> None:
        wake = self.retry.next_wake()
        if wake is None:
            self._disarm("retry")
            return
        self._arm("retry", wake - self.clock(), self._on_retry)

    def _on_retry(self) -> None:
        self._timers.pop("retry", None)
        due = self.retry.due(self.clock())
        self._guarded(lambda: self.sweep("retry", only=due) if due else self._arm_retry())


def _enrols(d: Desired) -> bool:
    return any(s.selector.daemon is not None for s in d.services)
