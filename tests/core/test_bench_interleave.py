"""bench/bench_proxy.py's interleaved short-connection measurement: every path gets its share of
each run in slices, in an order shuffled per slice and reproducible from the seed, and a run's
rate is all its connections over all its time."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))

import bench_proxy  # noqa: E402
from bench_proxy import Short, interleaved, measure_interleaved, slice_args_error, slices_of  # noqa: E402

PATHS = {f"path {i}": 1000 + i for i in range(6)}


def fake_client(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[int, float]]) -> None:
    """``short`` records (port, seconds) and makes port-many connections; every group used 1 s of CPU."""
    def short(tools: str, port: int, seconds: float) -> Short:
        calls.append((port, seconds))
        return Short(port / seconds, 1.0, 2.0, 0, port, seconds)

    clock = iter(range(10_000))
    monkeypatch.setattr(bench_proxy, "short", short)
    monkeypatch.setattr(bench_proxy, "group_cpu", lambda pgid: float(next(clock)))


def test_every_path_gets_its_slices_in_a_shuffled_order_that_the_seed_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, float]] = []
    fake_client(monkeypatch, calls)
    got, used = measure_interleaved("tools", PATHS, {"path 0": 1, "path 3": 2}, 3.0, 6, seed=7)
    assert len(calls) == 6 * len(PATHS) and {s for _, s in calls} == {0.5}
    rounds = [[p for p, _ in calls[i:i + len(PATHS)]] for i in range(0, len(calls), len(PATHS))]
    assert all(sorted(r) == sorted(PATHS.values()) for r in rounds)  # one slice of every path per round
    assert len({tuple(r) for r in rounds}) > 1  # shuffled, not one order repeated
    predecessors = {(r[i - 1], r[i]) for r in rounds for i in range(1, len(r))}
    assert len(predecessors) > len(PATHS)  # neighbours change (a rotation would keep them)
    assert got["path 2"] == Short(1002 * 6 / 3.0, 1.0, 2.0, 0, 1002 * 6, 3.0)
    assert used == {"path 0": 6.0, "path 3": 6.0}  # one tick around each of its slices
    again: list[tuple[int, float]] = []
    fake_client(monkeypatch, again)
    measure_interleaved("tools", PATHS, {}, 3.0, 6, seed=7)
    assert again == calls
    other: list[tuple[int, float]] = []
    fake_client(monkeypatch, other)
    measure_interleaved("tools", PATHS, {}, 3.0, 6, seed=8)
    assert other != calls


@given(st.lists(st.tuples(st.integers(0, 10**6), st.floats(0.01, 10.0)), min_size=1, max_size=20))
def test_a_run_is_all_connections_over_all_time(slices: list[tuple[int, float]]) -> None:
    r = interleaved([Short(n / t, 1.0, float(i), 0, n, t) for i, (n, t) in enumerate(slices)])
    assert r.conns == sum(n for n, _ in slices)
    assert math.isclose(r.rate, r.conns / sum(t for _, t in slices))
    assert r.p99 == bench_proxy.med([float(i) for i in range(len(slices))])


@pytest.mark.parametrize(("runs", "seconds", "slice_", "wrong"), [
    (3, 3.0, 0.5, None), (0, 3.0, 0.5, "--runs"), (3, 0.0, 0.5, "--seconds"), (3, math.nan, 0.5, "--seconds"),
    (3, 3.0, 0.05, "--slice"), (3, 3.0, math.nan, "--slice"), (3, 3.0, math.inf, "--slice"),
])
def test_the_measurement_options_are_checked(runs: int, seconds: float, slice_: float, wrong: str | None) -> None:
    args = argparse.Namespace(runs=runs, seconds=seconds, slice=slice_, seed=None)
    error = slice_args_error(args)
    assert (error is None) if wrong is None else (error is not None and error.startswith(wrong))
    assert isinstance(args.seed, int)  # a seed is chosen (and printed) when none is given


def test_slices_are_round_seconds_over_slice_and_at_least_one() -> None:
    assert slices_of(argparse.Namespace(seconds=3.0, slice=0.5)) == 6
    assert slices_of(argparse.Namespace(seconds=3.0, slice=0.4)) == 8  # of 0.375 s
    assert slices_of(argparse.Namespace(seconds=0.2, slice=1.0)) == 1
