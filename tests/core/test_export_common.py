"""export.common: a policy planned for a packet filter from its resolved services."""

from __future__ import annotations

import pytest

from sockgate.export.addrs import flatten
from sockgate.export.common import PlannedRule, PlannedService, SkippedRule, plan
from sockgate.policy.hostsaccess import parse_hosts_access
from sockgate.policy.ir import Endpoint, Policy
from sockgate.resolve import resolve

ALLOW = """\
sshd@192.0.2.1: 10.0.0.0/8
sshd, in.ftpd: 192.0.2.0/24 : spawn /bin/true
in.ftpd: ALL EXCEPT 198.51.100.0/24
"""
MAP = {"sshd": (Endpoint("tcp", ((22, 22),)),), "in.ftpd": (Endpoint("tcp", ((21, 21),)),)}


def _policy() -> Policy:
    return parse_hosts_access("hosts.allow", None, read={"hosts.allow": ALLOW}.__getitem__)


def test_services_follow_the_daemons_named_and_read_the_resolved_rules() -> None:
    p = plan(_policy(), target="nftables", mapped=MAP, skip_userspace=True)
    assert [s.name for s in p.services] == ["sshd", "in.ftpd"]
    sshd, ftpd = p.services
    assert isinstance(sshd, PlannedService) and isinstance(ftpd, PlannedService)
    assert [type(i) for i in sshd.items] == [SkippedRule, PlannedRule]
    assert isinstance(sshd.items[0], SkippedRule) and sshd.items[0].reason == "needs the server address (daemon@host)"
    assert [type(i) for i in ftpd.items] == [PlannedRule, PlannedRule]  # the daemon@host rule never selects in.ftpd
    assert p.warnings[:2] == (
        "hosts.allow:1: left out of the nftables rules: `sshd@192.0.2.1: 10.0.0.0/8`: needs the server address "
        "(daemon@host); treated as never matching",
        "hosts.allow:2: options not carried by a packet filter: spawn",
    )


def test_flatten_refuses_a_rule_that_needs_more_than_an_address() -> None:
    at = resolve(_policy(), "sshd").rules[0]
    with pytest.raises(ValueError, match=r"needs the server address \(daemon@host\)"):
        flatten(at)
