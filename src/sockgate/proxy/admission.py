"""The proxy's admission of a client: the decision, the limits, the bans, and how the log
names them.

``Admission`` is one service's: the engine's decision (on the service with every fact the
proxy does not learn assumed the worst, ``kernelpart.assume_unlearned``), then the limits of
the service and of the matched rule, taken together — if a later one refuses, those already
taken are released — and the bans a per-source rate limit starts. TCP connections
(``proxy.service``) and UDP flows (``proxy.udp``) are admitted alike, so this lives beneath
both. Sans-IO: the clock is passed in, nothing is logged, no filter is touched; the runner
logs a ban and pushes it into the kernel filter. A reload builds a new ``Admission`` from the
previous one, which keeps the state (counts, windows, bans) of every limiter whose limits on
the same match are unchanged.

A decision is a pure function of the peer, so the proxy's accept path may have it remembered:
``admit(peer, now, memo)`` with a ``memo`` that identifies everything the decision reads (the
accepted address as the kernel wrote it, for a peer that carries nothing else — no name, no
server address). The engine then runs once per address, not per connection, and where the
outcome needs no limiter (a denial, or a service and rule without limits) the outcome itself is
remembered; the limits and bans still run on every admission that has them, and a reload
builds a new ``Admission``, so nothing remembered outlives the policy that made it.

A decision record names the client and the rule that decided (``peer_label``,
``rule_label``), the same for TCP and UDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from sockgate.decide import Decision, decide_resolved, decide_unnamed
from sockgate.peers import Peer
from sockgate.policy.ir import Action, Limits, Rule, Service
from sockgate.resolve import ResolvedService, resolve_service
from sockgate.resolve.kernelpart import assume_unlearned, surely_allowed_service
from sockgate.proxy.limits import Limiter, source_of

_MEMO_SIZE = 4096  # remembered decisions, at most (then forgotten all at once)
LimiterKey = tuple[object, Limits]  # what identifies a limiter across a reload: the same limits on the same match


@dataclass(frozen=True)
class Admitted:
    decision: Decision
    key: Hashable  # the source: ``limits.source_of`` an address, ("uid", uid) for a Unix peer
    limiters: tuple[Limiter[Hashable], ...]  # taken: released when the client goes


@dataclass(frozen=True)
class Refused:
    decision: Decision
    key: Hashable
    reason: str
    rule: str  # the deciding rule's label, or "limit"
    ban_started: bool  # this attempt started a ban of ``key``


class Admission:
    """One service's admission (module docstring)."""

    def __init__(self, service: Service | ResolvedService, previous: Admission | None = None) -> None:
        resolved = service if isinstance(service, ResolvedService) else resolve_service(service)
        # The proxy never queries ident nor looks up its own host name: decided as if every
        # answer libwrap could get were the worst one (kernelpart.assume_unlearned).
        decided = assume_unlearned(resolved.service, ident=True, server_name=True)
        self.origin = {d: r for d, r in reversed(list(zip(decided.rules, resolved.service.rules)))}
        self.decided = resolve_service(decided)  # resolved once: decided per connection
        self.surely = resolve_service(surely_allowed_service(decided))  # for a peer whose name lookup was cut short
        kept = {} if previous is None else {_key(r, lim.limits): lim for r, lim in previous.limiters.items()}
        self.limiters: dict[Rule | None, Limiter[Hashable]] = {}
        # admit's memo → the decision, or the whole outcome where no limiter is consulted
        self._memo: dict[Hashable, Decision | Admitted | Refused] = {}
        if resolved.limits is not None:
            self.limiters[None] = kept.get(_key(None, resolved.limits)) or Limiter(resolved.limits)
        for r in resolved.rules:
            if r.limits is not None and r.rule.action is Action.ALLOW:
                self.limiters[r.rule] = kept.get(_key(r.rule, r.limits)) or Limiter(r.limits)

    def decide(self, peer: Peer) -> Decision:
        """The engine's decision, naming the rule as written."""
        d = decide_resolved(self.decided, peer)
        if d.rule is None:
            return d
        # built directly: dataclasses.replace walks the fields, about 2.5x the cost, per connection
        return Decision(d.action, d.service, self.origin.get(d.rule, d.rule), d.reason)

    def unnamed(self, peer: Peer, why: str) -> Decision:
        """The decision for a peer whose host-name lookup was cut short (``decide_unnamed``)."""
        return decide_unnamed(self.decided, self.surely, peer, why)

    def admit(self, peer: Peer, now: float, memo: Hashable = None) -> Admitted | Refused:
        """The decision, then the limits of the service and of the matched rule (a denied
        client takes none). ``memo``: see the module docstring (None: decide afresh)."""
        if memo is None:
            d = self.decide(peer)
        else:
            hit = self._memo.get(memo)
            if hit is None:
                hit = self._remember(peer, memo)
            if not isinstance(hit, Decision):
                return hit  # denied, or no limits: the outcome is the decision's
            d = hit
        key = _source(peer)
        if not d.allowed or not self.limiters:
            return _outcome(d, key)
        taken: list[Limiter[Hashable]] = []
        for lim in (self.limiters.get(None), self.limiters.get(d.rule) if d.rule is not None else None):
            if lim is None:
                continue
            v = lim.admit(key, now)
            if not v.ok:
                for t in taken:
                    t.release(key)
                return Refused(d, key, v.reason, "limit", v.banned_until is not None)
            taken.append(lim)
        return Admitted(d, key, tuple(taken))

    def remembered(self, memo: Hashable) -> Admitted | None:
        """The whole outcome remembered under ``memo`` when it admits with no limiter to
        consult (nothing to count, nothing to ban): the accept path then needs no peer built.
        None otherwise (not remembered, denied, or limits to take: ``admit``)."""
        hit = self._memo.get(memo)
        return hit if type(hit) is Admitted else None

    def _remember(self, peer: Peer, memo: Hashable) -> Decision | Admitted | Refused:
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        d = self.decide(peer)
        hit: Decision | Admitted | Refused = _outcome(d, _source(peer)) if not d.allowed or not self.limiters else d
        self._memo[memo] = hit
        return hit

    @staticmethod
    def release(admitted: Admitted) -> None:
        """A client admitted (by this admission or a previous one) has gone."""
        for lim in admitted.limiters:
            lim.release(admitted.key)

    def expire(self, now: float) -> list[Hashable]:
        """Lift the bans that are over (returned: the kernel filter is rebuilt without them)
        and forget idle sources."""
        return [s for lim in self.limiters.values() for s in lim.expire(now)]

    def bans(self, now: float) -> list[Hashable]:
        """The sources banned at ``now``, in a stable order."""
        return sorted({s for lim in self.limiters.values() for s in lim.active_bans(now)}, key=str)

    def banned_until(self, now: float) -> dict[Hashable, float]:
        """Each source banned at ``now`` and when its ban ends (the latest of its limits')."""
        out: dict[Hashable, float] = {}
        for lim in self.limiters.values():
            for s in lim.active_bans(now):
                out[s] = max(lim.bans[s], out.get(s, 0.0))
        return out

    def next_expiry(self) -> float | None:
        """When the earliest ban ends (None: no ban)."""
        return min((t for lim in self.limiters.values() if (t := lim.next_expiry()) is not None), default=None)


def _source(peer: Peer) -> Hashable:
    """The key of ``peer``'s limits: ``limits.source_of`` its address, or its uid."""
    return source_of(peer.address) if peer.address is not None else ("uid", peer.uid)


def _outcome(d: Decision, key: Hashable) -> Admitted | Refused:
    """The outcome of a decision when no limiter is consulted (denied, or none to take)."""
    return Admitted(d, key, ()) if d.allowed else Refused(d, key, d.reason, rule_label(d.rule), False)


def _key(rule: Rule | None, limits: Limits) -> LimiterKey:
    return (None if rule is None else (rule.action, rule.match), limits)


def rule_label(rule: Rule | str | None) -> str:
    """Where a decision came from: a rule's place, ``default``, or a label already (``limit``)."""
    if isinstance(rule, str):
        return rule
    return "default" if rule is None else f"{rule.span.file}:{rule.span.line}"


def peer_label(peer: Peer) -> str:
    """The client as a log shows it: ``address:port`` (IPv6 in brackets), ``name[address]``
    once a name is known, or the Unix credentials."""
    if peer.address is not None:
        a = peer.address_text()  # a forged ::ffff:a.b.c.d is never shown as a.b.c.d
        a = f"[{a}]" if ":" in a else a
        a = f"{a}:{peer.port}" if peer.port is not None else a
        if peer.name:  # as libwrap prints it: name[address]; a name that did not verify is marked
            return f"{peer.name}{'' if peer.name_verified else '(unverified)'}[{a}]"
        return a
    return peer.describe()
