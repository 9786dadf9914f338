"""Address literals: the fast IPv4 path agrees with ``ipaddress`` on every input."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from sockgate.policy import literals
from sockgate.policy.parser import parse_policy

octet = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "010", "-1", "", "1a", "٣"]))
v4_text = st.builds(lambda a, b, c, d, p: f"{a}.{b}.{c}.{d}{p}", octet, octet, octet, octet,
                    st.one_of(st.just(""), st.integers(0, 40).map(lambda n: f"/{n}"),
                              st.sampled_from(["/", "/08", "/024", "/x"])))


def reference(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    addr, _, prefix = text.partition("/")
    try:
        a = ipaddress.ip_address(addr)
        if "/" in text and not (prefix.isascii() and prefix.isdigit()):
            return None
        return ipaddress.ip_network(f"{a}/{int(prefix) if prefix else a.max_prefixlen}")
    except ValueError:
        return None


@given(v4_text)
def test_ipv4_networks_parse_as_ipaddress_parses_them(text: str) -> None:
    try:
        got: object = literals.network(text)
    except literals.LiteralError:
        got = None
    assert got == reference(text)


def test_a_long_bad_word_is_cut_in_the_message() -> None:
    try:
        literals.network("x" * 100)
    except literals.LiteralError as e:
        assert str(e) == f"expected an IPv4 or IPv6 address, found '{'x' * 24}...'"


def test_an_ipv6_address_of_hex_letters_alone_is_an_address() -> None:
    """``ffff::ffff`` and ``dead:beef::/32`` hold no decimal digit; a colon says address all
    the same (no host name or keyword has one), so a policy may name them."""
    for text in ("ffff::ffff", "dead:beef::/32", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1"):
        assert literals.looks_like_address(text), text
        svc = parse_policy(f"service s tcp/1 {{\n deny {text}\n default allow\n}}\n", "p.conf").require_service("s")
        assert str(svc.rules[0].match.nets[0]) == str(ipaddress.ip_network(text))  # type: ignore[attr-defined]
    assert not literals.looks_like_address("cafe") and not literals.looks_like_address("beef.dead")
