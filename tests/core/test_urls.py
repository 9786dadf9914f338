"""Socket URLs: the grammar, the options, and word-for-word errors."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.errors import UsageError
from sockgate.urls import DEFAULT_BACKLOG, parse_url, parse_urls


def test_tcp_ipv4() -> None:
    u = parse_url("tcp://127.0.0.1:8080")
    assert (u.scheme, u.host, u.port, u.address) == ("tcp", "127.0.0.1", 8080, ipaddress.ip_address("127.0.0.1"))
    assert u.is_stream and not u.is_unix and not u.all_addresses
    assert u.proto == "tcp" and u.fd_name == "tcp" and u.backlog == DEFAULT_BACKLOG
    assert u.display() == "tcp://127.0.0.1:8080"


def test_tcp_ipv6_and_zone() -> None:
    u = parse_url("tcp://[::1]:22")
    assert u.address == ipaddress.ip_address("::1") and u.port == 22 and u.zone is None
    assert u.display() == "tcp://[::1]:22"
    z = parse_url("tcp://[fe80::1%eth0]:22")
    assert z.zone == "eth0" and z.display() == "tcp://[fe80::1%eth0]:22"


@pytest.mark.parametrize("text", ["tcp://:80", "tcp://*:80", "tcp://[::]:80", "tcp://0.0.0.0:80"])
def test_all_addresses(text: str) -> None:
    assert parse_url(text).all_addresses


def test_udp_and_hostname() -> None:
    u = parse_url("udp://LocalHost:53")
    assert u.scheme == "udp" and u.host == "localhost" and u.address is None and not u.is_stream
    assert u.proto == "udp"


def test_options() -> None:
    u = parse_url("tcp://127.0.0.1:0?backlog=5&reuseport=1&name=web&v6only=0")
    assert (u.backlog, u.reuseport, u.name, u.v6only, u.fd_name) == (5, True, "web", False, "web")
    assert u.port == 0


def test_unix_path_and_options() -> None:
    u = parse_url("unix:/run/app.sock?mode=0660&owner=nobody&group=nogroup&name=app")
    assert (u.path, u.abstract, u.mode, u.owner, u.group, u.name) == ("/run/app.sock", False, 0o660, "nobody", "nogroup", "app")
    assert u.is_unix and u.is_stream and u.proto == "unix" and u.fd_name == "app"
    assert parse_url("unix:rel/app.sock").path == "rel/app.sock"
    assert parse_url("unix:///abs/x.sock").path == "/abs/x.sock"
    assert parse_url("unix:/a%20b.sock").path == "/a b.sock"


def test_unix_abstract_and_dgram() -> None:
    u = parse_url("unix:@sockgate-test")
    assert u.abstract and u.path == "sockgate-test" and u.display() == "unix:@sockgate-test"
    d = parse_url("unix+dgram:/run/log.sock")
    assert d.is_unix and not d.is_stream and d.fd_name == "unix-dgram"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty socket URL: expected tcp://HOST:PORT, udp://HOST:PORT, unix:PATH"),
        ("http://x:1", "'http://x:1': unknown socket URL scheme 'http'; expected one of tcp:, udp:, unix:, unix+dgram:"),
        ("127.0.0.1:80", "'127.0.0.1:80': unknown socket URL scheme '127.0.0.1'; expected one of tcp:, udp:, unix:, unix+dgram:"),
        ("tcp:127.0.0.1:80", "'tcp:127.0.0.1:80': expected tcp://HOST:PORT, tcp://[IPV6]:PORT or tcp://:PORT"),
        ("tcp://127.0.0.1", "'tcp://127.0.0.1': missing port; expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:http", "'tcp://127.0.0.1:http': expected a port number 0-65535, found 'http'"),
        ("tcp://127.0.0.1:65536", "'tcp://127.0.0.1:65536': port 65536 out of range 0-65535"),
        ("tcp://::1:80", "'tcp://::1:80': an IPv6 address must be in brackets: [::1]:PORT"),
        ("tcp://[::1:80", "'tcp://[::1:80': missing ']' after the IPv6 address"),
        ("tcp://[::1]80", "'tcp://[::1]80': expected ':PORT' after ']', found '80'"),
        ("tcp://[1.2.3.4]:80", "'tcp://[1.2.3.4]:80': not an IPv6 address inside [...]: '1.2.3.4'"),
        ("tcp://300.1.1.1:80", "'tcp://300.1.1.1:80': not an IPv4 address or host name: '300.1.1.1'"),
        ("tcp://bad_host:80", "'tcp://bad_host:80': not an IPv4 address or host name: 'bad_host'"),
        ("tcp://:80?mode=0600", "'tcp://:80?mode=0600': unknown option 'mode'; valid here: name, backlog, reuseport, v6only"),
        ("udp://:53?backlog=3", "'udp://:53?backlog=3': unknown option 'backlog'; valid here: name, reuseport, v6only"),
        ("tcp://:80?backlog=1&backlog=2", "'tcp://:80?backlog=1&backlog=2': option 'backlog' given twice"),
        ("tcp://:80?backlog", "'tcp://:80?backlog': option 'backlog' needs a value (backlog=...)"),
        ("tcp://:80?backlog=0", "'tcp://:80?backlog=0': backlog must be a number 1-1048576, found '0'"),
        ("tcp://:80?reuseport=maybe", "'tcp://:80?reuseport=maybe': reuseport must be 0 or 1, found 'maybe'"),
        ("tcp://:80?name=a:b", "'tcp://:80?name=a:b': name 'a:b' must be 1-255 letters, digits or _.@+- (no ':')"),
        ("unix:", "'unix:': missing path; expected unix:PATH or unix:@NAME"),
        ("unix:@", "'unix:@': an abstract socket needs a name after '@'"),
        ("unix:@x?mode=0600", "'unix:@x?mode=0600': mode/owner/group apply to socket files, not abstract sockets"),
        ("unix:/x?mode=rw", "'unix:/x?mode=rw': mode must be octal like 0660, found 'rw'"),
        ("unix:/x?mode=0999", "'unix:/x?mode=0999': mode must be octal like 0660, found '0999'"),
        ("unix:/x?owner=a;b", "'unix:/x?owner=a;b': owner must be a user/group name or number, found 'a;b'"),
        ("unix:/x%00y", "'unix:/x%00y': a NUL byte in the path"),
        ("unix:@" + "a" * 108, f"'unix:@{'a' * 108}': an abstract name is at most 107 bytes, this one is 108"),
    ],
)
def test_errors_word_for_word(text: str, message: str) -> None:
    with pytest.raises(UsageError) as ei:
        parse_url(text)
    assert str(ei.value) == message


def test_parse_urls_refuses_duplicates_but_not_port_zero() -> None:
    with pytest.raises(UsageError, match="the same socket as 'tcp://127.0.0.1:80'"):
        parse_urls(["tcp://127.0.0.1:80", "tcp://127.0.0.1:80?backlog=4"])
    assert len(parse_urls(["tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "udp://127.0.0.1:80", "tcp://127.0.0.1:80"])) == 4


@settings(max_examples=200)
@given(st.ip_addresses(), st.integers(0, 65535), st.sampled_from(["tcp", "udp"]))
def test_inet_round_trip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, scheme: str) -> None:
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    u = parse_url(f"{scheme}://{host}:{port}")
    assert (u.address, u.port, u.scheme) == (addr, port, scheme)
    again = parse_url(u.display())
    assert (again.address, again.port, again.scheme) == (addr, port, scheme)


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_parser_raises_only_usage_errors(text: str) -> None:
    for prefix in ("", "tcp://", "udp://[", "unix:", "unix:@", "tcp://127.0.0.1:1?"):
        try:
            parse_url(prefix + text)
        except UsageError:
            pass
