"""CrowdSec's decisions into the agent: the bouncer's pulls on a thread, everything else on the
agent's loop.

Why a thread for the pull alone: a pull is a blocking HTTP exchange (``crowdsec.lapi``, up to
its timeout — seconds when the LAPI is slow or gone), and the loop must keep guarding new
sockets meanwhile. So the thread does nothing but ``LapiClient.pull`` and hands the raw answer
(or the error) back through a queue and a pipe the loop watches; the decision state
(``crowdsec.session``), the ban book and the kernel are only ever touched on the loop, so the
agent's state stays single-threaded. The pace is the session's: its interval while the LAPI
answers, its jittered backoff while it does not (the decisions held stay in force meanwhile,
each ending on its own duration). This is ``lapi.Bouncer.poll`` split at the I/O.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from sockgate.agent.banbook import BanBook, BanEntry
from sockgate.agent.statusdoc import rfc3339
from sockgate.bans import BannedPrefix, Origin
from sockgate.bulk import no_cycle_collection
from sockgate.crowdsec.lapi import LapiClient, LapiError
from sockgate.crowdsec.session import Session
from sockgate.crowdsec.stream import Report, StreamError
from sockgate.policy.ir import IPNetwork
from sockgate.supervisor import Cancel, Loop


@dataclass(frozen=True)
class Answer:
    startup: bool
    body: bytes | None  # None: the pull failed
    error: str | None = None


class CrowdsecFeed:
    def __init__(self, client: LapiClient, session: Session, exempt: tuple[str, ...] = (), *,
                 clock: Callable[[], int] = time.monotonic_ns, draw: Callable[[], float] = random.random) -> None:
        self.client, self.session, self.exempt = client, session, exempt
        self.clock, self.draw = clock, draw
        self.pulls = 0
        self._asks: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[Answer] = queue.SimpleQueue()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._work, name="sockgate-crowdsec", daemon=True)
        self._timer: Cancel | None = None
        self._loop: Loop | None = None

    def start(self, loop: Loop, on_report: Callable[[Report], None]) -> Cancel:
        """The first (startup) pull now, then the session's pace; the stop."""
        self._loop = loop
        self._on_report = on_report
        self._thread.start()
        loop.watch(self._r, self._on_answer)
        self._asks.put(self.session.request(self.clock()))
        return self._stop

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer()
            self._timer = None
        self._asks.put(None)
        if self._loop is not None:
            self._loop.unwatch(self._r)
        os.close(self._r)  # the thread closes its end when it ends (a late write meets EPIPE)

    def _work(self) -> None:
        """The thread: one pull per ask, until the None ask."""
        try:
            while (startup := self._asks.get()) is not None:
                try:
                    self._answers.put(Answer(startup, self.client.pull(startup)))
                except LapiError as e:
                    self._answers.put(Answer(startup, None, str(e)))
                except Exception as e:  # noqa: BLE001 — the thread must never end silently
                    self._answers.put(Answer(startup, None, f"{type(e).__name__}: {e}"))
                try:
                    os.write(self._w, b"\0")
                except OSError:
                    return  # the agent stopped
        finally:
            os.close(self._w)

    def _on_answer(self) -> None:
        """The loop: the answers into the session, the reports out, the next pull timed."""
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                a = self._answers.get_nowait()
            except queue.Empty:
                break
            self.pulls += 1
            self._take(a)
        if self._loop is not None and self._timer is None:
            self._timer = self._loop.call_later(self.session.delay(self.draw()), self._ask)

    def _take(self, a: Answer) -> None:
        now = self.clock()
        if a.body is None:
            self.session.failed(now, a.error or "no answer")
            return
        # A startup answer is 100,000 decisions, each a handful of small acyclic objects: the
        # cycle collector would walk them all again and again and free nothing (bulk.py).
        with no_cycle_collection():
            try:
                report = self.session.received(a.body, now, startup=a.startup)
            except StreamError:
                return  # recorded by the session as a failed pull
            self._on_report(report)

    def _ask(self) -> None:
        self._timer = None
        self._asks.put(self.session.request(self.clock()))

    def book(self, book: BanBook[BannedPrefix], report: Report, now_ns: int) -> tuple[BanBook[BannedPrefix], list[IPNetwork]]:
        """``book`` with its CrowdSec entries replaced by the decisions held (each network for
        every service, until its latest decision ends), and the networks ``report`` newly banned."""
        held = self.session.state.bans(now_ns)
        entries = (BanEntry(b, None, now_ns, "crowdsec") for b in held.values())
        return book.replace_origin(Origin.CROWDSEC, entries), [n for n in report.changed if n in held]

    def errors(self) -> list[str]:
        """``status``'s error line while the LAPI is down."""
        s = self.session.status()
        if s.up or s.since_ns is None:
            return []
        return [f"CrowdSec LAPI {self.client.url} down ({s.failures} failed pulls, retrying with backoff),"
                f" its {s.decisions} last decisions kept: {s.last_error}"]

    def status(self, mono_to_wall: Callable[[int], float]) -> dict[str, Any]:
        """``status``'s ``sources.crowdsec``."""
        s = self.session.status()
        return {"url": self.client.url, "state": "up" if s.up else ("down" if s.since_ns is not None else "starting"),
                "since": None if s.since_ns is None else rfc3339(mono_to_wall(s.since_ns)),
                "failures": s.failures, "error": s.last_error, "decisions": s.decisions, "pulls": self.pulls,
                "last_success": None if s.last_success_ns is None else rfc3339(mono_to_wall(s.last_success_ns)),
                "interval": self.session.interval_s, "resync": self.session.resync_s, "doubted": self.session.doubted, "exempt": list(self.exempt)}
