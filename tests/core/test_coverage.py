"""Who decides first (``coverage.Deciders``) against the definition, and what ``except`` covers."""

from __future__ import annotations

from typing import Hashable

from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.policy.coverage import Cover, Deciders, cover
from sockgate.policy.intervals import union
from sockgate.policy.ir import Except, MatchAll
from sockgate.policy.parser import parse_policy

Claim = tuple[tuple[tuple[int, int], ...], frozenset[Hashable], bool]

ranges = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8)).map(lambda t: (t[0], t[0] + t[1])), max_size=4)
claims = st.lists(
    st.tuples(ranges.map(union), st.frozensets(st.sampled_from("abc"), max_size=2), st.sampled_from([False] * 5 + [True])),
    max_size=12,
)


def first_claimant(cs: list[Claim], point: int) -> int:
    return next(j for j, (spans, _, _) in enumerate(cs) if any(lo <= point < hi for lo, hi in spans))


@settings(max_examples=300, deadline=None)
@given(claims)
def test_deciders_agree_with_the_union_of_earlier_rules(cs: list[Claim]) -> None:
    d = Deciders(cs)
    earlier = Cover()
    for i, (spans, atoms, everything) in enumerate(cs):
        c = Cover(spans, atoms, everything)  # type: ignore[arg-type]
        assert d.covered(i) == earlier.covers(c), i
        points = [p for lo, hi in spans for p in range(lo, hi)]
        expected = {first_claimant(cs, p) for p in points} - {i}
        assert {j for j, _ in d.owners(i, spans)} == expected
        for j, shared in d.owners(i, spans):
            (lo, hi), = shared
            assert all(first_claimant(cs, p) == j for p in range(lo, hi)) and lo in points
        if d.covered(i) and not c.is_empty():  # lint reports an empty rule as matching nobody
            culprits = d.culprits(i, spans, atoms, everything)
            assert culprits and all(j < i for j in culprits)
            assert expected <= set(culprits)
        earlier = earlier | c


def test_everything_excepted_matches_nobody() -> None:
    assert cover(Except(MatchAll(), MatchAll())).is_empty()
    policy = parse_policy("service s { allow all except all\n default deny }", "p.conf")
    assert cover(policy.services[0].rules[0].match).is_empty()
