"""Combining policies: several native files and a hosts_access pair into one ``Policy``."""

from __future__ import annotations

from typing import Sequence

from sockgate.policy.ir import Policy


def merge(parts: Sequence[Policy]) -> Policy:
    """Native service blocks first (declared services win), then global rules in order; the
    first file-wide default given wins; a hosts_access part brings libwrap's default allow."""
    if len(parts) == 1:
        return parts[0]
    services = tuple(s for p in parts for s in p.services)
    rules = tuple(r for p in parts for r in p.rules)
    default = next((p.default for p in parts if p.default is not None), None)
    default_span = next((p.default_span for p in parts if p.default is not None), None)
    kinds = {p.kind for p in parts}
    fallback = next((p.fallback for p in parts if p.kind == "hosts_access"), parts[0].fallback)
    return Policy(
        services=services,
        rules=rules,
        default=default,
        default_span=default_span,
        sets=tuple(s for p in parts for s in p.sets),
        sources=tuple(f for p in parts for f in p.sources),
        kind=kinds.pop() if len(kinds) == 1 else "mixed",
        fallback=fallback,
        texts=tuple(t for p in parts for t in p.texts),
    )
