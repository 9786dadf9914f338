"""agent/model: endpoints refuse impossible ranges and answer coverage; selectors cover by port;
the resync note is not a socket."""

from __future__ import annotations

import pytest

from sockgate.agent.model import Endpoint, Selector, SocketEvent, resync


def test_endpoint_covers_its_range_and_protocol_only() -> None:
    e = Endpoint("udp", 5000, 5010)
    assert e.covers("udp", 5000) and e.covers("udp", 5010) and not e.covers("udp", 5011)
    assert not e.covers("tcp", 5005) and str(e) == "udp/5000-5010" and str(Endpoint("tcp", 22, 22)) == "tcp/22"


@pytest.mark.parametrize("proto, first, last", [("tcp", 0, 1), ("tcp", 5, 4), ("udp", 1, 65536), ("sctp", 1, 2)])
def test_endpoint_refuses_impossible_ranges(proto: str, first: int, last: int) -> None:
    with pytest.raises(ValueError):
        Endpoint(proto, first, last)  # type: ignore[arg-type]


def test_selector_covers_endpoints_and_mapped_ports() -> None:
    s = Selector((Endpoint("tcp", 22, 22),), daemon="sshd", mapped=(Endpoint("udp", 53, 53),))
    assert s.covers_port("tcp", 22) and s.covers_port("udp", 53) and not s.covers_port("tcp", 53)
    assert not Selector(daemon="sshd").covers_port("tcp", 22)


def test_resync_is_a_note_not_a_socket() -> None:
    assert not resync(5, 3).is_socket and resync(5, 3).cookie == 3
    assert SocketEvent("bind", 1, 2, 3, "x", 4, "udp", 53, 9).is_socket
