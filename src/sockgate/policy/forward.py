"""Exact host names in a kernel filter: which names a policy uses, and the policy with each
replaced by the addresses it stands for.

A kernel filter sees a source address, never a name. libwrap matches an exact name ``N``
(``allow host web.example.com``, hosts.allow ``sshd: web.example.com``) only for a peer whose
*verified* name is ``N``: the reverse lookup of the peer's address gives ``N`` and the forward
lookup of ``N`` lists that address again under the canonical name ``N`` (``lookup.py``). So at
given DNS answers the peers that match ``N`` lie in::

    {a in A(N) + AAAA(N) : N in PTR(a)}

and that set, computed when the policy is compiled and refreshed when the records' shortest
TTL runs out (``agent/forward.py``), is what the rule stands for in the kernel. Which side of
the set an address may fall on depends on what a match does there — its *polarity*: a match
in an allow rule (or in the EXCEPT part of a deny rule) admits, one in a deny rule (or the
EXCEPT part of an allow rule) refuses; every EXCEPT flips it. The two sets are bounded so
that the kernel never admits a peer libwrap would refuse at those answers:

* where a match admits: ``admitted`` — ``N`` must be the canonical name of its forward lookup
  (through a CNAME libwrap sees another name: *paranoid*), and *every* PTR name of ``a`` must
  be ``N`` (the C resolver hands libwrap one of them, in any order); an address whose reverse
  lookup failed is left out;
* where a match refuses: ``matched`` — any PTR name of ``a`` is ``N``, and an address whose
  reverse lookup failed is kept in.

A name without answers (its lookup failed, or its answers expired without a refresh): an
admitting match becomes ``AddrMatch(())`` (nobody); a refusing match takes the ``matched``
set of the name's last answer when the caller has one (``last``: refusing more than libwrap
could now, never less — and a name whose owner stops its DNS cannot make the service
uncompilable), else it stays the ``HostPattern`` — the rule then still needs a name lookup,
the kernel refuses it, and the agent reports the service, as for any rule that needs user
space. Only exact names are
replaced: ``.suffix``, wildcards, KNOWN/UNKNOWN/PARANOID/LOCAL and ``user@host`` keep their
refusal with its reason, and ``daemon@host`` server parts are not touched.

Pure: the answers arrive as values (``Lookup``); spans, rule texts and the written name (as
the ``AddrMatch`` label) are kept for messages.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import assert_never

from sockgate.policy import hostmatch, literals
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    Except,
    HostClass,
    HostPattern,
    IPAddress,
    IPNetwork,
    Match,
    MatchAll,
    MatchNone,
    Policy,
    Principal,
    Rule,
    Service,
    UserAt,
)

# Words libwrap's string_match gives a meaning of their own (hosts_access): never a host name.
_WORDS = frozenset({"all", "known", "unknown", "paranoid", "local"})


@dataclass(frozen=True)
class Reverse:
    """One address of a forward answer and the names its reverse lookup gave (None: that
    lookup failed — not the same as no name)."""

    address: IPAddress
    names: tuple[str, ...] | None


@dataclass(frozen=True)
class Lookup:
    """What DNS said about name ``name`` (folded, no trailing dot): the canonical name of its
    forward lookup and each address with its reverse names."""

    name: str
    canonical: str
    addresses: tuple[Reverse, ...]


def key(name: str) -> str:
    """How names are compared: ASCII case folded, a trailing root dot dropped."""
    return hostmatch.fold(name).removesuffix(".")


def exact_name(m: HostPattern) -> str | None:
    """The name (``key`` form) when ``m`` matches exactly one verified host name, else None."""
    p = m.pattern
    if not literals.is_exact_host_name(p):
        return None
    if m.hosts_access and (hostmatch.fold(p) in _WORDS or not hostmatch.not_inaddr(p)):
        return None  # a libwrap word, or digits and dots compared with the address text
    return key(p)


def forward_names(policy: Policy) -> dict[str, frozenset[Action]]:
    """Every exact name the policy's rules use, with the polarities it is used in."""
    return rule_names([r for s in policy.services for r in s.rules] + list(policy.rules))


def rule_names(rules: Iterable[Rule]) -> dict[str, frozenset[Action]]:
    """The exact names ``rules`` use (one service's: ``Policy.service(name).rules``, so that a
    changed answer recompiles only the services that use the name)."""
    found: dict[str, set[Action]] = {}
    for rule in rules:
        _names(rule.match, rule.action is Action.DENY, found)
    return {n: frozenset(a) for n, a in found.items()}


def _names(m: Match, deny: bool, found: dict[str, set[Action]]) -> None:
    match m:
        case HostPattern():
            name = exact_name(m)
            if name is not None:
                found.setdefault(name, set()).add(Action.DENY if deny else Action.ALLOW)
        case AnyOf(items=items):
            for i in items:
                _names(i, deny, found)
        case Except(include=include, exclude=exclude):
            _names(include, deny, found)
            _names(exclude, not deny, found)
        case MatchAll() | MatchNone() | AddrMatch() | HostClass() | Principal() | UserAt():
            pass  # (the same nodes ``_sub`` leaves alone)
        case _:
            assert_never(m)


def admitted(lookup: Lookup) -> tuple[IPAddress, ...]:
    """The addresses a match that admits may take for the name (see the module docstring)."""
    if key(lookup.canonical) != lookup.name:
        return ()
    return _unique(r.address for r in lookup.addresses
                   if r.names and all(key(n) == lookup.name for n in r.names))


def matched(lookup: Lookup) -> tuple[IPAddress, ...]:
    """The addresses a match that refuses must take for the name (see the module docstring)."""
    return _unique(r.address for r in lookup.addresses
                   if r.names is None or any(key(n) == lookup.name for n in r.names))


def _unique(addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    out: dict[IPAddress, None] = {}
    for a in addresses:
        out[unmapped_address(a)] = None
    return tuple(sorted(out, key=lambda a: (a.version, a)))


def unmapped_address(a: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` as the IPv4 address it stands for (a peer arrives as one or the other)."""
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


def _routes(addresses: tuple[IPAddress, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(a) for a in addresses)


def substitute(policy: Policy, lookups: Mapping[str, Lookup], last: Mapping[str, Lookup] | None = None) -> Policy:
    """``policy`` with every exact name replaced by its address set (``lookups`` keyed by
    ``key``; a name missing from it failed). ``last``: the last answers of names that have none
    in force now — a match that *refuses* by such a name keeps refusing those addresses (closed:
    it refuses more than libwrap could now, never less), where it would otherwise stay in user
    space and make its service uncompilable. Services keep their spans; the digest follows
    the addresses, so a changed answer is a changed program."""
    answers = _Answers(lookups, last or {})
    services = tuple(_service(s, answers) for s in policy.services)
    rules = tuple(_rule(r, answers) for r in policy.rules)
    out = replace(policy, services=services, rules=rules)
    digest = out.digest()
    return replace(out, services=tuple(replace(s, policy_digest=digest) for s in services))


def substitute_service(service: Service, lookups: Mapping[str, Lookup],
                       last: Mapping[str, Lookup] | None = None) -> Service:
    """One service with its exact names replaced (``Policy.service`` of a substituted policy)."""
    return _service(service, _Answers(lookups, last or {}))


@dataclass(frozen=True)
class _Answers:
    """The answers in force, and the last answers of the names without one (refusing side)."""

    now: Mapping[str, Lookup]
    last: Mapping[str, Lookup]

    def get(self, name: str, deny: bool) -> Lookup | None:
        found = self.now.get(name)
        return self.last.get(name) if found is None and deny else found


def _service(s: Service, lookups: _Answers) -> Service:
    rules = tuple(_rule(r, lookups) for r in s.rules)
    return s if all(a is b for a, b in zip(rules, s.rules)) else replace(s, rules=rules)


def _rule(r: Rule, lookups: _Answers) -> Rule:
    m = _sub(r.match, r.action is Action.DENY, lookups)
    return r if m is r.match else replace(r, match=m)


def _sub(m: Match, deny: bool, lookups: _Answers) -> Match:
    """``m`` with its exact names replaced; ``deny``: whether a match here refuses."""
    match m:
        case HostPattern():
            name = exact_name(m)
            if name is None:
                return m
            found = lookups.get(name, deny)
            if found is None:
                return m if deny else AddrMatch((), m.pattern)
            return AddrMatch(_routes(matched(found) if deny else admitted(found)), m.pattern)
        case AnyOf(items=items):
            subs = tuple(_sub(i, deny, lookups) for i in items)
            return m if all(a is b for a, b in zip(subs, items)) else AnyOf(subs)
        case Except(include=include, exclude=exclude):
            inc, exc = _sub(include, deny, lookups), _sub(exclude, not deny, lookups)
            return m if inc is include and exc is exclude else Except(inc, exc)
        case MatchAll() | MatchNone() | AddrMatch() | HostClass() | Principal() | UserAt():
            return m  # (user@host needs the ident user whatever its host part is)
        case _:
            assert_never(m)
