"""Set files read fast: the fast path agrees with the reference path (``literals.network`` per
line) on every line — accepted or not, and the value — and whole files give the same networks
and the same diagnostics, word for word; hostile lines are rejected as before, in linear time."""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.policy import literals
from sockgate.policy.netlist import key_of, net_of
from sockgate.policy.setfile import address_list, fast_key
from sockgate.policy.source import Span

OCTETS = ["0", "00", "01", "1", "7", "9", "10", "09", "99", "100", "199", "200", "249", "250", "255", "256", "300",
          "1a", "", "+1", "١"]
V4_PLENS = ["0", "00", "1", "8", "08", "9", "10", "24", "29", "30", "32", "032", "33", "99", "", "x", "-1", "٣"]
HEXTETS = ["", "0", "1", "0db8", "db8", "2001", "ffff", "FFFF", "abcd", "fFfF", "12345", "0000", "00000", "g", "1_0",
           "0x1"]
V6_PLENS = ["0", "8", "48", "58", "64", "95", "96", "100", "119", "120", "127", "128", "129", "0128", "", "x"]
BLANKS = ["", " ", "  ", "\t", "\r", " \r", "\x0b", "\x0c", "\xa0", "\u2028", "\x85", "\x00"]


@st.composite
def v4_words(draw: st.DrawFn) -> str:
    word = ".".join(draw(st.lists(st.sampled_from(OCTETS), min_size=3, max_size=5)))
    if draw(st.booleans()):
        word += "/" + draw(st.sampled_from(V4_PLENS))
    return word


@st.composite
def v6_words(draw: st.DrawFn) -> str:
    groups = draw(st.lists(st.sampled_from(HEXTETS), min_size=1, max_size=9))
    seps = draw(st.lists(st.sampled_from([":", ":", ":", "::", ":::"]), min_size=len(groups) - 1,
                         max_size=len(groups) - 1))
    word = groups[0] + "".join(s + g for s, g in zip(seps, groups[1:]))
    if draw(st.integers(0, 9)) == 0:
        word = draw(st.sampled_from(["::ffff:", "::", "64:ff9b::", "::ffff:0:"])) + draw(v4_words())
    if draw(st.integers(0, 19)) == 0:
        word += "%eth0"
    if draw(st.booleans()):
        word += "/" + draw(st.sampled_from(V6_PLENS))
    return word


@st.composite
def lines(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind < 4:
        word = draw(v4_words())
    elif kind < 8:
        word = draw(v6_words())
    elif kind == 8:
        word = draw(st.text(alphabet="0123456789abcdefABCDEF:./ \t#%", max_size=24))
    else:
        word = draw(st.text(max_size=12))
    line = draw(st.sampled_from(BLANKS)) + word + draw(st.sampled_from(BLANKS))
    if draw(st.integers(0, 9)) == 0:
        line += draw(st.sampled_from(["#", " # a comment", "#1.2.3.4"]))
    return line


def reference(line: str) -> int | None:
    """The key the reference path gives ``line`` (None: a blank line or an error)."""
    word = line.split("#", 1)[0].strip()
    if not word:
        return None
    try:
        return key_of(literals.network(word))
    except literals.LiteralError:
        return None


@settings(max_examples=3000, deadline=None)
@given(lines())
def test_the_fast_path_accepts_only_what_the_reference_accepts_with_the_same_value(line: str) -> None:
    fast = fast_key(line)
    if fast is not None:
        assert fast == reference(line)


@pytest.mark.parametrize("line, net", [
    ("192.0.2.1", "192.0.2.1/32"), ("  10.0.0.0/8\r", "10.0.0.0/8"), ("0.0.0.0/0", "0.0.0.0/0"),
    ("2001:db8::/32", "2001:db8::/32"), ("\t::1", "::1/128"), ("::/0", "::/0"), ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0/128"),
    ("::1:2:3:4:5:6:7", "0:1:2:3:4:5:6:7/128"), ("FFFF:0:0:0:0:0:0:0/16", "ffff::/16"), ("2001:db8:1::/48 ", "2001:db8:1::/48"),
])
def test_plain_lines_take_the_fast_path(line: str, net: str) -> None:
    assert fast_key(line) == key_of(ipaddress.ip_network(net))


@pytest.mark.parametrize("line", [
    "010.0.0.1", "10.0.0.1/08", "10.0.0.1/8", "256.0.0.1", "1.2.3", "::ffff:192.0.2.0/120", "::ffff:c000:200/120",
    "fe80::1%eth0", "1::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", ":1::", "1:::2", "12345::", "2001:db8::/129",
    "2001:db8::1/64", "10.0.0.1 # home", "# 10.0.0.1", "", "   ", "\x0b10.0.0.1", "10.0.0.1\x00",
])
def test_anything_else_is_left_to_the_reference_path(line: str) -> None:
    assert fast_key(line) is None


def run(text: str, fast: bool) -> tuple[tuple[int, ...], list[tuple[Span, str]]]:
    diags: list[tuple[Span, str]] = []
    got = address_list("l.txt", text, lambda span, msg, *rest: diags.append((span, msg)), fast=fast)
    return got.keys, diags


@settings(max_examples=400, deadline=None)
@given(st.lists(lines(), max_size=30))
def test_a_file_reads_the_same_fast_and_by_the_reference(body: list[str]) -> None:
    text = "\n".join(body)
    assert run(text, fast=True) == run(text, fast=False)


def test_duplicates_are_dropped_in_order_and_the_union_is_kept_per_family() -> None:
    keys, diags = run("10.0.0.0/8\n192.0.2.1\n10.0.0.0/8\n2001:db8::/32\n10.1.0.0/16\n::ffff:10.2.0.0/112\n", True)
    assert diags == [] and [str(net_of(k)) for k in keys] == [
        "10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32", "10.1.0.0/16", "10.2.0.0/16"]


HOSTILE = [
    ":" * 1_000_000,
    "1" * 1_000_000,
    " " * 1_000_000 + "x",
    "1:" * 500_000 + "x",
    "1." * 500_000,
    "\x00" * 1_000_000,
    "10.0.0.1" + "\t" * 1_000_000 + "#",
]


@pytest.mark.parametrize("line", HOSTILE, ids=["colons", "digits", "blanks", "hextets", "dots", "nul", "tabs"])
def test_a_huge_hostile_line_costs_one_scan_and_is_refused_or_read_as_before(line: str) -> None:
    start = time.process_time()
    fast = run(line, True)
    took = time.process_time() - start
    assert fast == run(line, False)
    assert took < 2.0, f"{took:.2f} s of CPU for one 1 MB line: backtracking?"
