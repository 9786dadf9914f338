"""``--cpu-affinity``/``--workers`` decided without the system (``proxy.affinity``) and the
number lists they share with the exporters' ports (``intlist``): any set round-trips
through its range form, and anything else is a one-line usage error, never a traceback or a
CPU that was not asked for."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sockgate.errors import UsageError
from sockgate.intlist import ListError, items, parse_spans, spans_of
from sockgate.proxy.affinity import MAX_CPU, parse_affinity, parse_workers, text, worker_cpus


@given(st.sets(st.integers(0, MAX_CPU), min_size=1, max_size=40))
def test_a_set_round_trips_through_its_ranges(cpus: set[int]) -> None:
    assert parse_affinity(text(sorted(cpus))) == tuple(sorted(cpus))


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
    assert text([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
