"""An ``ExportPlan`` rendered as a pf.conf(5) fragment for OpenBSD and FreeBSD, loaded into an anchor.

pf evaluates rules top to bottom and the *last* match wins, unless a rule is ``quick``: then
the first quick match ends evaluation. Every rule here is ``quick``, so the policy's
first-match order carries over unchanged, and each service ends with its default as a quick
rule for its ports, so a packet to a service port never falls through to the rules after the
anchor. Packets to other ports match nothing here.

Addresses: pf tables hold CIDRs (no ranges), so each rule's disjoint intervals are
summarised into CIDRs (``addrs.summarize``); IPv4 and IPv6 entries may share a table. One
CIDR is written inline; more go into a ``const`` table (shared when contents are equal; named
after the policy set for ``@set`` rules). Tables are anchor-local, their names prefixed
``sg_`` and kept within pf's 31 characters. ``--action reject`` is ``block return`` (TCP
reset, ICMP unreachable for UDP). Rules match packets *to this host* (``to self``: the
addresses of its interfaces when the rules are loaded), as the nftables export judges only
the input hook: on a gateway, ``to any`` would also judge forwarded traffic to other hosts, and
a quick ``pass`` would let it skip the rest of pf.conf. Reload after an address changes. ``pass`` keeps state, as pf does by default, so replies to
allowed connections pass.
"""

from __future__ import annotations

from sockgate.export.addrs import MAPPED_V6, summarize
from sockgate.export.common import (
    DenyAction,
    ExportPlan,
    NamedSets,
    PlannedRule,
    PlannedService,
    comment,
    finish,
    header_lines,
    port_items,
    ranges_text,
    service_lines,
)
from sockgate.export.nft import check_table_name
from sockgate.export.ports import PortRange
from sockgate.policy.ir import Action, IPNetwork

_PER_LINE = 4  # table entries per line
_TABLE_NAME_MAX = 31  # PF_TABLE_NAME_SIZE (32) less the NUL, <net/pfvar.h>


def render(plan: ExportPlan, *, anchor: str = "sockgate", action: DenyAction = "drop") -> str:
    """The fragment text for ``pfctl -a ANCHOR -f``."""
    check_table_name(anchor)
    r = _Renderer(action)
    blocks = [_service_lines(r, svc) for svc in plan.services]
    usage = [
        f'Put `anchor "{anchor}"` in pf.conf where these rules belong, then',
        f"  load (again to replace it): pfctl -a {anchor} -f FILE",
        f"  remove:                     pfctl -a {anchor} -F all",
        "Every rule is quick: the first match wins, in the policy's order.",
    ]
    out = header_lines(plan, "pf", usage)
    out += [line for name, entries in r.tables.items() for line in _table(name, entries)]
    for block in blocks:
        out += ["", *block]
    return finish(out)


class _Renderer:
    def __init__(self, action: DenyAction) -> None:
        self.verbs = {Action.ALLOW: "pass in quick", Action.DENY: "block drop in quick" if action == "drop" else "block return in quick"}
        self.tables: NamedSets[tuple[str, ...]] = NamedSets(_TABLE_NAME_MAX, prefix="sg_")

    def source(self, item: PlannedRule, wanted: str, named: bool) -> str | None:
        """``any``, one inline CIDR, or ``<table>``; None when the rule matches nothing."""
        a = item.addrs
        if a.is_full(4) and a.is_full(6):
            return "any"
        entries = tuple(_cidr(n) for n in summarize(a.v4, 4) + summarize(a.v6, 6))
        if not entries:
            return None
        if len(entries) == 1 and not named:
            return entries[0]
        return f"<{self.tables.name_for(entries, wanted)}>"


def _service_lines(r: _Renderer, svc: PlannedService) -> list[str]:
    def every_port(verb: str, src: str) -> list[str]:
        return [f"{verb} proto {proto} from {src} to self port {_ports(ranges)}" for proto, ranges in svc.ports]

    def rule_lines(item: PlannedRule, wanted: str, named: bool) -> list[str]:
        src = r.source(item, wanted, named)
        return [comment("(matches no address)")] if src is None else every_port(r.verbs[item.action], src)

    ports = " ".join(f"{proto}/{ranges_text(ranges)}" for proto, ranges in svc.ports)
    # block drop, not return: no answer to a forged source
    lines = service_lines(svc, rule_lines, every_port("block drop in quick", _cidr(MAPPED_V6)), f": {ports}")
    return lines + every_port(r.verbs[svc.default], "any")


def _table(name: str, entries: tuple[str, ...]) -> list[str]:
    """One line, or several continued by a trailing backslash (pf.conf's line continuation)."""
    if len(entries) <= _PER_LINE:
        return [f"table <{name}> const {{ {', '.join(entries)} }}"]
    rows = [", ".join(entries[i : i + _PER_LINE]) for i in range(0, len(entries), _PER_LINE)]
    return [f"table <{name}> const {{ \\", *(f"\t{row}, \\" for row in rows[:-1]), f"\t{rows[-1]} }}"]


def _ports(ranges: tuple[PortRange, ...]) -> str:
    items = port_items(ranges, ":")
    return items[0] if len(items) == 1 else "{ " + " ".join(items) + " }"


def _cidr(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
