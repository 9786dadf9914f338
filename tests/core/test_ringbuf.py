"""linux/ringbuf.walk: the ring's record walk over bytes — committed, busy and discarded
records, wrap-around through the double mapping, and hostile headers and positions, which are
a RingError and never an exception of another kind or a read past the data."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.linux.ringbuf import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, RingError, walk

SIZE = 64


def _ring(records: list[tuple[int, bytes]], start: int = 0) -> tuple[bytes, int]:
    """A data area of SIZE bytes mapped twice holding ``(flags, payload)`` records from
    position ``start``; returns (the doubled area, the producer position)."""
    area = bytearray(SIZE)
    pos = start
    for flags, payload in records:
        rec = struct.pack("=II", len(payload) | flags, 0) + payload
        rec += b"\0" * (-len(rec) % 8)
        for k, b in enumerate(rec):
            area[(pos + k) % SIZE] = b
        pos += len(rec)
    return bytes(area) * 2, pos


def test_committed_records_in_order_and_discarded_skipped() -> None:
    data, prod = _ring([(0, b"abc"), (BPF_RINGBUF_DISCARD_BIT, b"x" * 8), (0, b"12345678")])
    w = walk(data, SIZE, 0, prod)
    assert w.records == (b"abc", b"12345678") and w.consumer == prod == 16 + 16 + 16


def test_a_busy_record_stops_the_walk() -> None:
    data, prod = _ring([(0, b"a"), (BPF_RINGBUF_BUSY_BIT, b"b"), (0, b"c")])

    w = walk(data, SIZE, 0, prod)
    assert w.records == (b"a",) and w.consumer == 16


def test_a_record_wrapping_the_end_is_whole() -> None:
    data, prod = _ring([(0, bytes(range(20)))], start=SIZE - 8 + SIZE * 3)
    w = walk(data, SIZE, SIZE * 4 - 8, prod)
    assert w.records == (bytes(range(20)),)


def test_the_limit_bounds_one_walk() -> None:
    data, prod = _ring([(0, b"a")] * 3)
    w = walk(data, SIZE, 0, prod, limit=2)
    assert w.records == (b"a", b"a") and w.consumer == 32


@pytest.mark.parametrize(("cons", "prod", "message"), [
    (16, 8, "positions impossible"),
    (0, SIZE + 8, "positions impossible"),
])
def test_impossible_positions(cons: int, prod: int, message: str) -> None:
    with pytest.raises(RingError, match=message):
        walk(bytes(2 * SIZE), SIZE, cons, prod)


def test_a_length_past_the_data_is_an_error() -> None:
    data, _ = _ring([(0, b"a" * 40)])
    with pytest.raises(RingError, match="runs past the data"):
        walk(data, SIZE, 0, 16)
    huge = struct.pack("=II", 0x3FFFFFFF, 0) + bytes(2 * SIZE - 8)
    with pytest.raises(RingError, match="runs past the data"):
        walk(huge, SIZE, 0, SIZE)


@settings(max_examples=300)
@given(st.binary(min_size=2 * SIZE, max_size=2 * SIZE), st.integers(0, 1 << 40), st.integers(-SIZE, 2 * SIZE))
def test_random_bytes_never_crash(data: bytes, cons: int, ahead: int) -> None:
    try:
        w = walk(data, SIZE, cons, cons + ahead)
    except RingError:
        return
    assert cons <= w.consumer <= cons + ahead
    assert sum(len(r) for r in w.records) <= SIZE
