"""The resolve pass: a service, once, as the typed facts every consumer reads."""

from __future__ import annotations

import ipaddress
import random

import pytest

from sockgate.errors import UsageError
from sockgate.policy.hostsaccess import parse_hosts_access
from sockgate.policy.ir import Action, AddrMatch, DaemonPattern, Limits, MatchNone, Policy, Rate, Rule, Service
from sockgate.policy.needs import Need
from sockgate.policy.parser import parse_policy
from sockgate.policy.source import Span
from sockgate.resolve import ResolvedService, named_daemons, resolve, resolve_service
from sockgate.resolve.kernelpart import kernel_service

from support.verdicts import random_service

NATIVE = """
service web tcp/80 {
  allow 10.0.0.0/8
  allow host .example.org limit concurrent 2 per source
  deny uid 0
  default deny
}
service ssh tcp/22 {
  limit rate 5/1m per source
  ban 10m
  allow 192.0.2.0/24
  default deny
}
"""

ALLOW = """\
sshd, in.ftpd: 10.0.0.0/8
sshd@192.0.2.1: ALL
ALL EXCEPT sshd: 192.0.2.0/24 : spawn /bin/echo : deny
in.telnetd: .example.org : twist /bin/false
"""


def _native() -> tuple[Policy, ResolvedService, ResolvedService]:
    p = parse_policy(NATIVE, "n.conf")
    return p, resolve(p, "web"), resolve(p, "ssh")


def test_needs_limits_and_digest_of_a_native_service() -> None:
    p, web, ssh = _native()
    assert [r.index for r in web.rules] == [0, 1, 2]
    assert [r.needs for r in web.rules] == [(), (Need.HOST_NAME, Need.CONCURRENCY_LIMIT), (Need.CREDENTIALS,)]
    assert web.needs == {Need.HOST_NAME, Need.CONCURRENCY_LIMIT, Need.CREDENTIALS}
    assert web.needs_host_name and not web.needs_server_address and web.has_limits
    assert web.limits is None and web.rules[0].limits is None
    assert ssh.limits == Limits(rate_per_source=Rate(5, 60), ban_seconds=600)
    assert ssh.needs == {Need.SOURCE_RATE_LIMIT} and ssh.has_limits
    assert web.digest == p.service("web").digest()


def test_never_applying_rules_are_dropped_and_indexes_kept() -> None:
    span = Span("h", 1, 1)
    rules = (
        Rule(Action.ALLOW, AddrMatch((ipaddress.ip_network("10.0.0.0/8"),)), span, "a", DaemonPattern("ftpd")),
        Rule(Action.DENY, MatchNone(), span, "b", DaemonPattern("sshd")),
        Rule(Action.ALLOW, MatchNone(), span, "c", DaemonPattern("sshd", AddrMatch((ipaddress.ip_network("192.0.2.1/32"),)))),
    )
    r = resolve_service(Service("sshd", rules, Action.DENY))
    assert [x.index for x in r.rules] == [1, 2]
    assert [x.server_test for x in r.rules] == [None, rules[2].daemons]
    assert r.rules[1].needs == (Need.SERVER_ADDRESS,) and r.needs_server_address


def test_hosts_access_option_notes_and_named_daemons() -> None:
    p = parse_hosts_access("hosts.allow", None, read={"hosts.allow": ALLOW}.__getitem__)
    assert named_daemons(p) == ("sshd", "in.ftpd", "in.telnetd")
    tel = resolve(p, "in.telnetd")
    assert [r.dropped_options for r in tel.rules] == [("spawn",), ("twist",)]
    assert tel.option_notes == (
        "hosts.allow:3: option spawn not carried out by a kernel filter; only the rule's verdict (deny) is enforced",
        "hosts.allow:4: option twist not carried out by a kernel filter; only the rule's verdict (deny) is enforced",
    )
    assert resolve(p, "sshd").option_notes == ()


def test_refusal_word_for_word() -> None:
    p, web, ssh = _native()
    assert str(web.refusal()) == (
        "service 'web': a kernel filter sees only the source address, and these 2 rules need more:\n"
        "  n.conf:4: allow host .example.org limit concurrent 2 per source: needs the client's host name (a DNS lookup)\n"
        "  n.conf:5: deny uid 0: needs Unix peer credentials (uid)\n"
        "enforce this service with `sockgate proxy` instead"
    )
    assert str(ssh.refusal()) == (
        "service 'ssh': a kernel filter sees only the source address, and the service-wide limits need more:\n"
        "  n.conf:8: service ssh: limit rate 5/minute per source, ban 10m: service-wide connection limits\n"
        "enforce this service with `sockgate proxy` instead"
    )
    assert ssh.refusal(frozenset({Need.SOURCE_RATE_LIMIT})) is None
    one = web.refusal(frozenset({Need.HOST_NAME, Need.CONCURRENCY_LIMIT}))
    assert "and this rule needs more:\n  n.conf:5: deny uid 0: needs Unix peer credentials (uid)\n" in str(one)
    assert web.kernel_part.refusal() is None


def test_resolve_names_the_services_it_has() -> None:
    p, _, _ = _native()
    with pytest.raises(UsageError, match=r"^the policy has no service 'nope' \(services: web, ssh\)$"):
        resolve(p, "nope")


def test_kernel_part_is_the_kernel_service_resolved_once() -> None:
    p, web, _ = _native()
    part = web.kernel_part
    assert part is web.kernel_part
    assert part.service == kernel_service(p.service("web"))
    assert part.digest == kernel_service(p.service("web")).digest()


@pytest.mark.parametrize("seed", range(20))
def test_kernel_part_of_random_services(seed: int) -> None:
    rng = random.Random(seed)
    svc = random_service(rng, "s", ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    assert resolve_service(svc).kernel_part.service == kernel_service(svc)
