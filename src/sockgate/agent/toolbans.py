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
"""

from __future__ import annotations

from sockgate.agent.statusdoc import BanRow
from sockgate.policy.ir import Action, AddrMatch, AnyOf, DaemonMatch, DaemonPattern, MatchAll, Policy, Rule

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
