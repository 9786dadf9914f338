"""``--cpu-affinity``/``--workers`` decided without the system (``proxy.affinity``) and the
number lists they share with the exporters' ports (``intlist``): any set round-trips
through its range form, and anything else is a one-line usage error, never a traceback or a
CPU that was not asked for."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sockgate.errors import UsageError
from sockgate.intlist import ListError, items, parse_spans, spans_of
from sockgate.export.ports import parse_ports
from sockgate.proxy.affinity import MAX_CPU, cpu_list, parse_affinity, parse_workers, worker_cpus


@given(st.sets(st.integers(0, MAX_CPU), min_size=1, max_size=40))
def test_a_set_round_trips_through_its_ranges(cpus: set[int]) -> None:
    assert parse_affinity(cpu_list(sorted(cpus))) == tuple(sorted(cpus))


@given(st.lists(st.integers(0, 64), min_size=1, max_size=12))
def test_a_list_keeps_its_order_each_cpu_once(cpus: list[int]) -> None:
    assert parse_affinity(",".join(map(str, cpus))) == tuple(dict.fromkeys(cpus))


@given(st.text(max_size=12))
def test_any_text_is_auto_none_a_list_or_a_usage_error(s: str) -> None:
    try:
        got = parse_affinity(s)
    except UsageError as e:
        assert str(e).startswith("--cpu-affinity: ")
        return
    if got in ("auto", "none"):
        assert got == s
        return
    assert isinstance(got, tuple) and got and all(0 <= c <= MAX_CPU for c in got)
    assert set(got) == {c for a, b in parse_spans(s, 0, MAX_CPU, "CPU") for c in range(a, b + 1)}


@given(st.text(alphabet="0123456789,-²٣ x", max_size=16), st.integers(1, 70000))
def test_spans_are_within_bounds_or_refused(s: str, hi: int) -> None:
    try:
        spans = parse_spans(s, 1, hi, "port")
    except ListError:
        return
    assert spans and all(1 <= a <= b <= hi for a, b in spans)
    values = {c for a, b in spans for c in range(a, b + 1)}
    assert {c for a, b in parse_spans(",".join(items(spans_of(values))), 1, hi, "port") for c in range(a, b + 1)} == values


@pytest.mark.parametrize("s", ["", ",", "0,", "-1", "1-", "2-1", "0x1", " 1", "1 ", "\u0661", f"{MAX_CPU + 1}", "0-99999",
                               "1" * 5000, ",".join(["0-8191"] * 5)])
def test_refused(s: str) -> None:
    with pytest.raises(UsageError):
        parse_affinity(s)


def test_workers_and_their_cpus() -> None:
    assert worker_cpus("auto", 1, [2, 3]) == () and worker_cpus("none", 4, [0, 1]) == ()
    assert worker_cpus("auto", 3, [3, 1]) == (1, 3, 1)
    assert worker_cpus((5,), 1, [5, 6]) == (5,) and worker_cpus((6, 5), 3, [5, 6]) == (6, 5, 6)
    with pytest.raises(UsageError, match="CPU 0 is not one this process may run on"):
        worker_cpus((0,), 2, [1, 2, 3, 5])
    assert parse_workers("auto", (4, 5), [0, 1, 2]) == 2 and parse_workers("auto", "none", [0, 1, 2]) == 3
    assert parse_workers("1024", "none", [0]) == 1024
    for bad in ("0", "1025", "-1", "²", "1" * 5000, ""):
        with pytest.raises(UsageError):
            parse_workers(bad, "none", [0])
    assert cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_workers("auto", "none", list(range(5000))) == 1024


# -- numbers from outside (intlist.number, c_value), wherever they are read -----------------

from pathlib import Path  # noqa: E402

from sockgate.errors import PolicyError  # noqa: E402
from sockgate.intlist import MAX_ID, c_value, number, numeric_id  # noqa: E402
from sockgate.policy.parser import parse_policy  # noqa: E402
from sockgate.top.select import FilterError, parse_filter  # noqa: E402
from sockgate.urls import parse_url  # noqa: E402

HOSTILE = ["1" * 5000, "0" * 5000 + "1", "²", "\u0663", "-1", "+1", " 1", "1 ", "", "0x10", "1e3", "１"]


@given(st.text(alphabet="0123456789²٣ -+", max_size=30), st.integers(0, 10**12), st.integers(0, 10**12))
def test_number_is_the_value_within_its_bounds_or_none(text: str, a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    got = number(text, lo, hi)
    if text.isascii() and text.isdigit() and lo <= int(text) <= hi:
        assert got == int(text)
    else:
        assert got is None


@given(st.text(alphabet="01234567", min_size=1, max_size=40), st.sampled_from([8, 10]))
def test_c_value_saturates_as_strtoul(digits: str, base: int) -> None:
    assert c_value(digits, base) == min(int(digits, base), 1 << 64)


def test_hostile_digits_are_refused_not_raised() -> None:
    for text in HOSTILE:
        assert number(text, 0, 65535) is None or text.strip("0") == "1"
    assert c_value("9" * 5000) == 1 << 64
    assert numeric_id("root", "uid") is None and numeric_id(str(MAX_ID), "uid") == MAX_ID
    with pytest.raises(UsageError, match="out of range"):
        numeric_id("9" * 5000, "uid")


@pytest.mark.parametrize("text", [HOSTILE[0], HOSTILE[2], HOSTILE[3], "9" * 20])
def test_a_hostile_port_anywhere_is_a_message(text: str) -> None:
    with pytest.raises(UsageError):
        parse_url(f"tcp://127.0.0.1:{text}")
    with pytest.raises(UsageError):
        parse_url(f"tcp://127.0.0.1:1?backlog={text}")
    with pytest.raises(PolicyError):
        parse_policy(f"service s tcp/{text} {{\n allow all limit concurrent {text}\n}}\n", "p.conf")
    with pytest.raises(FilterError):
        parse_filter(f"port:{text}")
    with pytest.raises(UsageError):
        parse_ports(text, "--ports")


def test_isdigit_is_left_only_where_no_number_is_built() -> None:
    """The ratchet: a new ``isdigit()`` on outside text comes with an ``int()`` that a
    hostile value turns into a traceback; read numbers through ``intlist.number``."""
    src = Path(__file__).resolve().parents[2] / "src" / "sockgate"
    found = {str(p.relative_to(src)): p.read_text().count(".isdigit()") for p in src.rglob("*.py")}
    assert {k: v for k, v in found.items() if v} == {
        "intlist.py": 2,  # is_number itself (with isascii), and the docstring that says so
        "policy/literals.py": 1,  # one character at a time: "does it look like an address"
        "policy/matchparse.py": 1,  # wording of a message
        "linux/procfs.py": 2,  # bytes from the kernel (bytes.isdigit is ASCII)
        "urls.py": 1,  # "is this host name all digits": no number built
    }
