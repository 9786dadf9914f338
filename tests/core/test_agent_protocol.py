"""agent/protocol: framing limits, requests parsed strictly with every refusal word for word,
durations and networks, responses both ways; hostile bytes raise ProtocolError only."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.agent import protocol as p
from sockgate.agent.protocol import (Ban, Bans, LineBuffer, Ping, ProtocolError, Reload, Request, Status, Unban, encode, failure, ok,
                                     parse_duration, parse_network, parse_request, parse_response)


def req(**doc: object) -> bytes:
    return json.dumps({"v": 1, "id": 7, **doc}).encode()


def test_each_op_parses_and_round_trips() -> None:
    net = ipaddress.ip_network("2001:db8::/64")
    for body in (Ping(), Status(), Reload(), Ban(net, 3600, "ssh", "fail2ban", "5 failures"), Unban(net, None, "any"), Bans("manual", 5)):
        r = Request(9, body)
        line = encode(r)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert parse_request(line[:-1]) == r


def test_defaults_of_ban_unban_and_bans() -> None:
    assert parse_request(req(op="ban", addr="192.0.2.7")).body == Ban(ipaddress.ip_network("192.0.2.7/32"))
    assert parse_request(req(op="unban", addr="192.0.2.0/24")).body == Unban(ipaddress.ip_network("192.0.2.0/24"))
    assert parse_request(req(op="bans")).body == Bans(None, 1000)
    assert parse_request(req(op="ban", addr="192.0.2.7", **{"for": "10m"})).body.seconds == 600  # type: ignore[union-attr]


@pytest.mark.parametrize("line, message", [
    (b"", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"{", "not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b"[1]", "a request is one JSON object, not list"),
    (b'{"v":1,"id":1,"op":"ping"}\0', "a request may not contain NUL"),
    (b'{"v":1,"id":1,"op":"ping","x":"\\u0000"}', "a request may not contain NUL"),
    (b'\xff{"v":1}', "a request must be UTF-8"),
    (b'{"v":1,"id":1,"id":2,"op":"ping"}', 'duplicate key "id"'),
    (b'{"v":1,"id":NaN,"op":"ping"}', "not JSON: NaN"),
    (b"[" * 50_000, "not JSON: maximum recursion depth exceeded while decoding a JSON array from a unicode string"),
    (req(op="ping", id="7"), 'id must be an integer from 0 to 9007199254740992, found "7"'),
    (req(op="ping", id=True), "id must be an integer from 0 to 9007199254740992, found true"),
    (req(op="ping", id=-1), "id must be an integer from 0 to 9007199254740992, found -1"),
    (req(op="ping", v=2), "unsupported protocol version 2 (this agent speaks 1)"),
    (req(op="ping", v=True), "unsupported protocol version true (this agent speaks 1)"),
    (req(op="shutdown"), 'unknown op "shutdown": expected one of ping, status, ban, unban, reload, bans'),
    (req(op=["ban"]), "unknown op list: expected one of ping, status, ban, unban, reload, bans"),
    (req(op="ping", x=[[[[["deep"]]]]]), "a request nested deeper than 4 levels"),
    (b'{"v":1,"id":1,"op":' + b"[" * 300 + b"]" * 300 + b"}", "a request nested deeper than 4 levels"),
    (req(op="status", verbose=True), 'status: unknown key "verbose" (valid: none)'),
    (req(op="ban", addr="192.0.2.7", ttl=5), 'ban: unknown key "ttl" (valid: addr, for, origin, reason, service)'),
    (req(op="ban"), 'ban: missing key "addr"'),
    (req(op="ban", addr=3232235777), "addr must be a string, found 3232235777"),
    (req(op="ban", addr="192.0.2.7/24"), "192.0.2.7/24 has host bits set: did you mean 192.0.2.0/24?"),
    (req(op="ban", addr="0.0.0.0/0"), "0.0.0.0/0 would ban every address; give a narrower network"),
    (req(op="ban", addr="::/0"), "::/0 would ban every address; give a narrower network"),
    (req(op="ban", addr="example.com"), 'not an address or network: "example.com"'),
    (req(op="ban", addr=" 192.0.2.7"), 'not an address or network: " 192.0.2.7"'),
    (req(op="ban", addr="fe80::1%eth0"), 'not an address or network: "fe80::1%eth0"'),
    (req(op="ban", addr="010.0.0.1"), 'not an address or network: "010.0.0.1"'),
    (req(op="ban", addr="192.0.2.7", **{"for": 60}), "not a duration: 60 (expected a number and s, m, h or d: 30s, 10m, 2h, 1d)"),
    (req(op="ban", addr="192.0.2.7", service="ssh d"), 'not a service name: "ssh d"'),
    (req(op="ban", addr="192.0.2.7", origin="crowdsec"), 'origin must be one of manual, fail2ban, hosts_deny, found "crowdsec"'),
    (req(op="ban", addr="192.0.2.7", origin="any"), 'origin must be one of manual, fail2ban, hosts_deny, found "any"'),
    (req(op="ban", addr="192.0.2.7", reason="a\nb"), "reason must be printable text of at most 200 characters"),
    (req(op="bans", limit=0), "limit must be an integer from 1 to 100000, found 0"),
    (req(op="bans", limit=1.5), "limit must be an integer from 1 to 100000, found 1.5"),
])
def test_refusals_word_for_word(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_request(line)
    assert e.value.message == message and e.value.kind == "usage"


def test_the_id_is_kept_in_a_refusal_when_it_could_be_read() -> None:
    with pytest.raises(ProtocolError) as e:
        parse_request(req(op="nope"))
    assert e.value.id == 7


@pytest.mark.parametrize("text, seconds", [("1s", 1), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("3650d", 3650 * 86400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0s", "1", "s", "1.5h", "1w", "-1s", " 1s", "1S", "01s", "99999999999s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ProtocolError, match="not a duration"):
        parse_duration(text)


def test_more_than_ten_years_is_refused() -> None:
    with pytest.raises(ProtocolError, match="3651d is longer than 10 years; leave the duration out to ban until unbanned"):
        parse_duration("3651d")


def test_line_buffer_splits_lines_and_refuses_a_long_one_early() -> None:
    buf = LineBuffer(16)
    assert buf.feed(b"ab\ncd") == [b"ab"] and buf.pending == 2
    assert buf.feed(b"e\n\n") == [b"cde", b""]
    assert buf.feed(b"x" * 15) == []
    with pytest.raises(ProtocolError, match="a line is longer than 16 bytes"):
        buf.feed(b"y")
    assert buf.pending == 0
    big = LineBuffer()
    with pytest.raises(ProtocolError, match="a line is longer than 65536 bytes"):
        big.feed(b"{" + b" " * 70_000)


def test_line_of_exactly_the_limit_passes() -> None:
    assert LineBuffer(4).feed(b"abc\n") == [b"abc"]


def test_responses_round_trip_and_are_one_line() -> None:
    good = ok(3, {"services": []})
    bad = failure(4, "denied", "uid 1000 is not root\nand not in group sockgate\x1b[31m")
    assert parse_response(encode(good)[:-1]) == good
    assert parse_response(encode(bad)[:-1]) == bad
    assert bad.error is not None and bad.error.message == "uid 1000 is not root and not in group sockgate\\x1b[31m"


@pytest.mark.parametrize("doc, message", [
    ({"v": 1, "id": 1, "ok": True}, "not a response"),
    ({"v": 1, "id": 1, "ok": False, "error": {"kind": "boom", "message": "x"}}, "not a response"),
    ({"v": 2, "id": 1, "ok": True, "result": {}}, "the agent speaks protocol version 2, this client 1"),
])
def test_odd_responses_are_refused(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_response(json.dumps(doc).encode())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
       | st.dictionaries(st.sampled_from(["v", "id", "op", "addr", "for", "service", "origin", "limit", "reason"]),
                         st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
                                   st.sampled_from(["ban", "unban", "bans", "ping", "10m", "192.0.2.0/24"]))).map(lambda d: json.dumps(d).encode()))
def test_hostile_bytes_raise_protocol_error_only(line: bytes) -> None:
    try:
        parse_request(line)
    except ProtocolError as e:
        assert "\n" not in e.message and e.kind == "usage"
    try:
        parse_response(line)
    except ProtocolError:
        pass


def test_every_request_kind_is_named() -> None:
    assert set(p.OPS) == {"ping", "status", "ban", "unban", "reload", "bans"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=10), st.lists(st.integers(1, 30), max_size=20))
def test_line_buffer_gives_the_same_lines_however_the_bytes_are_cut(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    buf, got, at = LineBuffer(64), [], 0
    for n in cuts + [len(data)]:
        got += buf.feed(data[at:at + n])
        at += n
    assert got == lines and buf.pending == 0


@pytest.mark.parametrize("text", ["0.0.0.0/1", "128.0.0.0/7", "::ffff:0:0/96", "::ffff:0:0/100", "2000::/3", "::/15"])
def test_a_ban_wider_than_the_limit_is_refused(text: str) -> None:
    with pytest.raises(ProtocolError, match="too wide to ban"):
        parse_network(text)


def test_an_ipv4_mapped_ban_means_the_ipv4_client() -> None:
    assert str(parse_network("::ffff:192.0.2.1")) == "192.0.2.1/32"
    assert str(parse_network("::ffff:192.0.2.0/120")) == "192.0.2.0/24"
