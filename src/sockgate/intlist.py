"""Integer lists as people write them on command lines — ``22``, ``53,5353``, ``0,2-3``: the
ports of ``export --map``, the CPUs of ``proxy --cpu-affinity`` — read with their bounds
checked before a number is built, and written back the same way.

Hand-written: the syntax is a dozen lines and no library among the dependencies reads it.
Every part is checked as ASCII digits no longer than the bound's own (``int()`` of thousands
of digits raises, ``"²".isdigit()`` is true), so hostile text is a one-line message.
"""

from __future__ import annotations

from typing import Iterable

Span = tuple[int, int]  # inclusive


class ListError(ValueError):
    """The text is not a list of numbers or ranges within the bounds (the message says why)."""


def parse_spans(text: str, lo: int, hi: int, noun: str) -> list[Span]:
    """``a``, ``a-b`` parts joined by commas → inclusive spans, in the order written, each
    within ``lo``..``hi`` and low to high; ``noun`` names one number ("port", "CPU")."""
    out: list[Span] = []
    width = len(str(hi))
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if not _number(first) or (dash and not _number(last)):
            raise ListError(f"expected a {noun} or {noun} range ({lo}-{hi}), found {part!r}")
        if len(first) > width or len(last) > width or not lo <= int(first) <= int(last or first) <= hi:
            raise ListError(f"{noun} range {part!r} is not within {lo}-{hi} (low to high)")
        out.append((int(first), int(last or first)))
    return out


def spans_of(values: Iterable[int]) -> list[Span]:
    """Sorted distinct ``values`` as the fewest spans: 0,1,2,5 → (0,2),(5,5)."""
    out: list[Span] = []
    for v in sorted(set(values)):
        if out and out[-1][1] == v - 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def items(spans: Iterable[Span], dash: str = "-") -> list[str]:
    """Each span as ``22`` or ``8000{dash}8099``."""
    return [str(a) if a == b else f"{a}{dash}{b}" for a, b in spans]


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit()
