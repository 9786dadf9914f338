"""Policies rendered for host firewalls: nftables rulesets and pf.conf fragments.

``export(policy, "nft" | "pf", ...)`` plans the policy (``common.plan``: services, ports,
rules flattened to address intervals, inexpressible rules refused or skipped) and renders the
plan (``nft.render``, ``pf.render``). Pure: services(5) text and ``--map`` arguments arrive
as values; ``sockgate.services_db`` reads /etc/services at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from sockgate.export import nft, pf
from sockgate.export.common import DenyAction, ExportPlan, Firewall, plan
from sockgate.policy.ir import Endpoint, Policy

ExportFormat = Literal["nft", "pf"]
FORMATS: tuple[ExportFormat, ...] = ("nft", "pf")


@dataclass(frozen=True)
class Exported:
    text: str
    warnings: tuple[str, ...]
    plan: ExportPlan


def export(
    policy: Policy,
    fmt: ExportFormat,
    *,
    table: str = "sockgate",
    action: DenyAction = "drop",
    mapped: Mapping[str, tuple[Endpoint, ...]] | None = None,
    services_db: Mapping[str, tuple[Endpoint, ...]] | None = None,
    skip_userspace: bool = False,
) -> Exported:
    """Render ``policy`` as ``fmt``. ``table`` names the nftables table or the pf anchor.
    Raises ``PolicyError`` for rules the target cannot express (unless ``skip_userspace``) and
    ``UsageError`` for services without a known port or a bad name."""
    target: Firewall = "nftables" if fmt == "nft" else "pf"
    p = plan(policy, target=target, mapped=mapped, services_db=services_db, skip_userspace=skip_userspace)
    if fmt == "nft":
        text = nft.render(p, table=table, action=action)
    else:
        text = pf.render(p, anchor=table, action=action)
    return Exported(text, p.warnings, p)


__all__ = ["DenyAction", "ExportFormat", "ExportPlan", "Exported", "FORMATS", "Firewall", "export", "plan"]
