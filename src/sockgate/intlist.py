"""Whole numbers in text from outside — a port in a URL or a policy, a uid, an environment
variable, a header of the CrowdSec LAPI — and lists of them as people write them on command
lines (``22``, ``53,5353``, ``0,2-3``: the ports of ``export --map``, the CPUs of ``proxy
--cpu-affinity``): read with their bounds checked before a number is built, and lists written
back the same way.

Every number read from text goes through ``number`` (or ``c_value`` for the C library's
saturating conversions), never ``isdigit()`` and ``int()``: ``"²".isdigit()`` is true and
``int("²")`` raises, and ``int()`` of more than 4,300 digits raises — each a traceback where a
user or a peer gets to choose the text. (tests/core/test_numbers.py holds the count of the
``isdigit()`` calls left, each on text that is not turned into a number.) Hand-written: a
dozen lines, and no library among the dependencies reads these.
"""

from __future__ import annotations

from typing import Iterable

from sockgate.errors import UsageError

Span = tuple[int, int]  # inclusive
MAX_ID = 0xFFFFFFFE  # a uid, a gid or a pid: 32 bits, and 2^32-1 is the kernel's "no id"


class ListError(ValueError):
    """The text is not a list of numbers or ranges within the bounds (the message says why)."""


def is_number(text: str) -> bool:
    """ASCII digits only, at least one."""
    return text.isascii() and text.isdigit()


def number(text: str, lo: int, hi: int) -> int | None:
    """``text`` as a whole number within ``lo``..``hi`` (ASCII digits, leading zeros allowed),
    or None; never builds a number longer than ``hi``."""
    if not is_number(text):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(hi)):
        return None
    n = int(digits)
    return n if lo <= n <= hi else None


def numeric_id(text: str, what: str) -> int | None:
    """A user, group or other id written as a number: its value; None when ``text`` is not
    digits (a name, to look up); digits out of range are a usage error, never a wrapped id."""
    if not is_number(text):
        return None
    n = number(text, 0, MAX_ID)
    if n is None:
        raise UsageError(f"{what} {text[:20]!r} is out of range (0-{MAX_ID})")
    return n


def c_value(digits: str, base: int = 10, past: int = 1 << 64) -> int:
    """ASCII ``digits`` in ``base`` as ``strtoul`` reads them before it saturates: their value,
    or ``past`` when it is at least that (the caller saturates as its C function does)."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > past.bit_length():  # (in any base, more digits than past has bits is more)
        return past
    return min(int(digits, base), past)


def parse_spans(text: str, lo: int, hi: int, noun: str) -> list[Span]:
    """``a``, ``a-b`` parts joined by commas → inclusive spans, in the order written, each
    within ``lo``..``hi`` and low to high; ``noun`` names one number ("port", "CPU")."""
    out: list[Span] = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if not is_number(first) or (dash and not is_number(last)):
            raise ListError(f"expected a {noun} or {noun} range ({lo}-{hi}), found {part!r}")
        a, b = number(first, lo, hi), number(last or first, lo, hi)
        if a is None or b is None or b < a:
            raise ListError(f"{noun} range {part!r} is not within {lo}-{hi} (low to high)")
        out.append((a, b))
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
