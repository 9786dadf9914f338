"""An ``ExportPlan`` rendered as a complete nftables ruleset (nft(8) syntax, nftables >= 1.0.6).

Shape::

    table inet NAME {}              create-if-missing, then delete, then define: one
    delete table inet NAME          transaction under `nft -f`, so loading twice leaves one
    table inet NAME {               copy and a failed load changes nothing (`destroy table`
      set office_v4 {...}           would be shorter but needs nftables 1.0.8)
      chain input {                 base chain, hook input, policy accept: only the
        ct direction reply accept   services' ports are judged, and only packets in the
        tcp dport 22 jump svc_ssh   original direction (replies to this host's own
      }                             connections pass)
      chain svc_ssh {               one chain per service: its rules in policy order, each
        ip saddr @office_v4 accept  an accept or deny verdict (first match wins because
        drop                        every verdict ends the chain), its default last
      }
    }

A rule's addresses are sets of disjoint intervals per family (``addrs.py``): one interval
is written inline, more go into a named ``flags interval`` set (``ipv4_addr`` and
``ipv6_addr`` apart); a rule that names a policy set (``@office``) gets a set of that name.
Equal contents share one set. ``accept`` only ends this table's judgement; another table's
chains still see the packet, as nftables always works. ``--action reject`` sends a TCP reset,
or ICMP port unreachable for UDP, through a shared ``deny_reject`` chain.
"""

from __future__ import annotations

import re

from sockgate.errors import UsageError
from sockgate.export.addrs import MAPPED_V6, Intervals, as_cidr, to_address
from sockgate.export.common import (
    DenyAction,
    ExportPlan,
    IdentifierPool,
    NamedSets,
    PlannedRule,
    PlannedService,
    comment,
    finish,
    header_lines,
    port_items,
    service_lines,
)
from sockgate.export.ports import PortRange
from sockgate.policy.intervals import Range
from sockgate.policy.ir import Action

_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_INLINE_MAX = 1  # intervals written inline in a rule; more become a named set
_FAMILY = {4: ("ip", "ipv4_addr", "ipv4"), 6: ("ip6", "ipv6_addr", "ipv6")}


# Words nft(8)'s scanner reads as keywords: as a table name they are a syntax error (nft has
# no quoting for names). Found by loading `table inet WORD {}` with `nft -c` (nftables 1.0.6)
# for each word of its grammar and man page; "destroy" and "last" became keywords in 1.0.8.
NFT_KEYWORDS = frozenset(
    """
    accept add ah all and arp auto-merge bridge cgroup chain comment comp constant continue
    counter cpu create ct day dccp define delete describe destroy device devices dnat drop dst
    dup dynamic ecn element elements esp ether exists export exthdr fib flags flowtable flush
    frag fwd goto handle hbh hook hour ibriport ibrname icmp icmpv6 igmp iif iifname iiftype
    import include index inet insert interval ip ip6 ipsec jhash jump last limit list log map
    mark masquerade meta meter mh missing monitor netdev nftrace not notrack numgen obriport
    obrname offload oif oifname oiftype or osf pkttype policy position priority queue quota
    random redefine redirect reject rename replace reset return rt rt0 rule ruleset sctp
    secmark set size skgid skuid snat socket symhash synproxy table tcp th time timeout tproxy
    type typeof udp udplite undefine vlan vmap xor xt
    """.split()
)


def check_table_name(table: str) -> None:
    """A name both targets accept (nft identifiers, pf anchors): letters, digits, ``_``."""
    if not _TABLE_RE.match(table):
        raise UsageError(f"--table {table!r}: expected a letter then letters, digits or _ (at most 64)")


def check_nft_table_name(table: str) -> None:
    check_table_name(table)
    if table in NFT_KEYWORDS:
        raise UsageError(f"--table {table!r}: nft reads this word as a keyword, not a name; choose another (e.g. sg_{table})")


def render(plan: ExportPlan, *, table: str = "sockgate", action: DenyAction = "drop") -> str:
    """The ruleset text for ``nft -f``."""
    check_nft_table_name(table)
    r = _Renderer(action)
    chains = [_service_chain(r, svc) for svc in plan.services]
    usage = [
        "Load atomically (again to replace it): nft -f FILE",
        f"Remove:                                nft delete table inet {table}",
        "Packets to the services' ports are judged by the policy's rules, first match wins;",
        "all other traffic is left alone.",
    ]
    out = header_lines(plan, "nft", usage)
    out += [f"table inet {table} {{}}", f"delete table inet {table}", f"table inet {table} {{"]
    body: list[list[str]] = [_set_block(name, v, ivs) for name, (v, ivs) in r.sets.items()]
    body.append(_base_chain(plan, chains))
    if action == "reject" and plan.services:
        body.append(_chain("deny_reject", ["meta l4proto tcp reject with tcp reset", "reject with icmpx type port-unreachable"]))
    body += [_chain(name, lines) for name, lines in chains]
    for i, block in enumerate(body):
        if i:
            out.append("")
        out += ["\t" + line for line in block]
    out.append("}")
    return finish(out)


class _Renderer:
    def __init__(self, action: DenyAction) -> None:
        self.verdicts = {Action.ALLOW: "accept", Action.DENY: "drop" if action == "drop" else "goto deny_reject"}
        self.sets: NamedSets[tuple[int, Intervals]] = NamedSets(64)
        self.chain_names = IdentifierPool(64, prefix="svc_")

    def set_for(self, wanted: str, version: int, intervals: Intervals) -> str:
        return self.sets.name_for((version, intervals), f"{wanted}_v{version}")


def _service_chain(r: _Renderer, svc: PlannedService) -> tuple[str, list[str]]:
    name = r.chain_names.make(svc.name)
    forged = [f"ip6 saddr {MAPPED_V6} drop"]  # drop, not reject: no answer to a forged source
    lines = service_lines(svc, lambda item, wanted, named: _rule_lines(r, item, wanted, named), forged)
    return name, lines + [r.verdicts[svc.default]]


def _rule_lines(r: _Renderer, item: PlannedRule, wanted: str, named: bool) -> list[str]:
    verdict = r.verdicts[item.action]
    a = item.addrs
    if a.is_full(4) and a.is_full(6):
        return [verdict]
    if a.is_empty():
        return [comment("(matches no address)")]
    out = []
    for version in (4, 6):
        ivs = a.family(version)
        key, _, nfproto = _FAMILY[version]
        if a.is_full(version):
            out.append(f"meta nfproto {nfproto} {verdict}")
        elif ivs and len(ivs) <= _INLINE_MAX and not named:
            out.append(f"{key} saddr {_element(ivs[0], version)} {verdict}")
        elif ivs:
            out.append(f"{key} saddr @{r.set_for(wanted, version, ivs)} {verdict}")
    return out


def _element(interval: Range, version: int) -> str:
    lo, hi = interval
    if hi - lo == 1:
        return str(to_address(lo, version))
    cidr = as_cidr(interval, version)
    return str(cidr) if cidr is not None else f"{to_address(lo, version)}-{to_address(hi - 1, version)}"


def _set_block(name: str, version: int, intervals: Intervals) -> list[str]:
    elements = [_element(i, version) for i in intervals]
    if len(elements) <= 4:
        elems = ["\telements = { " + ", ".join(elements) + " }"]
    else:
        elems = ["\telements = {"] + [f"\t\t{e}," for e in elements[:-1]] + [f"\t\t{elements[-1]}", "\t}"]
    return [f"set {name} {{", f"\ttype {_FAMILY[version][1]}", "\tflags interval", *elems, "}"]


def _base_chain(plan: ExportPlan, chains: list[tuple[str, list[str]]]) -> list[str]:
    lines = [
        "type filter hook input priority filter; policy accept;",
        comment("replies to connections this host opened are not judged"),
        "ct direction reply accept",
    ]
    for svc, (chain, _) in zip(plan.services, chains):
        for proto, ranges in svc.ports:
            lines.append(f"{proto} dport {_ports(ranges)} jump {chain}")
    return _chain("input", lines)


def _ports(ranges: tuple[PortRange, ...]) -> str:
    items = port_items(ranges)
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _chain(name: str, lines: list[str]) -> list[str]:
    return [f"chain {name} {{", *("\t" + line for line in lines), "}"]
