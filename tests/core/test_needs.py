"""policy.needs: what deciding a rule takes beyond the source address, and the one wording."""

from __future__ import annotations

import ipaddress
import typing
from typing import assert_never

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    DaemonMatch,
    DaemonPattern,
    Except,
    HostClass,
    HostPattern,
    Limits,
    Match,
    MatchAll,
    MatchNone,
    Principal,
    PrincipalKind,
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


# -- the oracle: the reasons as they were computed before the needs existed ------------------------
# A frozen copy of policy/ir.py's userspace_reason / rule_userspace_reason; it goes once the
# resolve pass's consumers have switched (the property below then has nothing left to compare).

def _old_reason(m: Match | DaemonMatch) -> str | None:
    match m:
        case HostPattern() | HostClass():
            return "needs the client's host name (a DNS lookup)"
        case UserAt():
            return "needs the client's ident user name"
        case Principal(kind=kind):
            return f"needs Unix peer credentials ({kind})"
        case AnyOf(items=items):
            return next((r for i in items if (r := _old_reason(i)) is not None), None)
        case Except(include=include, exclude=exclude):
            return _old_reason(include) or _old_reason(exclude)
        case DaemonPattern(server=server):
            return None if server is None else "needs the server address (daemon@host)"
        case MatchAll() | MatchNone() | AddrMatch():
            return None
        case _:
            assert_never(m)


def _old_rule_reason(rule: Rule) -> str | None:
    r = _old_reason(rule.match)
    if r is None and rule.daemons is not None:
        r = _old_reason(rule.daemons)
    if r is None and rule.limits is not None and not rule.limits.is_empty():
        r = "has connection limits"
    return r


leaves: st.SearchStrategy[Match] = st.one_of(
    st.just(MatchAll()),
    st.just(MatchNone()),
    st.just(NET),
    st.sampled_from([HostPattern(".x.org"), HostClass("KNOWN"), HostClass("LOCAL")]),
    st.builds(Principal, st.sampled_from(typing.get_args(PrincipalKind)), st.just(1)),
)
matches: st.SearchStrategy[Match] = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda items: AnyOf(tuple(items)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(Except, inner, inner),
        st.builds(UserAt, st.just("u"), inner),
    ),
    max_leaves=8,
)
daemon_leaves: st.SearchStrategy[DaemonMatch] = st.one_of(
    st.just(MatchAll()),
    st.builds(DaemonPattern, st.sampled_from(["sshd", "ALL"]), st.one_of(st.none(), matches)),
)
daemons: st.SearchStrategy[DaemonMatch] = st.recursive(
    daemon_leaves,
    lambda inner: st.one_of(
        st.builds(lambda items: AnyOf(tuple(items)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(Except, inner, inner),
    ),
    max_leaves=4,
)
limits = st.one_of(
    st.none(),
    st.builds(
        Limits,
        st.one_of(st.none(), st.just(2)),
        st.one_of(st.none(), st.just(Rate(3, 60))),
        st.one_of(st.none(), st.just(9)),
        st.one_of(st.none(), st.just(Rate(9, 1))),
        st.one_of(st.none(), st.just(60.0)),
    ),
)


@settings(max_examples=500, deadline=None)
@given(matches, st.one_of(st.none(), daemons), limits)
def test_rule_reason_is_the_old_reason(m: Match, d: DaemonMatch | None, lim: Limits | None) -> None:
    rule = Rule(Action.DENY, m, SPAN, "r", d, (), lim)
    assert rule_reason(rule) == _old_rule_reason(rule)
    assert (rule_needs(rule) == ()) == (_old_rule_reason(rule) is None)
