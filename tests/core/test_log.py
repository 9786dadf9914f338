"""log: the record formats, and proxy.limits staying free of I/O."""

from __future__ import annotations

import io
import json
import os
import re

import pytest

from sockgate.cli.common import log_sink
from sockgate.cli.main import build_parser
from sockgate.errors import UsageError
from sockgate.linux.journal import encode, field_name
from sockgate.log import Log
from support.purity import loaded_by


def test_text_records_quote_only_what_needs_it() -> None:
    out = io.StringIO()
    log = Log("text", out)
    log.record("decision", service="web", peer="192.0.2.7:5", decision="deny", rule="p.conf:3", reason="matched p.conf:3: deny 192.0.2.0/24")
    log.record("close", service="web", peer="[2001:db8::1]:9", bytes_up=10, bytes_down=0, duration=0.5, end="closed", missing=None)
    log.flush()
    first, second = out.getvalue().splitlines()
    assert first.endswith(' event=decision service=web peer=192.0.2.7:5 decision=deny rule=p.conf:3 reason="matched p.conf:3: deny 192.0.2.0/24"')
    assert second.endswith(" event=close service=web peer=[2001:db8::1]:9 bytes_up=10 bytes_down=0 duration=0.5 end=closed")
    assert first[:4].isdigit() and first[10] == "T" and first.split()[0].endswith("Z")


def test_json_records_are_one_object_per_line() -> None:
    out = io.StringIO()
    log = Log("json", out)
    log.record("decision", service="s", peer="uid=0", decision="allow", rule="default", reason='with "quotes" = and spaces')
    log.notice("listening", addresses="tcp://127.0.0.1:1")  # notices flush at once
    lines = out.getvalue().splitlines()
    recs = [json.loads(x) for x in lines]
    assert recs[0]["reason"] == 'with "quotes" = and spaces' and recs[0]["event"] == "decision"
    assert recs[1] == {"time": recs[1]["time"], "event": "notice", "message": "listening", "addresses": "tcp://127.0.0.1:1"}


def test_records_wait_in_the_buffer_until_flushed() -> None:
    out = io.StringIO()
    log = Log("text", out, flush_interval=60)
    log.record("close", service="s")
    assert out.getvalue() == ""
    log.tick()
    assert out.getvalue() == ""
    log.flush()
    assert "event=close" in out.getvalue()


def test_limits_and_kernelpart_do_no_io() -> None:
    loaded = loaded_by(["sockgate.proxy.limits", "sockgate.resolve.kernelpart"])
    assert [m for m in ('socket', 'asyncio', 'ctypes', 'sockgate.linux') if m in loaded] == []


from hypothesis import given
from hypothesis import strategies as st

_values = st.text(max_size=12) | st.sampled_from(["", "a b", 'q"', "k=v", "back\\slash", "tab\there", "ünï"])


@given(_values, _values, _values, _values, st.integers(0, 2**40), st.integers(0, 2**40),
       st.floats(0, 1e6, allow_nan=False), _values, st.sampled_from(["text", "json"]))
def test_the_per_connection_records_are_written_as_record_writes_them(
    service: str, peer: str, rule: str, reason: str, up: int, down: int, duration: float, end: str, fmt: str
) -> None:
    def lines(fast: bool) -> list[str]:
        out = io.StringIO()
        log = Log(fmt, out)  # type: ignore[arg-type]
        if fast:
            log.allowed(service, peer, rule, reason)
            log.closed(service, peer, rule, up, down, duration, end)
        else:
            log.record("decision", service=service, peer=peer, decision="allow", rule=rule, reason=reason)
            log.record("close", service=service, peer=peer, decision="allow", rule=rule, bytes_up=up,
                       bytes_down=down, duration=duration, end=end)
        log.flush()
        # the time differs between the calls: compare everything after it
        if fmt == "json":
            return [json.dumps({k: v for k, v in json.loads(x).items() if k != "time"}) for x in out.getvalue().splitlines()]
        return [x.split(" ", 1)[1] for x in out.getvalue().splitlines()]

    assert lines(fast=True) == lines(fast=False)


@given(st.ip_addresses(v=4), st.integers(0, 65535), st.sampled_from(["text", "json"]))
def test_a_plain_peer_label_is_written_as_record_writes_it(address: object, port: int, fmt: str) -> None:
    """The proxy passes an IPv4 client's ``a.b.c.d:port`` as ``plain`` (no quoting pass)."""
    peer = f"{address}:{port}"

    def lines(plain: bool) -> list[str]:
        out = io.StringIO()
        log = Log(fmt, out)  # type: ignore[arg-type]
        if plain:
            log.allowed("web", peer, "default", "no rule matched", True)
            log.closed("web", peer, "default", 1, 2, 0.5, "closed", True)
        else:
            log.record("decision", service="web", peer=peer, decision="allow", rule="default", reason="no rule matched")
            log.record("close", service="web", peer=peer, decision="allow", rule="default", bytes_up=1,
                       bytes_down=2, duration=0.5, end="closed")
        log.flush()
        return [x.split(" ", 1)[1] if fmt == "text" else x.split(",", 1)[1] for x in out.getvalue().splitlines()]

    assert lines(plain=True) == lines(plain=False)


def test_a_clock_stepped_back_does_not_hold_records(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import time

    from sockgate import log as logmod

    out = io.StringIO()
    log = Log("text", out, flush_interval=0.05)
    log.record("close", service="s")
    real = time.time
    monkeypatch.setattr(logmod.time, "time", lambda: real() - 3600)  # NTP steps the clock back an hour
    time.sleep(0.06)
    log.tick()
    assert out.getvalue().count("event=close") == 1


# Any value — a host name from the client's own PTR record, an executable path a local user
# chose — becomes exactly one line of printable ASCII that parses back to the same value.

_PAIR = re.compile(r' ([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)')
_hostile = st.text() | st.sampled_from([
    "evil\x1b[2J\x07", "a\nb", "a\rb", "x\x00y", "\u2028", "\x85", "\u202eevil", "\x7f", "\udcff",
    "ok peer=forged decision=allow", 'x" decision="allow', "\\", "",
])


def parse_text(line: str) -> dict[str, str]:
    """A text record back into its fields: bare words, or JSON strings."""
    stamp, _, rest = line.partition(" ")
    out = {"time": stamp}
    pos = 0
    for m in _PAIR.finditer(" " + rest):
        assert m.start() == pos, f"unparseable at {pos}: {line!r}"
        v = m.group(2)
        out[m.group(1)] = json.loads(v) if v.startswith('"') else v
        pos = m.end()
    assert pos == len(rest) + 1, f"trailing text: {line!r}"
    return out


def _one_line(out: io.StringIO) -> str:
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), repr(text)
    line = text[:-1]
    assert all(" " <= c <= "~" for c in line), repr(line)  # printable ASCII: nothing for a terminal
    return line


@given(_hostile, _hostile, _hostile, _hostile, st.sampled_from(["text", "json"]), st.sampled_from(["record", "allowed", "closed"]))
def test_any_string_is_one_line_that_parses_back(service: str, peer: str, rule: str, reason: str, fmt: str, how: str) -> None:
    out = io.StringIO()
    log = Log(fmt, out)  # type: ignore[arg-type]
    want = {"service": service, "peer": peer, "rule": rule}
    if how == "record":
        log.record("decision", service=service, peer=peer, decision="deny", rule=rule, reason=reason)
        want |= {"event": "decision", "decision": "deny", "reason": reason}
    elif how == "allowed":
        log.allowed(service, peer, rule, reason)
        want |= {"event": "decision", "decision": "allow", "reason": reason}
    else:
        log.closed(service, peer, rule, 1, 2, 0.5, reason)
        want |= {"event": "close", "decision": "allow", "end": reason}
    log.flush()
    line = _one_line(out)
    got = json.loads(line) if fmt == "json" else parse_text(line)
    got.pop("time")
    for k in ("bytes_up", "bytes_down", "duration"):
        got.pop(k, None)
    assert got == want


@given(_hostile)
def test_notices_and_errors_escape_their_message_too(message: str) -> None:
    out = io.StringIO()
    Log("text", out).error(f"internal error: {message}", service=message)
    got = parse_text(_one_line(out))
    assert got["message"] == f"internal error: {message}" and got["service"] == message


def test_a_message_record_reads_as_a_syslog_line_in_text_and_as_fields_in_json() -> None:
    out = io.StringIO()
    log = Log("text", out, sink="stderr", ident="sockgate")
    log.message("refused", "we\nb: refused connect from 192.0.2.1 (1 time in 60 s, default)", 4, service="we\nb", rule=None)
    log.flush()
    line = out.getvalue()
    assert line.endswith(f" sockgate[{os.getpid()}]: we\\x0ab: refused connect from 192.0.2.1 (1 time in 60 s, default)\n")
    assert line.count("\n") == 1 and line[:-1].isprintable()
    out = io.StringIO()
    log = Log("json", out, ident="sockgate")
    log.message("refused", "ignored in JSON", 4, service="ssh", count=3, rule=None)
    log.flush()
    rec = json.loads(out.getvalue())
    assert rec == {"time": rec["time"], "event": "refused", "service": "ssh", "count": 3, "rule": None}


def test_journal_entries_encode_as_the_native_protocol() -> None:
    assert encode([("MESSAGE", "hi"), ("SOCKGATE_NOTE", "a\nb")]) == b"MESSAGE=hi\nSOCKGATE_NOTE\n\x03\0\0\0\0\0\0\0a\nb\n"
    assert field_name("peer-addr") == "PEER_ADDR" and field_name("_x") == "X" and field_name("é") == "FIELD"
    with pytest.raises(ValueError):
        encode([("_TRUSTED", "x")])


def test_the_sink_is_chosen_on_the_command_line() -> None:
    parse = build_parser(only="proxy").parse_args
    assert [log_sink(parse(["proxy", *a])) for a in ([], ["--syslog"], ["--journal"])] == ["stderr", "syslog", "journal"]
    with pytest.raises(UsageError, match="not allowed with argument"):
        parse(["proxy", "--syslog", "--journal"])
