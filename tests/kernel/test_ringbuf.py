"""linux/ringbuf: records a real eBPF program wrote through bpf_ringbuf_output come back in
order, whole, across the wrap-around of the data area; the fd polls readable exactly while
records wait; a full ring keeps what it holds; a map that is no ring is refused."""

from __future__ import annotations

import os
import select
import sys

import pytest

from sockgate.ebpf import layout
from sockgate.linux import bpfsys
from sockgate.linux.ringbuf import PAGE, RingBuffer, RingError
from support.ringwriter import RingWriter

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="BPF ring buffers are Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="creating BPF maps and loading programs needs root (CAP_BPF)"),
    pytest.mark.root,
]


def _ring(size: int) -> RingBuffer:
    spec = layout.events_spec(size)
    return RingBuffer(bpfsys.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, spec.name))


def _record(i: int) -> bytes:
    return i.to_bytes(4, "little") * 8


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_records_come_back_in_order_across_the_wrap() -> None:
    with _ring(PAGE) as ring:
        writer = RingWriter(ring.fd, 32)
        try:
            got: list[bytes] = []
            n = 0
            for _ in range(10):  # each round 60 records of 40 bytes: the 4 KiB ring wraps
                assert not _readable(ring.fileno())
                for _ in range(60):
                    writer.write(_record(n))
                    n += 1
                assert _readable(ring.fileno())
                got += ring.read()
            assert got == [_record(i) for i in range(n)]
            consumer, producer = ring.positions
            assert consumer == producer == n * 40
        finally:
            writer.close()


def test_a_full_ring_keeps_the_first_records_and_drains() -> None:
    with _ring(PAGE) as ring:
        writer = RingWriter(ring.fd, 32)
        try:
            for i in range(300):
                writer.write(_record(i))
            got = ring.read()
            assert 90 <= len(got) < 110 and got == [_record(i) for i in range(len(got))]
            assert ring.read() == [] and not _readable(ring.fileno())
            writer.write(_record(7))
            assert ring.read() == [_record(7)]
        finally:
            writer.close()


def test_read_takes_at_most_the_limit() -> None:
    with _ring(PAGE) as ring:
        writer = RingWriter(ring.fd, 32)
        try:
            for i in range(5):
                writer.write(_record(i))
            assert ring.read(limit=2) == [_record(0), _record(1)]
            assert _readable(ring.fileno())
            assert ring.read() == [_record(2), _record(3), _record(4)]
        finally:
            writer.close()


def test_a_map_that_is_no_ring_is_refused() -> None:
    spec = layout.counts_spec(16)
    fd = bpfsys.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, spec.name)
    with pytest.raises(RingError, match="not a BPF ring buffer"):
        RingBuffer(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # the ring owned it, and closed it on failure
