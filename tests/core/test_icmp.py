"""ICMP packet building and parsing (sockgate.linux.icmp) on bytes: no sockets, no root."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.linux import icmp


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum (with end-around carry) to ddf2.
    assert icmp.checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2 & 0xFFFF)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_echo_request_checksums_to_zero(ident: int, seq: int, payload: bytes) -> None:
    packet = icmp.echo_request(socket.AF_INET, ident, seq, payload)
    assert icmp.checksum(packet) == 0
    assert struct.unpack_from("!BBHHH", packet)[3:] == (ident, seq)


def test_parse_echo_reply() -> None:
    reply = bytes([icmp.ICMP_ECHO_REPLY, 0, 0, 0]) + struct.pack("!HH", 7, 3) + b"data"
    assert icmp.parse_echo_reply(socket.AF_INET, reply, raw=False) == (7, 3)
    ip_header = bytes([0x45]) + b"\0" * 19
    assert icmp.parse_echo_reply(socket.AF_INET, ip_header + reply, raw=True) == (7, 3)
    request = icmp.echo_request(socket.AF_INET, 7, 3, b"")
    assert icmp.parse_echo_reply(socket.AF_INET, request, raw=False) is None
    v6 = bytes([icmp.ICMPV6_ECHO_REPLY, 0, 0, 0]) + struct.pack("!HH", 9, 1)
    assert icmp.parse_echo_reply(socket.AF_INET6, v6, raw=True) == (9, 1)
    assert icmp.parse_echo_reply(socket.AF_INET, b"\x00", raw=False) is None


def _ee(origin: int, kind: int, code: int, offender: bytes) -> bytes:
    return icmp.SOCK_EXTENDED_ERR.pack(111, origin, kind, code, 0, 0, 0) + offender


def test_extended_error_port_unreachable_v4() -> None:
    sin = struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton("198.18.0.1"))
    err = icmp._parse_extended_err(_ee(icmp.SO_EE_ORIGIN_ICMP, 3, 3, sin))
    assert err.port_unreachable and err.offender == "198.18.0.1"
    assert err.describe() == "icmp port unreachable from 198.18.0.1"


def test_extended_error_other_unreachable_v6() -> None:
    sin6 = struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, socket.inet_pton(socket.AF_INET6, "fd5b:5347::1"), 0)
    err = icmp._parse_extended_err(_ee(icmp.SO_EE_ORIGIN_ICMP6, 1, 1, sin6))
    assert not err.port_unreachable
    assert err.describe() == "icmp6 communication administratively prohibited from fd5b:5347::1"
    assert icmp._parse_extended_err(_ee(icmp.SO_EE_ORIGIN_ICMP6, 1, 4, sin6)).port_unreachable
