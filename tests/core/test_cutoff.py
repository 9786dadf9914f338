"""``cutoff.denied``: which established connections on guarded listeners a policy denies."""

from __future__ import annotations

import ipaddress

from sockgate.cutoff import TcpListener, denied
from sockgate.linux.sockdiag import TCP_ESTABLISHED, Sock
from sockgate.policy.parser import parse_policy
from sockgate.resolve import resolve

POLICY = "service web {\n    allow 127.0.0.1\n    default deny\n}\n"


def conn(local: str, lport: int, peer: str, proto: str = "tcp") -> Sock:
    fam = "ipv6" if ":" in local else "ipv4"
    return Sock(proto, fam, "stream", TCP_ESTABLISHED, 1, local_addr=local, local_port=lport, peer_addr=peer, peer_port=40000)


def test_denied_peers_of_the_listeners_only_grouped_by_local_address() -> None:
    svc = resolve(parse_policy(POLICY), "web")
    listeners = [TcpListener(ipaddress.ip_address("0.0.0.0"), 80), TcpListener(ipaddress.ip_address("127.0.0.1"), 81)]
    got = denied(svc, listeners, [
        conn("127.0.0.1", 80, "127.0.0.1"),  # allowed
        conn("127.0.0.1", 80, "127.0.0.2"),  # denied, wildcard listener
        conn("::ffff:127.0.0.1", 80, "::ffff:127.0.0.3"),  # a dual-stack view of the same: unmapped
        conn("127.0.0.1", 81, "127.0.0.9"),  # denied, the specific listener
        conn("127.0.0.2", 81, "127.0.0.9"),  # another local address on port 81: not this listener's
        conn("127.0.0.1", 82, "127.0.0.9"),  # another port: not a guarded listener
        conn("127.0.0.1", 80, "127.0.0.9", proto="udp"),
    ])
    ip = ipaddress.ip_address
    assert got == {(80, ip("127.0.0.1")): {ip("127.0.0.2"), ip("127.0.0.3")}, (81, ip("127.0.0.1")): {ip("127.0.0.9")}}
