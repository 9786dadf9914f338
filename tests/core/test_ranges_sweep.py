"""The first-match sweep of ``resolve.ranges`` (integer events, output columns) against the
reference it replaced (a dict of per-point lists, an ``Interval`` per segment), kept here:
both must label every point of the space alike, interval for interval."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.policy.intervals import union
from sockgate.policy.ir import Action
from sockgate.resolve.ranges import Interval, IntervalColumns, Labelled, Table, _first_match, _mixed, rows

SPACE = 64


def reference(sets: list[Labelled], default: Action, space: int) -> tuple[Interval, ...]:
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for idx, (spans, _, _) in enumerate(sets):
        for lo, hi in spans:
            starts.setdefault(lo, []).append(idx)
            ends.setdefault(hi, []).append(idx)
    points = sorted(set(starts) | set(ends) | {0})
    active = [False] * len(sets)
    heap: list[int] = []
    out: list[Interval] = []
    for i, p in enumerate(points):
        if p >= space:
            break
        for idx in ends.get(p, ()):
            active[idx] = False
        for idx in starts.get(p, ()):
            active[idx] = True
            heapq.heappush(heap, idx)
        while heap and not active[heap[0]]:
            heapq.heappop(heap)
        hi = points[i + 1] if i + 1 < len(points) else space
        action, rule = sets[heap[0]][1:] if heap else (default, None)
        if out and out[-1].action is action:
            prev = out[-1]
            out[-1] = Interval(prev.lo, hi, action, prev.rule if prev.rule == rule else _mixed(prev.rule, rule))
        else:
            out.append(Interval(p, hi, action, rule))
    return tuple(out)


span = st.tuples(st.integers(0, SPACE), st.integers(1, 8)).map(lambda t: (t[0], min(SPACE, t[0] + t[1])))
labelled = st.tuples(st.lists(span, max_size=6), st.sampled_from(list(Action)), st.integers(-2, 20) | st.none())


@pytest.mark.parametrize("overlay_min", [0, 3, 10**9], ids=["overlay-always", "overlay-big", "sweep-only"])
@settings(max_examples=400)
@given(raw=st.lists(labelled, max_size=8), default=st.sampled_from(list(Action)))
def test_sweep_equals_the_reference(raw: list[tuple[list[tuple[int, int]], Action, int | None]], default: Action,
                                    overlay_min: int) -> None:
    """Whether the largest set is laid over the others' sweep (``_overlay``) or swept with
    them, the intervals are the reference's, rules included."""
    sets: list[Labelled] = [(union(s for s in spans if s[0] < s[1]), a, r) for spans, a, r in raw]
    assert _first_match(sets, default, SPACE, overlay_min) == reference(sets, default, SPACE)


def test_sweep_of_nothing_is_the_default() -> None:
    assert _first_match([], Action.DENY, SPACE) == (Interval(0, SPACE, Action.DENY, None),)
    assert _first_match([((), Action.ALLOW, 0)], Action.ALLOW, SPACE) == (Interval(0, SPACE, Action.ALLOW, None),)


def test_columns_read_as_intervals_and_rows() -> None:
    cols = IntervalColumns([0, 5], [5, SPACE], [Action.ALLOW, Action.DENY], [0, None])
    ivs = (Interval(0, 5, Action.ALLOW, 0), Interval(5, SPACE, Action.DENY, None))
    assert cols == ivs and tuple(cols) == ivs and cols[1] == ivs[1] and len(cols) == 2
    assert Table(4, cols) == Table(4, ivs) and hash(Table(4, cols)) == hash(Table(4, ivs))
    assert list(rows(Table(4, cols))) == list(rows(Table(4, ivs))) == [(0, 5, Action.ALLOW, 0), (5, SPACE, Action.DENY, None)]
    assert cols != ivs[:1]
    with pytest.raises(ValueError):
        IntervalColumns([0], [], [], [])
