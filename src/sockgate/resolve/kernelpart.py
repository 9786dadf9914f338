"""Which part of a service a kernel filter may enforce, when user space enforces the rest.

The proxy puts this part on its own listeners (``ResolvedService.kernel_part``); ``check``,
``inetd`` and the proxy decide with ``assume_unlearned`` and ``surely_allowed_service``.

The kernel sees only the source address. It may drop a packet only when the engine would
deny that source *whatever* user space later learns about it (host name, ident user, Unix
credentials, server address, limits). ``kernel_service(service)`` builds an address-only
service with exactly that property, rule by rule, keeping the order:

* an **allow** rule that needs user space becomes ``allow <over-approximation>``: every
  address for which the rule *might* hold (a host-name or credential test may hold for any
  address, so it becomes ``all``; ``10.0.0.0/8 except host .x`` becomes ``10.0.0.0/8``);
* a **deny** rule that needs user space becomes ``deny <under-approximation>``: only the
  addresses for which it *surely* holds (a name test surely holds for none, so it drops out;
  ``10.0.0.0/8 except host .x`` surely holds for no address either);
* limits are stripped (an allow rule with a limit may still refuse — user space does that);
* the default stays.

Why this is exact enough: take any source address ``a`` and any user-space facts. Walk the
rules. While a rule surely does not match ``a`` both services skip it; if the real rule
matches and is ``allow``, the kernel rule (a superset) also matches ``a`` first or an earlier
kernel allow did — the kernel passes. If the kernel reaches a ``deny`` for ``a``, that deny
surely holds, and every earlier real rule that could have matched ``a`` was a deny (allows
were over-approximated) — so the engine denies ``a`` too. Hence kernel-deny ⇒ engine-deny for
all facts, and address-only rules are kept unchanged, so a policy without user-space rules
is enforced in the kernel in full.

The dual, ``surely_allowed_service(service)``, decides a peer whose host-name lookup sockgate
cut short (its own timeout, a bound of the name layer, an error): libwrap would have waited
for the resolver and decided with whatever name came back, so such a peer may be let in only
where *every* name would let it in. Allow rules keep ``under`` their match (only what surely
holds), deny rules deny ``over`` theirs (wherever they might hold); by the walk above with the
roles swapped, surely-allowed ⇒ engine-allowed under every name (``decide.decide_unnamed``). A lookup
that finished without a name (no PTR, NXDOMAIN, a forward mismatch) is not cut short: that is
libwrap's unknown or paranoid, decided normally.

``assume_unlearned(service, ident=, server_name=)`` is the same idea for facts sockgate never
learns at all: the client's ident user (RFC 1413 is not queried) and the server's host name
(not looked up). libwrap would learn them, so a rule that needs one is rewritten by the
polarity of its place: where a match makes the rule deny (a deny rule, or an allow rule's
EXCEPT part) it is assumed to hold (``user@host`` becomes ``host``; a name test on the server
side of ``daemon@host`` becomes ``all``), where it makes the rule admit it is assumed not to
(``none``). Every EXCEPT flips the polarity. Address parts stay exact. By the walk above:
rewritten-allows ⇒ engine-allows for every user and server name. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import assert_never

from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    Applies,
    DaemonMatch,
    DaemonPattern,
    Except,
    HostClass,
    HostPattern,
    Match,
    MatchAll,
    MatchNone,
    Principal,
    Rule,
    Service,
    UserAt,
    applies,
)
from sockgate.policy.needs import daemon_needs


def over(m: Match) -> Match:
    """A match that holds for every address for which ``m`` might hold."""
    match m:
        case MatchAll() | MatchNone() | AddrMatch():
            return m
        case HostPattern() | HostClass() | Principal():
            return MatchAll()
        case UserAt(host=host):
            return over(host)
        case AnyOf(items=items):
            return _any(tuple(over(i) for i in items))
        case Except(include=include, exclude=exclude):
            return _except(over(include), under(exclude))
        case _:
            assert_never(m)


def under(m: Match) -> Match:
    """A match that holds only for addresses for which ``m`` surely holds."""
    match m:
        case MatchAll() | MatchNone() | AddrMatch():
            return m
        case HostPattern() | HostClass() | Principal() | UserAt():
            return MatchNone()
        case AnyOf(items=items):
            return _any(tuple(under(i) for i in items))
        case Except(include=include, exclude=exclude):
            return _except(under(include), over(exclude))
        case _:
            assert_never(m)


def _any(items: tuple[Match, ...]) -> Match:
    if any(isinstance(i, MatchAll) for i in items):
        return MatchAll()
    kept = tuple(i for i in items if not isinstance(i, MatchNone))
    if not kept:
        return MatchNone()
    return kept[0] if len(kept) == 1 else AnyOf(kept)


def _except(include: Match, exclude: Match) -> Match:
    if isinstance(include, MatchNone) or isinstance(exclude, MatchAll):
        return MatchNone()
    if isinstance(exclude, MatchNone):
        return include
    return Except(include, exclude)


def _daemons_apply(rule: Rule, service: str) -> bool | None:
    """Does the rule's daemon list select ``service``: True/False, or None when that depends on
    the server address (``daemon@host``)."""
    d = rule.daemons
    if applies(d, service) is Applies.NEVER:
        return False
    if daemon_needs(d):
        return None  # a daemon@host part: decided per connection, even where the name alone would do
    return True


def kernel_rule(rule: Rule, service: str) -> Rule | None:
    """The address-only stand-in of ``rule`` (None: the rule never applies in the kernel)."""
    applies = _daemons_apply(rule, service)
    if applies is False:
        return None
    if rule.action is Action.ALLOW:
        m = over(rule.match)
    else:
        m = MatchNone() if applies is None else under(rule.match)
    if isinstance(m, MatchNone):
        return None
    return replace(rule, match=m, daemons=None, limits=None, options=())


def kernel_service(service: Service) -> Service:
    """The service the kernel filter enforces (see the module docstring for why it is safe)."""
    rules: list[Rule] = []
    for r in service.rules:
        k = kernel_rule(r, service.name)
        if k is None:
            continue
        rules.append(k)
        if k.action is Action.ALLOW and isinstance(k.match, MatchAll):
            break  # nothing after an allow-all can be denied in the kernel
    return replace(service, rules=tuple(rules), limits=None, listen=(), forward=None)


def surely_allowed_service(service: Service) -> Service:
    """The service that allows only where ``service`` allows whatever user space would learn
    (a host name above all); see the module docstring."""
    rules = tuple(replace(r, match=under(r.match) if r.action is Action.ALLOW else over(r.match)) for r in service.rules)
    return replace(service, rules=rules)


Node = Match | DaemonMatch  # one rewriter for both trees
Leaf = Callable[[Node, bool], Node]


def _rewrite(m: Node, deny: bool, leaf: Leaf) -> Node:
    """``m`` with ``leaf(node, deny)`` applied to every leaf; ``deny``: whether a match here
    makes the rule deny (flipped under every EXCEPT)."""
    if isinstance(m, AnyOf):
        return AnyOf(tuple(_rewrite(i, deny, leaf) for i in m.items))  # type: ignore[return-value]
    if isinstance(m, Except):
        return Except(_rewrite(m.include, deny, leaf), _rewrite(m.exclude, not deny, leaf))  # type: ignore[return-value]
    return leaf(m, deny)


def _assumed(holds: bool) -> Match:
    return MatchAll() if holds else MatchNone()


def _no_ident(m: Node, deny: bool) -> Node:
    """``user@host`` without an ident answer: the user matches where that denies, else not."""
    if isinstance(m, UserAt):
        return _rewrite(m.host, deny, _no_ident) if deny else MatchNone()
    return m


def _no_server_name(m: Node, deny: bool) -> Node:
    """A name test on the server side: holds where that denies, else not (addresses exact)."""
    return _assumed(deny) if isinstance(m, (HostPattern, HostClass)) else m


def _daemon_no_server_name(d: Node, deny: bool) -> Node:
    if isinstance(d, DaemonPattern) and d.server is not None:
        return replace(d, server=_rewrite(d.server, deny, _no_server_name))  # type: ignore[arg-type]
    return d


def needs_unlearned(rule: Rule, *, ident: bool, server_name: bool) -> bool:
    """Whether ``assume_unlearned`` rewrites ``rule``."""
    return assume_rule(rule, ident=ident, server_name=server_name) is not rule


def assume_rule(rule: Rule, *, ident: bool, server_name: bool) -> Rule:
    """``rule`` decided without the facts the caller never learns (``rule`` itself if none)."""
    deny = rule.action is Action.DENY
    match: Match = _rewrite(rule.match, deny, _no_ident) if ident else rule.match  # type: ignore[assignment]
    daemons = rule.daemons
    if server_name and daemons is not None:
        daemons = _rewrite(daemons, deny, _daemon_no_server_name)  # type: ignore[assignment]
    if match == rule.match and daemons == rule.daemons:
        return rule
    return replace(rule, match=match, daemons=daemons)


def assume_unlearned(service: Service, *, ident: bool, server_name: bool) -> Service:
    """``service`` for a caller that never learns the client's ident user (``ident``) or the
    server's host name (``server_name``): it allows a peer only where ``service`` allows it
    for every user and every server name (see the module docstring)."""
    rules = tuple(assume_rule(r, ident=ident, server_name=server_name) for r in service.rules)
    if all(a is b for a, b in zip(rules, service.rules)):
        return service
    return replace(service, rules=rules)
