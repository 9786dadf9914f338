"""How the proxy's log records name a client and the rule that decided (TCP and UDP alike)."""

from __future__ import annotations

from sockgate.peers import Peer
from sockgate.policy.ir import Action, MatchAll, Rule
from sockgate.policy.source import Span
from sockgate.proxy.admission import peer_label, rule_label


def test_peer_label_ipv4_and_ipv6_in_brackets() -> None:
    assert peer_label(Peer.parse("192.0.2.7", port=5353)) == "192.0.2.7:5353"
    assert peer_label(Peer.parse("2001:db8::1", port=22)) == "[2001:db8::1]:22"
    assert peer_label(Peer.parse("::ffff:192.0.2.7", port=22)) == "192.0.2.7:22"  # a dual-stack socket's IPv4 client
    assert peer_label(Peer.parse("2001:db8::1")) == "[2001:db8::1]"


def test_peer_label_with_a_name_as_libwrap_prints_it() -> None:
    assert peer_label(Peer.parse("192.0.2.7", port=80, name="a.example")) == "a.example[192.0.2.7:80]"
    assert peer_label(Peer.parse("2001:db8::1", port=80, name="b.example", name_verified=False)) == (
        "b.example(unverified)[[2001:db8::1]:80]"
    )


def test_a_forged_peer_is_shown_as_its_header_wrote_it() -> None:
    assert peer_label(Peer.parse("::ffff:127.0.0.1", port=53, header=6)) == "[::ffff:127.0.0.1]:53"


def test_a_unix_peer_is_its_credentials() -> None:
    assert peer_label(Peer(uid=1000, gid=1000, pid=42, exe="/usr/bin/ssh")) == "uid=1000 gid=1000 pid=42 exe=/usr/bin/ssh"
    assert peer_label(Peer()) == "unknown"


def test_rule_label() -> None:
    rule = Rule(Action.ALLOW, MatchAll(), Span("/etc/sockgate/p.conf", 12, 3), "allow all")
    assert rule_label(rule) == "/etc/sockgate/p.conf:12"
    assert rule_label(None) == "default"
    assert rule_label("limit") == "limit"
