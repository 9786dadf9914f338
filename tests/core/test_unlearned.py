"""Facts sockgate never learns (the client's ident user, the server's host name) are assumed
to be whatever denies (``kernelpart.assume_unlearned``): the proxy and ``check`` never grant
what libwrap, learning them, could refuse."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.cli.main import main
from sockgate.decide import decide_service
from sockgate.peers import Peer
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    DaemonPattern,
    Except,
    HostClass,
    HostPattern,
    Match,
    MatchAll,
    Rule,
    Service,
    UserAt,
)
from sockgate.policy.source import Span
from sockgate.resolve.kernelpart import assume_unlearned

A = ipaddress.ip_address
N = ipaddress.ip_network
USERS = (None, "mallory", "bob", "unknown")
NAMES = (None, "localhost", "gw", "www.example")
ADDRS = (A("127.0.0.1"), A("10.1.2.3"))

addr = st.sampled_from([AddrMatch((N("127.0.0.1/32"),)), AddrMatch((N("10.0.0.0/8"),))])
named = st.one_of(
    st.sampled_from(["localhost", "gw", ".example", "127.0.0.1"]).map(lambda p: HostPattern(p, hosts_access=True)),
    st.sampled_from(["KNOWN", "UNKNOWN", "PARANOID", "LOCAL"]).map(HostClass),  # type: ignore[arg-type]
)
host: st.SearchStrategy[Match] = st.recursive(
    st.one_of(st.just(MatchAll()), addr, named),
    lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=3).map(lambda i: AnyOf(tuple(i))),
                            st.tuples(inner, inner).map(lambda t: Except(*t))),
    max_leaves=4,
)
client: st.SearchStrategy[Match] = st.recursive(
    st.one_of(host, st.tuples(st.sampled_from(["mallory", "ALL", "KNOWN", "UNKNOWN"]), host).map(lambda t: UserAt(*t))),
    lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=3).map(lambda i: AnyOf(tuple(i))),
                            st.tuples(inner, inner).map(lambda t: Except(*t))),
    max_leaves=4,
)
daemon = st.one_of(st.none(), host).map(lambda m: DaemonPattern("myd", server=m))
daemons = st.one_of(
    st.none(), st.just(MatchAll()), daemon,
    st.lists(daemon, min_size=1, max_size=2).map(lambda i: AnyOf(tuple(i))),  # type: ignore[arg-type]
    st.tuples(st.one_of(st.just(MatchAll()), daemon), daemon).map(lambda t: Except(*t)),
)
rule = st.builds(
    lambda action, m, d: Rule(action, m, Span("t", 1, 1), "r", daemons=d),  # type: ignore[arg-type]
    st.sampled_from(list(Action)), client, daemons,
)
services = st.builds(lambda rs, dflt: Service("myd", tuple(rs), dflt),
                     st.lists(rule, max_size=4), st.sampled_from(list(Action)))


@settings(max_examples=300, deadline=None)
@given(services, st.sampled_from(ADDRS), st.sampled_from(NAMES), st.booleans(), st.sampled_from(ADDRS))
def test_assumed_allow_means_allowed_whatever_the_unlearned_facts(
    service: Service, address: ipaddress.IPv4Address, name: str | None, verified: bool, server: ipaddress.IPv4Address
) -> None:
    peer = Peer(address=address, name=name, name_verified=verified, server_address=server)
    if not decide_service(assume_unlearned(service, ident=True, server_name=True), peer).allowed:
        return
    for user in USERS:
        for server_name in NAMES:
            real = Peer(address=address, name=name, name_verified=verified, user=user,
                        server_address=server, server_name=server_name)
            assert decide_service(service, real).allowed, (user, server_name)


@given(services, st.sampled_from(ADDRS), st.sampled_from(USERS))
def test_nothing_unlearned_is_nothing_rewritten(service: Service, address: ipaddress.IPv4Address, user: str | None) -> None:
    assert assume_unlearned(service, ident=False, server_name=False) is service


def _check(tmp_path: Path, deny: str, *argv: str) -> int:
    (tmp_path / "allow").write_text("")
    (tmp_path / "deny").write_text(deny)
    return main(["check", "--hosts-allow", str(tmp_path / "allow"), "--hosts-deny", str(tmp_path / "deny"),
                 "--no-resolve", *argv])


def test_server_name_deny_is_not_skipped(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """tcpdmatch -d myd@127.0.0.1 127.0.0.1 denies ``myd@localhost : ALL`` (127.0.0.1 is localhost)."""
    assert _check(tmp_path, "myd@localhost : ALL\n", "--service", "myd@127.0.0.1", "--client", "127.0.0.1") == 1
    out = capsys.readouterr().out
    assert "access:   denied" in out and "does not look it up" in out


def test_ident_deny_is_not_skipped(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The proxy cannot tell mallory from anyone: ``myd : mallory@ALL`` denies every client."""
    assert _check(tmp_path, "myd : mallory@ALL\n", "--service", "myd", "--client", "127.0.0.1") == 1
    out = capsys.readouterr().out
    assert "access:   denied" in out and "does not query RFC 1413 ident" in out
    assert _check(tmp_path, "myd : mallory@ALL\n", "--service", "myd", "--client", "mallory@127.0.0.1") == 1
    assert _check(tmp_path, "myd : mallory@ALL\n", "--service", "myd", "--client", "bob@127.0.0.1") == 0
    assert _check(tmp_path, "myd : mallory@ALL\n", "--service", "myd", "--user", "bob", "--client", "127.0.0.1") == 0
    assert "conservatively" not in capsys.readouterr().out


def test_ident_allow_is_not_assumed(tmp_path: Path) -> None:
    """An allow rule needing a user does not admit an unknown one (the deny file then decides)."""
    (tmp_path / "allow").write_text("myd : alice@ALL\n")
    (tmp_path / "deny").write_text("ALL : ALL\n")
    base = ["check", "--hosts-allow", str(tmp_path / "allow"), "--hosts-deny", str(tmp_path / "deny"), "--no-resolve",
            "--service", "myd"]
    assert main([*base, "--client", "127.0.0.1"]) == 1
    assert main([*base, "--client", "alice@127.0.0.1"]) == 0
