"""What deciding a rule takes beyond the packet's source address, as typed facts.

A kernel filter sees one packet: its source address. A rule that needs anything more — the
client's host name, its ident user, its Unix credentials, the server address of a
``daemon@host`` list, or connection counts for a limit — cannot be enforced there, and every
consumer has to know which: the compilers refuse such rules, the exporters skip or refuse
them, the proxy decides whether to look names up, lint warns. Each of them reads the facts
computed here (and, per service, once in ``sockgate.resolve``), never an English message:
``need_text`` is the one place the wording lives.

``Need.SERVER_ADDRESS`` is syntactic: any ``daemon@host`` part of a rule's daemon list, even
where the daemon name alone would settle whether the rule applies.

Every walker dispatches with ``match`` and ends in ``assert_never``, so a new node kind is a
type error here, not a rule silently counted as address-only (which would fail open).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import assert_never

from sockgate.policy.ir import (
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
    Rule,
    UserAt,
)


class Need(str, Enum):
    """One thing beyond the source address that deciding a rule takes."""

    HOST_NAME = "host_name"  # HostPattern, HostClass (a DNS lookup)
    IDENT_USER = "ident_user"  # UserAt (RFC 1413)
    CREDENTIALS = "credentials"  # Principal (SO_PEERCRED and friends)
    SERVER_ADDRESS = "server_address"  # a daemon@host part in the rule's daemon list
    CONCURRENCY_LIMIT = "concurrency_limit"  # limit concurrent [... per source]
    SOURCE_RATE_LIMIT = "source_rate_limit"  # limit rate ... per source, and its ban
    TOTAL_RATE_LIMIT = "total_rate_limit"  # limit rate (service-wide count)


LIMIT_NEEDS = frozenset({Need.CONCURRENCY_LIMIT, Need.SOURCE_RATE_LIMIT, Need.TOTAL_RATE_LIMIT})


@dataclass(frozen=True)
class MatchFacts:
    """What a match tree needs and uses."""

    needs: tuple[Need, ...]  # in the order met (depth first), each once
    principal: PrincipalKind | None  # the kind of the first credential test met
    uses_address: bool  # an address test somewhere


def match_facts(m: Match) -> MatchFacts:
    """The facts of ``m``, walked depth first in the order the tree is written."""
    needs: list[Need] = []
    principals: list[PrincipalKind] = []
    addresses = _walk(m, needs, principals)
    return MatchFacts(tuple(dict.fromkeys(needs)), principals[0] if principals else None, addresses)


def _walk(m: Match, needs: list[Need], principals: list[PrincipalKind]) -> bool:
    """Append what ``m`` needs to ``needs`` (and its credential kinds to ``principals``);
    whether it tests an address."""
    match m:
        case MatchAll() | MatchNone():
            return False
        case AddrMatch():
            return True
        case HostPattern() | HostClass():
            needs.append(Need.HOST_NAME)
            return False
        case Principal(kind=kind):
            needs.append(Need.CREDENTIALS)
            principals.append(kind)
            return False
        case UserAt(host=host):
            needs.append(Need.IDENT_USER)
            return _walk(host, needs, principals)
        case AnyOf(items=items):
            return any([_walk(i, needs, principals) for i in items])  # (a list: walk every item)
        case Except(include=include, exclude=exclude):
            inc = _walk(include, needs, principals)
            return _walk(exclude, needs, principals) or inc
        case _:
            assert_never(m)


def daemon_needs(d: DaemonMatch | None) -> tuple[Need, ...]:
    """``(SERVER_ADDRESS,)`` when a daemon list has a ``daemon@host`` part anywhere, else ()."""
    return (Need.SERVER_ADDRESS,) if d is not None and _has_server(d) else ()


def _has_server(d: DaemonMatch) -> bool:
    match d:
        case DaemonPattern(server=server):
            return server is not None
        case MatchAll():
            return False
        case AnyOf(items=items):
            return any(_has_server(i) for i in items)
        case Except(include=include, exclude=exclude):
            return _has_server(include) or _has_server(exclude)
        case _:
            assert_never(d)


def limit_needs(limits: Limits | None) -> tuple[Need, ...]:
    """The kinds of connection limit in ``limits`` (a ban goes with the source rate)."""
    if limits is None:
        return ()
    out = []
    if limits.concurrent_per_source is not None or limits.concurrent_total is not None:
        out.append(Need.CONCURRENCY_LIMIT)
    if limits.rate_per_source is not None or limits.ban_seconds is not None:
        out.append(Need.SOURCE_RATE_LIMIT)
    if limits.rate_total is not None:
        out.append(Need.TOTAL_RATE_LIMIT)
    return tuple(out)


def rule_needs(rule: Rule) -> tuple[Need, ...]:
    """What ``rule`` needs: its match's needs, then its daemon list's, then its limits' —
    the order in which ``rule_reason`` names the first."""
    return _rule_needs(rule, match_facts(rule.match))


def _rule_needs(rule: Rule, facts: MatchFacts) -> tuple[Need, ...]:
    return tuple(dict.fromkeys(facts.needs + daemon_needs(rule.daemons) + limit_needs(rule.limits)))


def rule_facts(rule: Rule) -> tuple[tuple[Need, ...], PrincipalKind | None]:
    """``rule_needs(rule)`` and the kind of its first credential test, in one walk."""
    facts = match_facts(rule.match)
    return _rule_needs(rule, facts), facts.principal


def need_text(need: Need, principal: PrincipalKind | None = None) -> str:
    """Why a rule with ``need`` cannot be decided from the source address alone, as the
    messages of ``run``, ``attach``, ``export`` and ``lint`` say it (``principal``: the kind
    of credential, for ``CREDENTIALS``)."""
    match need:
        case Need.HOST_NAME:
            return "needs the client's host name (a DNS lookup)"
        case Need.IDENT_USER:
            return "needs the client's ident user name"
        case Need.CREDENTIALS:
            return "needs Unix peer credentials" + ("" if principal is None else f" ({principal})")
        case Need.SERVER_ADDRESS:
            return "needs the server address (daemon@host)"
        case Need.CONCURRENCY_LIMIT | Need.SOURCE_RATE_LIMIT | Need.TOTAL_RATE_LIMIT:
            return "has connection limits"
        case _:
            assert_never(need)


def rule_reason(rule: Rule) -> str | None:
    """Why ``rule`` cannot be decided from the source address alone (its first need), or
    None when the address decides it."""
    needs, principal = rule_facts(rule)
    return need_text(needs[0], principal) if needs else None
