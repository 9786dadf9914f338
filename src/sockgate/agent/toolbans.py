"""The hosts-file lines a ban tool wrote, listed as bans in ``sockgate status``.

sshguard's hosts backend (``sshg-fw-hosts``) and DenyHosts ban by writing a line: sshguard
``ALL : ADDR : DENY`` between ``###sshguard###`` markers at the top of hosts.allow, DenyHosts
``DAEMON: ADDR`` in hosts.deny. The agent enforces those lines as the policy they are (a file
change is a reload: docs/agent.md), so they live in the compiled rules, not in the ban book;
this module picks them out of the loaded policy, so that ``status`` lists them with the other
bans, by origin: ``sshguard`` for a deny line of hosts.allow naming one network for ``ALL``
daemons, ``hosts_deny`` for a hosts.deny line naming one network and nothing else (``ALL`` or
daemon names, no options). Neither file says who wrote a line; these shapes are what the tools
write, and an operator's line of the same shape is a ban of one network all the same. Pure.

``split`` takes those lines out of the policy the agent compiles and gives them as bans
(``ToolBan``; the agent puts them in the eBPF ban maps, or compiles them into a classic program
as bans): an attacker whose many addresses make DenyHosts write hundreds of lines then costs a
map update each, not a program that no longer fits and a policy that no longer reloads. A ban is
refused before every rule, a line decides only the clients no earlier rule took, so a line is
taken out only where that is the same thing: for each service it applies to, every earlier rule
that may apply to the service either refuses (a deny rule without limits) or provably matches
no address of the line's network (an address rule not overlapping it). Otherwise — an earlier
allow rule by host name, ``ALL``, an overlapping range — the line stays policy, as does a line
covering this host's loopback or wider than a ban may be (``bans.check_width``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Sequence

from sockgate.agent.statusdoc import BanRow
from sockgate.bans import BanTooWide, check_width, touches_loopback
from sockgate.policy.ir import (Action, AddrMatch, AnyOf, Applies, DaemonMatch, DaemonPattern, IPNetwork, MatchAll,
                                Policy, Rule, applies)

SSHGUARD = "sshguard"
HOSTS_DENY = "hosts_deny"


def rows(policy: Policy, hosts_allow: str | None, hosts_deny: str | None, loaded: float) -> tuple[BanRow, ...]:
    """The ban lines of ``policy``'s hosts files, as status rows (never expiring: the tool
    lifts them by removing the line; ``added``: when the policy holding them was loaded)."""
    out: list[BanRow] = []
    for rule in policy.rules:
        origin = _origin(rule, hosts_allow, hosts_deny)
        plain, services = _daemons(rule.daemons)
        if origin is None or not plain or not isinstance(rule.match, AddrMatch):
            continue
        out.append(BanRow(str(rule.match.nets[0]), origin, services, None, loaded,
                          f"{rule.span.file}:{rule.span.line}"))
    return tuple(out)


def _origin(rule: Rule, hosts_allow: str | None, hosts_deny: str | None) -> str | None:
    if rule.action != Action.DENY or rule.limits is not None or not isinstance(rule.match, AddrMatch) \
            or len(rule.match.nets) != 1:
        return None
    if rule.span.file == hosts_allow and isinstance(rule.daemons, MatchAll) \
            and [o.name for o in rule.options] == ["deny"]:
        return SSHGUARD
    if rule.span.file == hosts_deny and not rule.options:
        return HOSTS_DENY
    return None


def _daemons(d: DaemonMatch | None) -> tuple[bool, tuple[str, ...] | None]:
    """Whether a daemon list is a plain one (``ALL``, or names), and the services it names
    (None: every one)."""
    if isinstance(d, MatchAll):
        return True, None
    if isinstance(d, DaemonPattern) and d.server is None:
        return True, (d.name,)
    if isinstance(d, AnyOf):
        names = [x.name for x in d.items if isinstance(x, DaemonPattern) and x.server is None]
        return len(names) == len(d.items), tuple(names)
    return False, None


@dataclass(frozen=True)
class ToolBan:
    """One ban line taken out of the policy: its network, the guarded services it applies to,
    who writes such lines (``sshguard``, ``hosts_deny``) and where it is (``file:line``)."""

    network: IPNetwork
    services: frozenset[str]
    origin: str
    at: str


def split(policy: Policy, hosts_allow: str | None, hosts_deny: str | None,
          services: Sequence[str]) -> tuple[Policy, tuple[ToolBan, ...]]:
    """``policy`` without the ban lines that decide, as bans, exactly what they decide as rules
    for ``services`` (the hosts_access services the agent guards), and those lines as bans."""
    kept: list[Rule] = []
    bans: list[ToolBan] = []
    for i, rule in enumerate(policy.rules):
        ban = _as_ban(rule, policy.rules[:i], hosts_allow, hosts_deny, services)
        if ban is None:
            kept.append(rule)
        else:
            bans.append(ban)
    if not bans:
        return policy, ()
    return dataclasses.replace(policy, rules=tuple(kept)), tuple(bans)


def _as_ban(rule: Rule, earlier: Sequence[Rule], hosts_allow: str | None, hosts_deny: str | None,
            services: Sequence[str]) -> ToolBan | None:
    origin = _origin(rule, hosts_allow, hosts_deny)
    plain, _ = _daemons(rule.daemons)
    if origin is None or not plain or not isinstance(rule.match, AddrMatch):
        return None
    net = rule.match.nets[0]
    try:
        check_width(net)
    except BanTooWide:
        return None
    if touches_loopback(net):
        return None
    mine = frozenset(s for s in services if applies(rule.daemons, s) is Applies.ALWAYS)
    if any(_may_admit(r, net, s) for s in mine for r in earlier):
        return None
    return ToolBan(net, mine, origin, f"{rule.span.file}:{rule.span.line}")


def _may_admit(rule: Rule, net: IPNetwork, service: str) -> bool:
    """Whether ``rule`` may apply to ``service`` and admit some address of ``net``."""
    if applies(rule.daemons, service) is Applies.NEVER:
        return False
    if rule.action == Action.DENY and rule.limits is None:
        return False
    if isinstance(rule.match, AddrMatch):
        return any(_overlap(n, net) for n in rule.match.nets)
    return True


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    """Whether ``a`` and ``b`` share an address; an IPv4-mapped range is taken to meet every
    IPv4 network (the two spellings of one client)."""
    if a.version != b.version:
        six = a if a.version == 6 else b
        return isinstance(six, ipaddress.IPv6Network) and six.overlaps(_MAPPED)
    return a.overlaps(b)
