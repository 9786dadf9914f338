"""A service resolved once into the typed facts every consumer reads.

``Policy.service(name)`` specialises a policy to one service; ``resolve_service`` then works
out, once, what each rule needs beyond the source address (``policy.needs``), which rules a
daemon list can never select (dropped) and which it selects only per connection
(``daemon@host``: the test kept as ``server_test``), which limits are real (None when
empty), which hosts_options(5) a filter cannot carry out, and the service's digest. The
engine, the compilers, the exporters, the proxy and the CLI read these fields instead of
walking the rules again, and ``refusal`` is the one place a kernel refusal is worded.

Pure: no I/O. ``kernel_part`` (the address-only part a kernel filter may enforce while user
space does the rest, ``kernelpart.kernel_service``) is computed lazily, once per value.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from sockgate.errors import UnsupportedInKernel
from sockgate.policy.ir import Action, Applies, DaemonMatch, Endpoint, Limits, PrincipalKind, Rule, Service, applies
from sockgate.policy.needs import Need, daemon_needs, limit_needs, need_text, rule_facts
from sockgate.policy.printer import format_limits
from sockgate.resolve.kernelpart import kernel_service


@dataclass(frozen=True)
class ResolvedRule:
    """One rule of a service, with what deciding it takes."""

    index: int  # position in Service.rules (interval labels, logs)
    rule: Rule  # as written: action, match, span, text, options
    needs: tuple[Need, ...]  # empty: the source address alone decides it
    principal: PrincipalKind | None  # the first credential test's kind (for the wording)
    selection: Applies  # ALWAYS, or BY_SERVER (NEVER rules are not resolved at all)
    server_test: DaemonMatch | None  # the daemon list, kept when it has a daemon@host part
    limits: Limits | None  # None when empty
    dropped_options: tuple[str, ...]  # hosts_options a filter cannot carry out (spawn, twist...)

    @property
    def address_only(self) -> bool:
        return not self.needs

    def reason(self, enforces: frozenset[Need] = frozenset()) -> str | None:
        """Why a filter that enforces ``enforces`` cannot decide this rule, or None."""
        left = [n for n in self.needs if n not in enforces]
        return need_text(left[0], self.principal) if left else None


@dataclass(frozen=True)
class ResolvedService:
    """A service as every consumer reads it (see the module docstring)."""

    service: Service  # the specialised IR (name, spans, default, endpoints, listen, forward)
    rules: tuple[ResolvedRule, ...]  # in order; rules whose daemon list never selects it are gone
    limits: Limits | None  # service-wide; None when empty
    needs: frozenset[Need]  # over every rule, and the service-wide limits
    name: str  # service.name (a field: the engine reads it per decision)

    @property
    def default(self) -> Action:
        return self.service.effective_default

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.service.endpoints

    @cached_property
    def digest(self) -> str:
        """``Service.digest()``, computed once (a large address set makes it cost)."""
        return self.service.digest()

    @property
    def needs_host_name(self) -> bool:
        return Need.HOST_NAME in self.needs

    @property
    def needs_server_address(self) -> bool:
        return Need.SERVER_ADDRESS in self.needs

    @property
    def has_limits(self) -> bool:
        """Connection limits anywhere: service-wide or on a rule."""
        return self.limits is not None or any(r.limits is not None for r in self.rules)

    @property
    def option_notes(self) -> tuple[str, ...]:
        """One note per rule whose hosts_options(5) options (``spawn``, ``twist``,
        ``banners``, ``setenv``, ``severity`` ...) a kernel filter cannot carry out: it
        enforces the rule's verdict (``twist`` counts as deny, as for libwrap the real daemon
        never runs) and nothing else. Not an error: TCP Wrappers users get the access control,
        and are told what is lost."""
        return tuple(
            f"{r.rule.span.file}:{r.rule.span.line}: option{'s' if len(r.dropped_options) > 1 else ''} "
            f"{', '.join(r.dropped_options)} not carried out by a kernel filter; only the rule's verdict "
            f"({r.rule.action.value}) is enforced"
            for r in self.rules
            if r.dropped_options
        )

    @cached_property
    def kernel_part(self) -> ResolvedService:
        """The address-only service a kernel filter may enforce while user space enforces the
        rest (``kernelpart``: it drops a source only where this service surely denies it)."""
        return resolve_service(kernel_service(self.service))

    def refusal(self, enforces: frozenset[Need] = frozenset()) -> UnsupportedInKernel | None:
        """Why a kernel filter that enforces ``enforces`` (beyond the source address) cannot
        enforce this service — every rule it cannot decide, and service-wide limits — or None."""
        lines = []
        for r in self.rules:
            reason = r.reason(enforces)
            if reason is not None:
                lines.append(f"{r.rule.span.file}:{r.rule.span.line}: {r.rule.text}: {reason}")
        what = []
        if lines:
            what.append("this rule" if len(lines) == 1 else f"these {len(lines)} rules")
        if self.limits is not None and not set(limit_needs(self.limits)) <= enforces:
            # Service-wide limits count connections: a socket filter sees single packets, so
            # attaching without them would silently enforce less than the policy says.
            svc = self.service
            where = f"{svc.span.file}:{svc.span.line}: " if svc.span is not None else ""
            lines.append(f"{where}service {svc.name}: {', '.join(format_limits(self.limits))}: service-wide connection limits")
            what.append("the service-wide limits")
        if not lines:
            return None
        verb = "needs" if what == ["this rule"] else "need"
        return UnsupportedInKernel(
            f"service {self.name!r}: a kernel filter sees only the source address, and "
            f"{' and '.join(what)} {verb} more:\n  " + "\n  ".join(lines)
            + "\nenforce this service with `sockgate proxy` instead"
        )


def resolve_rule(index: int, rule: Rule, service: str) -> ResolvedRule | None:
    """``rule`` at ``index`` of ``service`` resolved, or None when its daemon list can never
    select ``service``."""
    selection = applies(rule.daemons, service)
    if selection is Applies.NEVER:
        return None
    needs, principal = rule_facts(rule)
    return ResolvedRule(
        index=index,
        rule=rule,
        needs=needs,
        principal=principal,
        selection=selection,
        server_test=rule.daemons if daemon_needs(rule.daemons) else None,
        limits=_real(rule.limits),
        dropped_options=tuple(o.name for o in rule.options if not o.is_verdict),
    )


def resolve_service(service: Service) -> ResolvedService:
    """``service`` resolved (see the module docstring)."""
    rules = tuple(r for i, rule in enumerate(service.rules) if (r := resolve_rule(i, rule, service.name)) is not None)
    limits = _real(service.limits)
    needs = frozenset(n for r in rules for n in r.needs) | frozenset(limit_needs(limits))
    return ResolvedService(service, rules, limits, needs, service.name)


def _real(limits: Limits | None) -> Limits | None:
    return None if limits is None or limits.is_empty() else limits
