"""Host names in the agent's kernel rules, kept as fresh as their records: each answer asked
again before its TTL runs out, and a changed answer put in force by recompiling the services
that use the name — through the same all-or-nothing transaction as a reload (trigger
``names``).

The answers live in ``agent/forward.NameBook`` (pure: when each is due, when it expires);
lookups run on ``agent/names.NameResolver``'s worker thread, never on the loop, and come back
through its eventfd. After every answer and at every due time the answers in force are
compared with those the running programs were compiled with (``Built.answers``); the services
using a name whose answer changed — a new address, an expiry without a refresh, a failure
after one — are compiled and applied again, the others keep their programs untouched. A
refresh that cannot be applied leaves the running programs (and their answers) in force and
says why in the log and in ``status``; the next change tries again.

Failure is closed both ways (``policy/forward.py``): a name without an answer admits nobody
where it would admit, and where it refuses it keeps the rule in user space — the service's
compile then fails and the previous programs stay, reported.
"""

from __future__ import annotations

from typing import assert_never

from sockgate.agent import statusdoc
from sockgate.agent.agentstate import Built
from sockgate.agent.forward import Row as NameState
from sockgate.agent.transaction import Transactions, changed_names, failure_text
from sockgate.errors import SockgateError
from sockgate.supervisor import Loop


class HostNames(Transactions):
    def _start_names(self, loop: Loop) -> None:
        """Answers come back on the loop; the book's due times are one timer."""
        resolver = self.resolver
        if resolver is None:
            return
        fd = resolver.fileno()
        loop.watch(fd, self._on_answers)

        def stop() -> None:
            loop.unwatch(fd)
            resolver.close()

        self._stops.append(stop)
        self._arm_names()

    def _arm_names(self) -> None:
        wake = self.namebook.wake_at(self.asking, self.clock())
        if wake is None or self.resolver is None:
            self._disarm("names")
            return
        self._arm("names", wake - self.clock(), self._on_names_due)

    def _on_names_due(self) -> None:
        self._timers.pop("names", None)
        due = [n for n in self.namebook.due(self.clock()) if n not in self.asking]
        if due and self.resolver is not None:
            self.asking.update(due)
            self.resolver.submit(due)
        self._guarded(self._refresh)  # (an answer may have expired meanwhile)
        self._arm_names()

    def _on_answers(self) -> None:
        if self.resolver is None:
            return
        for answer in self.resolver.results():
            self.asking.discard(answer.name)
            self.namebook, _ = self.namebook.update(answer)
            if answer.lookup is None:
                self.log.record("warning", message=f"host name {answer.name}: lookup failed: {answer.error}")
        self._guarded(self._refresh)
        self._arm_names()

    def _refresh(self) -> None:
        """The services whose names' answers in force changed, compiled and applied again."""
        built = self.built
        if built is None:
            return
        answers = self.namebook.in_force(self.clock())
        changed = changed_names(built.answers, answers)
        if not changed:
            return
        keep = {n: p for n, p in built.loaded.items() if changed.isdisjoint(_uses(built, n))}
        try:
            new = self._build(self.bans, built.policy, keep=keep)
        except SockgateError as e:
            self.names_error = f"host names {', '.join(sorted(changed))} changed; not applied, the previous " \
                               f"programs stay: {failure_text(e)}"
            self.log.record("error", message=self.names_error)
            self.log.flush()
            return
        self.names_error = None
        self._swap(new, "names")
        self.policy_info = self._policy_info("names", True, None)
        again = [s for s in new.desired.services if s.name not in keep]
        self.log.record("notice", message=f"host names changed ({', '.join(sorted(changed))}): "
                                          f"{len(again)} service(s) compiled again")
        self.log.flush()

    def name_rows(self, names: tuple[str, ...], now: float, to_wall: float) -> tuple[statusdoc.NameRow, ...]:
        """``names`` as status shows them (``to_wall``: add to a monotonic time for the wall clock)."""
        rows = {r.name: r for r in self.namebook.rows(now)}
        return tuple(_row(rows[n], to_wall) if n in rows else statusdoc.NameRow(n, (), None, False, "not tracked")
                     for n in names)


def _uses(built: Built, service: str) -> tuple[str, ...]:
    spec = built.desired.service(service)
    return () if spec is None else tuple(spec.names)


def _row(r: NameState, to_wall: float) -> statusdoc.NameRow:
    addresses = tuple(str(a) for a in dict.fromkeys((*r.admitted, *r.matched)))
    expires = None if r.expires is None else r.expires + to_wall
    match r.state:
        case "ok":
            error = None
        case "stale":
            error = f"refreshing fails ({r.error}); the last answer holds until it expires"
        case "failed" if r.expires is not None:
            error = f"lookup failed ({r.error}): admits nobody; a rule refusing by it refuses its last addresses"
        case "failed":
            error = f"lookup failed ({r.error}): admits nobody; a rule refusing by it stays in user space"
        case "pending" if r.expires is not None:
            error = "its answer expired and the refresh is not answered yet: admits nobody; refuses its last addresses"
        case "pending":
            error = "not answered yet: admits nobody"
        case _:
            assert_never(r.state)
    return statusdoc.NameRow(r.name, addresses, expires, r.state == "stale", error)
