"""libwrap's string and address matching, routine by routine (policy/hostmatch.py).

The expected values were observed with Debian's tcpdmatch (7.6.q-32); the differential test
in tests/kernel/test_tcpdmatch_differential.py checks the whole engine against it."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.policy import hostmatch as hm
from sockgate.policy.ir import HostPattern


@pytest.mark.parametrize(
    "text, value",
    [
        ("1.2.3.4", 0x01020304),
        ("010.2.3.4", 0x08020304),  # octal part
        ("1.2.3.0x04", 0x01020304),  # hex part
        ("0x.1.2.3", 0x00010203),  # "0x" with no digits is 0 (glibc)
        ("1.2.772", 0x01020304),  # the last part fills the remaining bytes
        ("1.2.3.08", None),
        ("1.2.3.4x", None),
        ("1.2.3.4.", None),
        ("256.1.1.1", None),
        ("1..2.3", None),
        ("", None),
        ("4294967297.2.3.4", None),
    ],
)
def test_inet_aton(text: str, value: int | None) -> None:
    assert hm.inet_aton(text) == value


@pytest.mark.parametrize(
    "text, value",
    [("1.2.3.4", 0x01020304), ("001.2.3.4", 0x01020304), ("1.2.3", None), ("1.2.772", None),
     ("255.255.255.255", None), ("0377.255.255.255", None), ("0.0.0.0", 0)],
)
def test_dot_quad_addr_needs_four_parts_and_is_never_all_ones(text: str, value: int | None) -> None:
    assert hm.dot_quad_addr(text) == value


@pytest.mark.parametrize(
    "text, bits",
    [("24", 24), ("024", 24), ("+24", 24), ("24x", 24), ("1.2", 1), ("32.0", 32), ("4294967328", 32),
     ("0", None), ("33", None), ("-1", None), ("4294967296", None), ("x1", None), ("", None)],
)
def test_cidr_mask_is_sscanf_u(text: str, bits: int | None) -> None:
    want = None if bits is None else (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    assert hm.cidr_mask_addr(text) == want


@pytest.mark.parametrize(
    "text, plen",
    [("64", 64), ("064", 64), ("64x", 64), ("", 0), ("x", 0), ("0", 0), ("128", 128),
     ("129", None), ("-1", None), ("4294967424", 128), ("4294967296", 0)],
)
def test_v6_prefix_len_is_atoi(text: str, plen: int | None) -> None:
    assert hm.v6_prefix_len(text) == plen


@pytest.mark.parametrize(
    "tok, text, want",
    [
        ("LOCALHOS?", "localhost", True),  # wildcards ignore case
        ("ssh?", "SSHD", True),
        ("u*", "unknown", True),  # an unknown name is the word "unknown"
        ("?", "1.2.3.4", False),
        (".1", "10.0.0.1", True),  # a suffix applies to the address text too
        (".example.com", "example.com", False),  # the suffix needs something before it
        (".EXAMPLE.com", "a.example.COM", True),
        ("1.2.", "1.2.3.4", True),
        ("in.", "in.ftpd", True),
        ("KNOWN", "sshd", True),
        ("KNOWN", "unknown", False),
        ("ALL", "anything", True),
        ("192.000.2.1", "192.0.2.1", False),  # addresses are compared as text
        ("[2001:DB8:0::1]", "2001:db8::1", True),  # ...except bracketed IPv6
        ("[::ffff:1.2.3.4]", "1.2.3.4", False),
        ("192.0.2.1", "::ffff:192.0.2.1", True),  # Debian strips the mapped prefix
    ],
)
def test_string_match(tok: str, text: str, want: bool) -> None:
    assert hm.string_match(tok, text) is want


@pytest.mark.parametrize(
    "net, mask, addr, want",
    [
        ("192.0.2.0", "24", "192.0.2.9", True),
        ("192.0.2.1", "24", "192.0.2.1", False),  # host bits in the net: never matches
        ("192.0.2.1", "255.255.255.0", "192.0.2.1", False),
        ("192.0.2.1", "32", "192.0.2.1", True),
        ("192.0.2.1", "255.255.255.255", "192.0.2.1", False),  # all-ones is not a mask
        ("0.0.0.0", "0", "1.2.3.4", False),  # /0 is not a prefix length
        ("0.0.0.0", "0.0.0.0", "1.2.3.4", True),
        ("192.0.2.0", "255.0.255.0", "192.7.2.9", True),  # non-contiguous masks work
        ("255.255.255.0", "24", "255.255.255.255", False),  # the client cannot be parsed
        ("192.0.2.0", "24", "2001:db8::1", False),
        ("[2001:db8::1]", "32", "2001:db8::5", True),  # IPv6: both sides are masked
        ("[2001:db8::]", "", "2002::1", True),  # atoi("") == 0
        ("[2001:db8::]", "129", "2001:db8::", False),
        ("[::]", "0", "1.2.3.4", False),
    ],
)
def test_masked_match(net: str, mask: str, addr: str, want: bool) -> None:
    assert hm.masked_match(net, mask, addr) is want


@pytest.mark.parametrize(
    "addr, text",
    [("::102:304", "::1.2.3.4"), ("::1", "::1"), ("::", "::"), ("2001:db8::1", "2001:db8::1"),
     ("::ffff:1.2.3.4", "::ffff:1.2.3.4"), ("::0:100", "::100"), ("192.0.2.1", "192.0.2.1")],
)
def test_addr_text_is_inet_ntop(addr: str, text: str) -> None:
    assert hm.addr_text(ipaddress.ip_address(addr)) == text


def test_addr_text_unknown() -> None:
    assert hm.addr_text(None) == "unknown"


def test_split_at_skips_brackets() -> None:
    assert hm.split_at("ALL: [::1]: deny", ":") == 3
    assert hm.split_at("[::1]: deny", ":") == 5
    assert hm.split_at("] : x", ":") == -1  # a stray ']' hides later colons, as in libwrap
    assert hm.split_at("bob@[::1]", "@", 1) == 3


A4 = ipaddress.ip_address("192.0.2.1")


@pytest.mark.parametrize(
    "kind, name, verified, address, want",
    [
        ("KNOWN", "host.example", True, A4, True),
        ("KNOWN", None, True, A4, False),
        ("KNOWN", "host.example", True, None, False),
        ("KNOWN", "host.example", False, A4, False),
        ("LOCAL", "localhost", True, A4, True),
        ("LOCAL", "host.example", True, A4, False),
        ("LOCAL", "localhost", False, A4, False),
        ("UNKNOWN", None, True, A4, True),
        ("UNKNOWN", "host", True, None, True),
        ("UNKNOWN", "host", True, A4, False),
        ("UNKNOWN", "host", False, A4, False),  # paranoid is not unknown
        ("PARANOID", "host", False, A4, True),
        ("PARANOID", None, False, None, True),
        ("PARANOID", "host", True, A4, False),
    ],
)
def test_class_matches(kind: str, name: str | None, verified: bool, address: object, want: bool) -> None:
    assert hm.class_matches(kind, name, verified, address) is want  # type: ignore[arg-type]


def test_hosts_access_pattern_sees_paranoid_and_unknown_words() -> None:
    p = HostPattern("p*", hosts_access=True)
    assert hm.pattern_matches(p, None, A4, paranoid=True)
    assert not hm.pattern_matches(p, None, A4)
    assert hm.pattern_matches(HostPattern("u*", hosts_access=True), None, A4)
    # a pattern of digits and dots is never compared with the name
    assert not hm.pattern_matches(HostPattern(".1", hosts_access=True), "x.1", ipaddress.ip_address("10.0.0.2"))
    assert hm.pattern_matches(HostPattern(".x1", hosts_access=True), "a.x1", A4)


def test_native_pattern_needs_a_verified_name() -> None:
    p = HostPattern(".example.com")
    assert hm.pattern_matches(p, "www.example.com", A4)
    assert not hm.pattern_matches(p, "www.example.com", A4, paranoid=True)
    assert not hm.pattern_matches(p, None, A4)


def test_user_matches() -> None:
    assert hm.user_matches("KNOWN", "bob")
    assert not hm.user_matches("KNOWN", None)
    assert hm.user_matches("UNKNOWN", None)
    assert hm.user_matches("B*", "bob")
    assert not hm.user_matches("alice", "bob")


@settings(max_examples=300)
@given(st.integers(0, 2**32 - 1), st.integers(1, 32), st.integers(0, 2**32 - 1))
def test_masked_match_with_canonical_net_is_cidr_membership(a: int, plen: int, n: int) -> None:
    net = ipaddress.IPv4Network((n, plen), strict=False)
    addr = ipaddress.IPv4Address(a)
    want = addr in net and a != 0xFFFFFFFF
    assert hm.masked_match(str(net.network_address), str(plen), str(addr)) is want


@pytest.mark.parametrize("text", ["\u0662\u0664", "\uff12\uff14", " \u0663"])
def test_prefix_lengths_read_ascii_digits_only(text: str) -> None:
    """sscanf("%u") and atoi read ASCII digits; Python's int() would take ARABIC-INDIC ones."""
    assert hm.cidr_mask_addr(text) is None
    assert hm.v6_prefix_len(text) == 0
    assert not hm.masked_match("10.0.0.0", text, "10.0.0.1")


def _glob(t: bytes, p: bytes) -> bool:
    """The textbook recursive definition, on bytes (tests only: exponential)."""
    if not p:
        return not t
    if p[:1] == b"*":
        return any(_glob(t[i:], p[1:]) for i in range(len(t) + 1))
    return bool(t) and (p[:1] in (b"?", t[:1])) and _glob(t[1:], p[1:])


@settings(max_examples=500)
@given(st.text(alphabet="ab*?\u00e9A", max_size=8), st.text(alphabet="abAB\u00e9.", max_size=10))
def test_wildcard_match_is_glob_on_bytes(pattern: str, text: str) -> None:
    want = _glob(hm.fold(text).encode(), hm.fold(pattern).encode())
    assert hm.wildcard_match(text, pattern) is want


def test_wildcard_question_mark_is_one_byte() -> None:
    assert hm.wildcard_match("\u00e9", "??") and not hm.wildcard_match("\u00e9", "?")
    assert hm.string_match("h?st", "h\u00e9st") is False and hm.string_match("h??st", "h\u00e9st")


@pytest.mark.timeout(10)
def test_wildcards_take_linear_time_on_hostile_names() -> None:
    """A peer picks its own host name (and ident user): 'a' * 250 against '*a' * 30 + '*b'
    must not backtrack (a regular expression took ~9 s here with just 4 stars)."""
    name = "a" * 250
    for _ in range(20):
        assert not hm.string_match("*a" * 30 + "*b", name)
        assert hm.native_name_matches("*a" * 30 + "*", name)


def test_subjects_are_c_strings() -> None:
    """libwrap compares C strings: a NUL ends the host name or ident user it is in."""
    assert hm.user_matches("bob", "bob\0evil")
    assert hm.string_match("host.example", "host.example\0.evil")
    assert hm.daemon_name_matches("sshd", "sshd\0x")
