"""Which relay the proxy runs (proxy/lane.choose) and the backend address the lane connects to
(proxy/lane.sockaddr: the bytes of a C socket address)."""

from __future__ import annotations

import socket

import pytest

from sockgate.errors import UsageError
from sockgate.proxy import lane as lanes


def test_the_relay_choice() -> None:
    assert lanes.choose("python", use_uvloop=False) == "python"
    assert lanes.choose("auto", use_uvloop=True) == "python"  # the lane waits on the proxy's own loop
    with pytest.raises(UsageError):
        lanes.choose("c", use_uvloop=True)
    if lanes.LANE_BUILT:
        assert lanes.choose("auto", use_uvloop=False) == lanes.choose("c", use_uvloop=False) == "c"
    else:
        assert lanes.choose("auto", use_uvloop=False) == "python"
        with pytest.raises(UsageError):
            lanes.choose("c", use_uvloop=False)


def test_sockaddr_bytes_lay_out_a_c_sockaddr() -> None:
    """The layout of ``struct sockaddr_in``/``sockaddr_in6``/``sockaddr_un`` (family in host
    order, port and flow label in network order); the lane connects to these bytes as given."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        info = socket.getaddrinfo(host, 8080, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4]
        raw = lanes.sockaddr(family, info)
        assert int.from_bytes(raw[:2], "little") == family
        assert raw[2:4] == (8080).to_bytes(2, "big")
        assert socket.inet_ntop(family, raw[4:8] if family == socket.AF_INET else raw[8:24]) == host
        assert len(raw) == (16 if family == socket.AF_INET else 28)
    assert lanes.sockaddr(socket.AF_UNIX, "/run/x.sock") == b"\x01\x00/run/x.sock\x00"
    assert lanes.sockaddr(socket.AF_UNIX, b"\0abstract") == b"\x01\x00\x00abstract"
    assert lanes.sockaddr(socket.AF_UNIX, "/" + "x" * 107) == b""  # longer than sun_path: none
    assert len(lanes.sockaddr(socket.AF_UNIX, "/" + "x" * 106)) == 2 + 108
