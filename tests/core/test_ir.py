"""Daemon lists decided from the service name alone (``ir.applies``): the libwrap truth table,
and, over random lists, agreement with the per-connection decision (``decide.server_matches``)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.decide import server_matches
from sockgate.peers import Peer
from sockgate.policy.needs import daemon_needs
from sockgate.policy.ir import (
    AddrMatch,
    AnyOf,
    Applies,
    DaemonMatch,
    DaemonPattern,
    Except,
    HostPattern,
    Match,
    MatchAll,
    applies,
)

ALWAYS, NEVER, BY_SERVER = Applies.ALWAYS, Applies.NEVER, Applies.BY_SERVER
HERE = AddrMatch((ipaddress.ip_network("192.0.2.1/32"),), "192.0.2.1")


def d(name: str, server: Match | None = None) -> DaemonPattern:
    return DaemonPattern(name, server)


@pytest.mark.parametrize(
    ("daemons", "service", "expected"),
    [
        (None, "sshd", ALWAYS),
        (MatchAll(), "sshd", ALWAYS),
        (d("sshd"), "sshd", ALWAYS),
        (d("SSHD"), "sshd", ALWAYS),  # case-insensitive, as string_match
        (d("sshd"), "in.ftpd", NEVER),
        (d("ALL"), "anything", ALWAYS),
        (d("KNOWN"), "sshd", ALWAYS),
        (d("KNOWN"), "unknown", NEVER),  # every name but "unknown"
        (d("in."), "in.ftpd", ALWAYS),  # prefix
        (d("in."), "sshd", NEVER),
        (d(".ftpd"), "in.ftpd", ALWAYS),  # suffix
        (d("ss*"), "sshd", ALWAYS),
        (d("s?hd"), "sshd", ALWAYS),
        (d("s?hd"), "sshdd", NEVER),
        (AnyOf((d("ftpd"), d("sshd"))), "sshd", ALWAYS),
        (AnyOf((d("ftpd"), d("telnetd"))), "sshd", NEVER),
        (Except(d("ALL"), d("sshd")), "sshd", NEVER),
        (Except(d("ALL"), d("sshd")), "ftpd", ALWAYS),
        (Except(d("ALL"), Except(d("s*"), d("sshd"))), "sshd", ALWAYS),  # a EXCEPT (b EXCEPT c)
        (Except(d("ALL"), Except(d("s*"), d("sshd"))), "smtpd", NEVER),
        (d("sshd", HERE), "sshd", BY_SERVER),
        (d("sshd", HERE), "ftpd", NEVER),  # the name settles it
        (AnyOf((d("sshd"), d("x", HERE))), "sshd", ALWAYS),
        (AnyOf((d("ftpd"), d("sshd", HERE))), "sshd", BY_SERVER),
        (Except(d("ALL"), d("sshd", HERE)), "sshd", BY_SERVER),
        (Except(d("ALL"), d("sshd", HERE)), "ftpd", ALWAYS),
        (Except(d("sshd", HERE), d("sshd")), "sshd", NEVER),
        (Except(d("sshd", HERE), d("ftpd")), "sshd", BY_SERVER),
    ],
)
def test_applies_truth_table(daemons: DaemonMatch | None, service: str, expected: Applies) -> None:
    assert applies(daemons, service) is expected


def test_daemon_at_host_is_decided_per_connection() -> None:
    rule = Except(d("ALL"), d("sshd", HERE))
    assert server_matches(rule, "sshd", Peer.parse("10.0.0.1", server_address=ipaddress.ip_address("192.0.2.2")))
    assert not server_matches(rule, "sshd", Peer.parse("10.0.0.1", server_address=ipaddress.ip_address("192.0.2.1")))
    assert server_matches(rule, "ftpd", Peer.parse("10.0.0.1", server_address=ipaddress.ip_address("192.0.2.1")))
    unknown = d("sshd", HostPattern("unknown", hosts_access=True))
    assert server_matches(unknown, "sshd", Peer.parse("10.0.0.1"))  # an unknown server is the word "unknown"
    named = Peer.parse("10.0.0.1", server_address=ipaddress.ip_address("192.0.2.1"), server_name="a.example")
    assert not server_matches(unknown, "sshd", named)


# -- the property ------------------------------------------------------------------------------


NAMES = ["sshd", "SSHD", "ALL", "KNOWN", "in.", ".ftpd", "ss*", "s?hd", "ftpd", "unknown", "x"]
SERVICES = ["sshd", "in.ftpd", "ftpd", "unknown", "x", "smtpd"]
SERVERS: list[Match] = [MatchAll(), HERE, HostPattern("unknown", hosts_access=True), HostPattern("*.example", hosts_access=True)]
SERVER_PEERS = [
    Peer(),
    Peer(server_address=ipaddress.ip_address("192.0.2.1")),
    Peer(server_address=ipaddress.ip_address("192.0.2.2")),
    Peer(server_address=ipaddress.ip_address("2001:db8::1"), server_name="a.example"),
]

_leaf = st.one_of(
    st.just(MatchAll()),
    st.builds(DaemonPattern, st.sampled_from(NAMES), st.one_of(st.none(), st.none(), st.sampled_from(SERVERS))),
)
daemon_lists = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(lambda items: AnyOf(tuple(items)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(Except, inner, inner),
    ),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None)
@given(daemon_lists, st.sampled_from(SERVICES))
def test_applies_agrees_with_every_connection(dm: DaemonMatch, service: str) -> None:
    a = applies(dm, service)
    per_connection = {server_matches(dm, service, p) for p in SERVER_PEERS}
    if a is ALWAYS:
        assert per_connection == {True}
    elif a is NEVER:
        assert per_connection == {False}
    else:
        assert daemon_needs(dm)  # only a daemon@host part leaves it to the connection
