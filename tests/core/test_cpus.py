"""``--cpu-affinity``'s CPU lists (``linux.cpus.parse_affinity``), as ``taskset -c`` writes
them: any set of CPUs round-trips through its range form, and anything else is refused with
a usage error, never a traceback or a CPU that was not asked for."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sockgate.errors import UsageError
from sockgate.linux.cpus import MAX_CPU, _ranges, parse_affinity, worker_cpus


@given(st.sets(st.integers(0, MAX_CPU), min_size=1, max_size=40))
def test_a_set_round_trips_through_its_ranges(cpus: set[int]) -> None:
    text = _ranges(sorted(cpus))
    assert parse_affinity(text) == tuple(sorted(cpus))


@given(st.lists(st.integers(0, 64), min_size=1, max_size=12))
def test_a_list_keeps_its_order_each_cpu_once(cpus: list[int]) -> None:
    assert parse_affinity(",".join(map(str, cpus))) == tuple(dict.fromkeys(cpus))


@given(st.text(max_size=12))
def test_any_text_is_auto_none_a_list_or_a_usage_error(text: str) -> None:
    try:
        got = parse_affinity(text)
    except UsageError as e:
        assert "--cpu-affinity" in str(e) and "\n" not in str(e).replace(repr(text), "")
        return
    if got in ("auto", "none"):
        assert got == text
        return
    assert isinstance(got, tuple) and got and all(0 <= c <= MAX_CPU for c in got)
    assert set(got) == {c for part in text.split(",") for c in _expand(part)}


def _expand(part: str) -> range:
    lo, _, hi = part.partition("-")
    return range(int(lo), int(hi or lo) + 1)


@pytest.mark.parametrize("text", ["", ",", "0,", "-1", "1-", "2-1", "0x1", " 1", "1 ", "\u0661", f"{MAX_CPU + 1}", "0-99999"])
def test_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_affinity(text)


def test_one_worker_is_pinned_only_when_a_list_says_so() -> None:
    assert worker_cpus("auto", 1) == () and worker_cpus("none", 4) == ()
    assert worker_cpus((0,), 1) == (0,)
