"""policy.needs: what deciding a rule takes beyond the source address, and the one wording."""

from __future__ import annotations

import ipaddress

import pytest

from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    DaemonPattern,
    Except,
    HostClass,
    HostPattern,
    Limits,
    Match,
    MatchAll,
    MatchNone,
    Principal,
    Rate,
    Rule,
    UserAt,
)
from sockgate.policy.needs import (
    LIMIT_NEEDS,
    Need,
    daemon_needs,
    limit_needs,
    match_facts,
    need_text,
    rule_needs,
    rule_reason,
)
from sockgate.policy.source import Span

NET = AddrMatch((ipaddress.ip_network("10.0.0.0/8"),), "10.0.0.0/8")
SPAN = Span("t.policy", 1, 1)


# -- the table: node kind -> facts -------------------------------------------------------------

@pytest.mark.parametrize(
    ("m", "needs", "principal", "address"),
    [
        (MatchAll(), (), None, False),
        (MatchNone(), (), None, False),
        (NET, (), None, True),
        (HostPattern(".example.org"), (Need.HOST_NAME,), None, False),
        (HostClass("PARANOID"), (Need.HOST_NAME,), None, False),
        (Principal("gid", 7), (Need.CREDENTIALS,), "gid", False),
        (UserAt("bob", NET), (Need.IDENT_USER,), None, True),
        (UserAt("bob", HostPattern("h")), (Need.IDENT_USER, Need.HOST_NAME), None, False),
        (AnyOf((NET, Principal("exe", "/bin/x"), HostClass("KNOWN"), Principal("uid", 0))),
         (Need.CREDENTIALS, Need.HOST_NAME), "exe", True),
        (Except(HostPattern("a"), Except(NET, UserAt("u", MatchAll()))),
         (Need.HOST_NAME, Need.IDENT_USER), None, True),
    ],
)
def test_match_facts(m: Match, needs: tuple[Need, ...], principal: str | None, address: bool) -> None:
    f = match_facts(m)
    assert (f.needs, f.principal, f.uses_address) == (needs, principal, address)


def test_daemon_needs_is_syntactic() -> None:
    at = DaemonPattern("sshd", NET)
    assert daemon_needs(None) == ()
    assert daemon_needs(MatchAll()) == ()
    assert daemon_needs(DaemonPattern("sshd")) == ()
    assert daemon_needs(at) == (Need.SERVER_ADDRESS,)
    assert daemon_needs(Except(MatchAll(), AnyOf((DaemonPattern("x"), at)))) == (Need.SERVER_ADDRESS,)


def test_limit_needs() -> None:
    r = Rate(3, 60)
    assert limit_needs(None) == limit_needs(Limits()) == ()
    assert limit_needs(Limits(concurrent_total=2)) == (Need.CONCURRENCY_LIMIT,)
    assert limit_needs(Limits(ban_seconds=60)) == (Need.SOURCE_RATE_LIMIT,)
    assert limit_needs(Limits(concurrent_per_source=1, rate_per_source=r, rate_total=r)) == (
        Need.CONCURRENCY_LIMIT, Need.SOURCE_RATE_LIMIT, Need.TOTAL_RATE_LIMIT)
    assert set(LIMIT_NEEDS) == {Need.CONCURRENCY_LIMIT, Need.SOURCE_RATE_LIMIT, Need.TOTAL_RATE_LIMIT}


def test_rule_needs_order_match_then_daemons_then_limits() -> None:
    rule = Rule(Action.ALLOW, Principal("uid", 0), SPAN, "r", DaemonPattern("d", NET), (), Limits(concurrent_total=1))
    assert rule_needs(rule) == (Need.CREDENTIALS, Need.SERVER_ADDRESS, Need.CONCURRENCY_LIMIT)
    assert rule_reason(rule) == "needs Unix peer credentials (uid)"


# The strings other tests assert word for word (run, attach, export, lint).
@pytest.mark.parametrize(
    ("need", "text"),
    [
        (Need.HOST_NAME, "needs the client's host name (a DNS lookup)"),
        (Need.IDENT_USER, "needs the client's ident user name"),
        (Need.CREDENTIALS, "needs Unix peer credentials (user)"),
        (Need.SERVER_ADDRESS, "needs the server address (daemon@host)"),
        (Need.CONCURRENCY_LIMIT, "has connection limits"),
        (Need.SOURCE_RATE_LIMIT, "has connection limits"),
        (Need.TOTAL_RATE_LIMIT, "has connection limits"),
    ],
)
def test_need_text(need: Need, text: str) -> None:
    assert need_text(need, "user") == text


def test_every_need_has_a_text() -> None:
    assert {n: need_text(n, "pid") for n in Need}.keys() == set(Need)
