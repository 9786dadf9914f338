"""The agent's ban book in force: manual bans and unbans, expiry, CrowdSec's decisions.

A changed book goes to the kernel in one of two ways (``agent/bansink.py``): eBPF services
take it in their ban maps in place (no compile, no re-attach); classic services are compiled
again with their effective bans and swapped in through the same all-or-nothing transaction as
a reload (trigger ``bans``). Only when that worked is the book the agent's, saved to the state
file, and the banned sources' established connections ended; otherwise the previous bans stay
and the caller gets the reason.
"""

from __future__ import annotations

import time
from typing import Callable

from sockgate.agent import bansink
from sockgate.agent.banbook import BanBook
from sockgate.agent.protocol import Ban
from sockgate.agent.hostnames import HostNames
from sockgate.agent.transaction import failure_text
from sockgate.bans import BannedPrefix, touches_loopback
from sockgate.crowdsec.stream import Report
from sockgate.errors import SockgateError
from sockgate.policy.ir import IPNetwork


TIDY_S = 5.0  # how often ended bans are tidied away when the programs end them on time themselves


class Banning(HostNames):
    def _set_bans(self, book: BanBook[BannedPrefix], save_within: float = 0.0) -> str | None:
        """``book`` in force: eBPF services' maps in place, classic services compiled again
        and applied (bansink.py); the error when nothing changed. Saved within ``save_within``
        seconds (now by default; CrowdSec's changes: ``bansink.CROWDSEC_SAVE_S`` says why)."""
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
            return failure_text(e)
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
        if body.origin != "manual" and touches_loopback(body.net):  # decided from what remote clients wrote
            return f"{body.net} covers this host's loopback: a ban from {body.origin} never cuts the host off from itself"
        error = self._set_bans(self.bans.add(bansink.entry(body.net, body.seconds, body.origin, body.service,
                                                            body.reason, time.monotonic_ns())))
        if error is None:
            self._end_banned([body.net], body.service)
        return error

    def _arm_expiry(self) -> None:
        """The timer that lifts the next ban to end. Exact while a service holds its bans in its
        program (lifting one is a recompile). When every service holds them in maps, the
        program ends each ban on time itself and the timer only tidies the book and the maps:
        then it runs at most every ``TIDY_S`` and is never pushed back — 100,000 CrowdSec
        decisions end several times a second, and each tidy reads and writes all of them."""
        end = self.bans.next_expiry()
        if end is None:
            return
        now = time.monotonic_ns()
        if self.built is not None and not bansink.needs_program(self.built.loaded):
            if "bans" in self._timers:
                return
            end = max(end, now + int(TIDY_S * 1e9))
        self._arm("bans", (end - now) / 1e9 + 0.01, self._on_expiry)

    def _on_expiry(self) -> None:
        self._timers.pop("bans", None)
        self._guarded(lambda: self._expire())

    def _expire(self) -> None:  # (saved later: a state file's ended bans are dropped when it is read)
        error = self._set_bans(self.bans.expire(time.monotonic_ns()), bansink.CROWDSEC_SAVE_S)
        if error is not None:
            self.log.record("error", message=f"lifting expired bans: {error}")

    def _on_crowdsec(self, report: Report) -> None:
        """A pull that changed CrowdSec's bans: the origin's entries replaced by the decisions
        held, in force on every service but the exempt ones, their connections ended. The LAPI
        sends a decision once: one the kernel could not take is held, not dropped, and every
        later pull tries again (whatever it changes) until the decisions held are in force."""
        if not (report.changed or report.startup or self.crowdsec_error) or self.crowdsec is None:
            return
        book, new = self.crowdsec.book(self.bans, report, time.monotonic_ns())
        error = None if book == self.bans else self._set_bans(book, bansink.CROWDSEC_SAVE_S)
        if error is not None:
            self.crowdsec_error = (f"CrowdSec decisions not applied ({len(self.crowdsec.session.state)} held, "
                                   f"retried at each pull), the previous bans stay: {error}")
            self.log.record("error", message=self.crowdsec_error)
        else:
            if self.crowdsec_error is not None:  # the decisions that failed had their connections kept too
                new = list(self.crowdsec.session.state.bans(time.monotonic_ns()))
            self.crowdsec_error = None
            if new:
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
