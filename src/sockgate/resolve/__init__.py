"""The resolve pass: a policy, once, per service, as typed facts every consumer reads.

``resolve(policy, name)`` specialises the policy to one service and resolves it
(``model.resolve_service``): the engine (``decide.decide_resolved``), the classic and eBPF
compilers (through ``ranges.first_match_tables`` and ``ResolvedService.refusal``), the
exporters, the proxy and the CLI read a ``ResolvedService`` instead of re-deriving what a rule
needs. ``named_daemons`` lists the daemons hosts_access rules name literally. Pure: no I/O.
"""

from __future__ import annotations

from typing import assert_never

from sockgate.policy.ir import AnyOf, DaemonMatch, DaemonPattern, Except, MatchAll, Policy
from sockgate.resolve.model import ResolvedRule, ResolvedService, resolve_rule, resolve_service

__all__ = ["ResolvedRule", "ResolvedService", "literal_daemons", "named_daemons", "resolve", "resolve_rule", "resolve_service"]


def resolve(policy: Policy, name: str) -> ResolvedService:
    """Service ``name`` of ``policy`` resolved; a ``UsageError`` listing the services the
    policy has when it has no such service."""
    return resolve_service(policy.require_service(name))


def named_daemons(policy: Policy) -> tuple[str, ...]:
    """The daemon names hosts_access rules select by name (not ``ALL``, wildcards or
    ``EXCEPT`` parts), in policy order, each once."""
    return tuple(dict.fromkeys(n for r in policy.rules if r.daemons is not None for n in literal_daemons(r.daemons)))


def literal_daemons(d: DaemonMatch) -> list[str]:
    """The daemon names one daemon list selects by name."""
    match d:
        case DaemonPattern(name=n):
            literal = n.upper() != "ALL" and not any(c in n for c in "*?[") and not n.startswith(".") and not n.endswith(".")
            return [n] if literal else []
        case AnyOf(items=items):
            return [n for i in items for n in literal_daemons(i)]
        case Except(include=include):
            return literal_daemons(include)
        case MatchAll():
            return []
        case _:
            assert_never(d)
