"""Every dispatcher over the closed node sets (``Match``, ``DaemonMatch``, principal kinds)
handles every member: called with one instance of each kind it returns the documented value
and never raises. mypy --strict proves the same statically (each ends in ``assert_never``);
this test keeps the two in step when a kind is added to the union but a test forgets it."""

from __future__ import annotations

import importlib
import ipaddress
import typing

import pytest

from sockgate.resolve import ranges
import sockgate.resolve as resolve
from sockgate.peers import Peer
from sockgate.policy import coverage, intervals, ir, lint, needs, printer
from sockgate.policy.ir import (
    AddrMatch,
    AnyOf,
    DaemonMatch,
    DaemonPattern,
    Except,
    HostClass,
    HostPattern,
    Match,
    MatchAll,
    MatchNone,
    Principal,
    PrincipalKind,
    UserAt,
)
from sockgate.resolve import kernelpart

decide = importlib.import_module("sockgate.decide")  # the module (the package exports a function of that name)

NET = ipaddress.ip_network("10.0.0.0/8")
ADDR = AddrMatch((NET,), "@office")
ONE: dict[type, Match] = {
    MatchAll: MatchAll(),
    MatchNone: MatchNone(),
    AddrMatch: ADDR,
    HostPattern: HostPattern(".example.org"),
    HostClass: HostClass("KNOWN"),
    Principal: Principal("uid", 1000),
    UserAt: UserAt("bob", MatchAll()),
    AnyOf: AnyOf((ADDR, MatchNone())),
    Except: Except(MatchAll(), ADDR),
}
DAEMONS: dict[type, DaemonMatch] = {
    DaemonPattern: DaemonPattern("sshd"),
    MatchAll: MatchAll(),
    AnyOf: AnyOf((DaemonPattern("ftpd"), DaemonPattern("sshd"))),
    Except: Except(MatchAll(), DaemonPattern("ftpd")),
}
PEER = Peer(address=ipaddress.ip_address("10.1.2.3"), name="h.example.org", uid=1000, user="bob")


def _kinds(alias: object) -> set[type]:
    """The classes of a union alias (``"AnyOf[Match]"`` is a forward reference at run time)."""
    return {getattr(ir, k.__forward_arg__.split("[")[0]) if isinstance(k, typing.ForwardRef) else k
            for k in typing.get_args(alias)}


def test_samples_cover_every_kind() -> None:
    assert set(ONE) == _kinds(Match)
    assert set(DAEMONS) == _kinds(DaemonMatch)


# kind -> documented value, per dispatcher
EXPECTED = {
    "decide.matches": (
        lambda m: decide.matches(m, PEER),
        {MatchAll: True, MatchNone: False, AddrMatch: True, HostPattern: True, HostClass: True,
         Principal: True, UserAt: True, AnyOf: True, Except: False},
    ),
    "intervals.match_ranges": (
        lambda m: intervals.match_ranges(m, 4),
        {MatchAll: ((0, 2**32),), MatchNone: (), AddrMatch: ((0x0A000000, 0x0B000000),), HostPattern: (),
         HostClass: (), Principal: (), UserAt: (), AnyOf: ((0x0A000000, 0x0B000000),),
         Except: ((0, 0x0A000000), (0x0B000000, 2**32))},
    ),
    "printer.format_match": (
        lambda m: printer.format_match(m, {}),
        {MatchAll: "all", MatchNone: "{ }", HostPattern: "host .example.org", HostClass: "host KNOWN",
         Principal: "uid 1000", UserAt: "user bob"},
    ),
    "lint._set_labels": (
        lint._set_labels,
        {MatchAll: [], MatchNone: [], AddrMatch: ["@office"], HostPattern: [], HostClass: [], Principal: [],
         UserAt: [], AnyOf: ["@office"], Except: ["@office"]},
    ),
    "ranges._matches_no_address": (
        ranges._matches_no_address,
        {MatchAll: True, MatchNone: False, AddrMatch: False, HostPattern: False, HostClass: False,
         Principal: False, UserAt: False, AnyOf: False, Except: True},
    ),
    "kernelpart.over": (
        kernelpart.over,
        {MatchAll: MatchAll(), MatchNone: MatchNone(), AddrMatch: ADDR, HostPattern: MatchAll(),
         HostClass: MatchAll(), Principal: MatchAll(), UserAt: MatchAll()},
    ),
    "kernelpart.under": (
        kernelpart.under,
        {MatchAll: MatchAll(), MatchNone: MatchNone(), AddrMatch: ADDR, HostPattern: MatchNone(),
         HostClass: MatchNone(), Principal: MatchNone(), UserAt: MatchNone()},
    ),
    "needs.match_facts host name": (
        lambda m: needs.Need.HOST_NAME in needs.match_facts(m).needs,
        {MatchAll: False, MatchNone: False, AddrMatch: False, HostPattern: True, HostClass: True,
         Principal: False, UserAt: False, AnyOf: False, Except: False},
    ),
    "coverage.cover atoms": (
        lambda m: coverage.cover(m).atoms,
        {MatchAll: frozenset(), MatchNone: frozenset(), AddrMatch: frozenset(),
         HostPattern: frozenset([ONE[HostPattern]]), HostClass: frozenset([ONE[HostClass]]),
         Principal: frozenset([ONE[Principal]]), UserAt: frozenset([ONE[UserAt]]), AnyOf: frozenset(),
         Except: frozenset()},
    ),
    "needs.match_facts reason": (
        lambda m: (lambda f: needs.need_text(f.needs[0], f.principal) if f.needs else None)(needs.match_facts(m)),
        {MatchAll: None, MatchNone: None, AddrMatch: None, HostPattern: "needs the client's host name (a DNS lookup)",
         HostClass: "needs the client's host name (a DNS lookup)", Principal: "needs Unix peer credentials (uid)",
         UserAt: "needs the client's ident user name", AnyOf: None, Except: None},
    ),
    "coverage._unlabel": (
        coverage._unlabel,
        {MatchAll: MatchAll(), MatchNone: MatchNone(), AddrMatch: AddrMatch((NET,)),
         HostPattern: ONE[HostPattern], HostClass: ONE[HostClass], Principal: ONE[Principal],
         UserAt: ONE[UserAt], AnyOf: AnyOf((AddrMatch((NET,)), MatchNone())),
         Except: Except(MatchAll(), AddrMatch((NET,)))},
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("kind", sorted(ONE, key=lambda k: k.__name__), ids=lambda k: k.__name__)
def test_match_dispatcher_handles_every_kind(name: str, kind: type) -> None:
    call, want = EXPECTED[name]
    got = call(ONE[kind])  # never raises, never falls through
    if kind in want:
        assert got == want[kind]


DAEMON_EXPECTED = {
    "decide.server_matches": (
        lambda d: decide.server_matches(d, "sshd", PEER),
        {DaemonPattern: True, MatchAll: True, AnyOf: True, Except: True},
    ),
    "needs.daemon_needs": (
        needs.daemon_needs,
        {DaemonPattern: (), MatchAll: (), AnyOf: (), Except: ()},
    ),
    "resolve.literal_daemons": (
        resolve.literal_daemons,
        {DaemonPattern: ["sshd"], MatchAll: [], AnyOf: ["ftpd", "sshd"], Except: []},
    ),
}


@pytest.mark.parametrize("name", sorted(DAEMON_EXPECTED))
@pytest.mark.parametrize("kind", sorted(DAEMONS, key=lambda k: k.__name__), ids=lambda k: k.__name__)
def test_daemon_dispatcher_handles_every_kind(name: str, kind: type) -> None:
    call, want = DAEMON_EXPECTED[name]
    assert call(DAEMONS[kind]) == want[kind]


@pytest.mark.parametrize("kind", typing.get_args(PrincipalKind))
def test_every_principal_kind_is_decided(kind: str) -> None:
    value: str | int = "/usr/bin/x" if kind == "exe" else 1000
    ident = 1000 if kind in ("user", "group") else None
    peer = Peer(uid=1000, gid=1000, pid=1000, exe="/usr/bin/x")
    assert decide.matches(Principal(kind, value, ident), peer) is True  # type: ignore[arg-type]
