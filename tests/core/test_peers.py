"""What is known about a client: addresses normalised as a dual-stack socket reports them,
the fast constructor equal to the dataclass one, parsing, and how a peer is described."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockgate.errors import PeerError
from sockgate.peers import Peer

_ip_addresses = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")),  # dual-stack peers
)


def test_ipv4_mapped_addresses_are_normalised() -> None:
    p = Peer(address=ipaddress.IPv6Address("::ffff:192.0.2.7"), server_address=ipaddress.IPv6Address("::ffff:10.0.0.1"))
    assert p.address == ipaddress.IPv4Address("192.0.2.7")
    assert p.server_address == ipaddress.IPv4Address("10.0.0.1")
    assert Peer(address=ipaddress.IPv6Address("2001:db8::1")).address == ipaddress.IPv6Address("2001:db8::1")


@given(_ip_addresses, st.integers(0, 65535), st.one_of(st.none(), _ip_addresses))
def test_peer_of_ip_is_the_dataclass_constructor(address, port, server) -> None:
    fast = Peer.of_ip(address, port, server)
    slow = Peer(address=address, port=port, server_address=server)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert type(fast.address) is type(slow.address)


def test_parse_takes_address_literals_and_fields() -> None:
    assert Peer.parse(" 192.0.2.1 ").address == ipaddress.IPv4Address("192.0.2.1")
    assert Peer.parse("[2001:db8::1]").address == ipaddress.IPv6Address("2001:db8::1")
    assert Peer.parse("fe80::1%eth0").address == ipaddress.IPv6Address("fe80::1")
    assert Peer.parse("::ffff:192.0.2.1", port=22) == Peer(address=ipaddress.IPv4Address("192.0.2.1"), port=22)


@pytest.mark.parametrize("text", ["", "host.example", "192.0.2.300", "[192.0.2.1", "1.2.3.4/24"])
def test_parse_refuses_what_is_no_address(text: str) -> None:
    with pytest.raises(PeerError, match="not an IP address"):
        Peer.parse(text)


def test_forged_only_when_the_header_cannot_carry_the_address() -> None:
    assert Peer.parse("::ffff:127.0.0.1", header=6).forged
    assert Peer.parse("2001:db8::1", header=4).forged
    assert not Peer.parse("::ffff:127.0.0.1", header=4).forged
    assert not Peer.parse("::ffff:127.0.0.1").forged
    assert not Peer(uid=0, header=6).forged


def test_describe() -> None:
    assert Peer.parse("192.0.2.7").describe() == "192.0.2.7"
    assert Peer.parse("192.0.2.7", name="a.example", user="bob").describe() == "bob@a.example[192.0.2.7]"
    assert Peer.parse("::ffff:127.0.0.1", header=6, name="x").describe() == "x[::ffff:127.0.0.1]"
    assert Peer(uid=0, gid=1, pid=42, exe="/bin/sh").describe() == "uid=0 gid=1 pid=42 exe=/bin/sh"
    assert Peer().describe() == "unknown"


def test_sockgate_peer_stays_the_function_once_peers_is_imported() -> None:
    import sockgate
    import sockgate.peers

    assert callable(sockgate.peer) and sockgate.peer.__name__ == "peer"
    assert sockgate.Peer is sockgate.peers.Peer
