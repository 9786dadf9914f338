"""A consumer of a ``BPF_MAP_TYPE_RINGBUF`` map (Linux 5.8): the records an eBPF program wrote.

Hand-written because sockgate loads no libbpf at run time (the issue's rule: no clang, bcc or
libbpf), and the consumer side is small: the kernel maps the ring as libbpf's ``ring_buffer``
maps it (kernel/bpf/ringbuf.c ``ringbuf_map_mmap_kern``, tools/lib/bpf/ringbuf.c):

* offset 0, one page, read-write: the consumer page; its first ``u64`` is the consumer
  position, which only the reader advances;
* offset one page, read-only: the producer page (its first ``u64`` the producer position),
  followed by the data area mapped *twice* in a row, so a record that wraps around the end is
  still one contiguous slice.

Each record starts with an 8-byte header (<linux/bpf.h>, ``BPF_RINGBUF_HDR_SZ``): a ``u32``
length whose top bits are ``BPF_RINGBUF_BUSY_BIT`` (reserved, not yet committed: stop there)
and ``BPF_RINGBUF_DISCARD_BIT`` (skip it), then a ``u32`` page offset the reader ignores. A
record takes its length plus the header, rounded up to 8 bytes. Positions only grow; a
position masked by ``size - 1`` is the offset in the data area.

Hostile-safe: the walk (``walk``, a pure function over bytes) checks every length against the
data between the consumer and producer positions and against the ring's size, and raises
``RingError`` rather than read past the mapping; ``skip`` then resynchronises at the producer
position (records lost, never a crash or a loop). One consumer per ring: two readers of the
same pinned ring would each see part of it.

Memory order: the kernel publishes a record with a release store on its header; Python cannot
issue the matching acquire fence, which x86-64 (total store order) gives for free; on weakly
ordered machines a record could, rarely, be read torn — its decoder must (and sockgate's does)
accept any bytes.

The ring's file descriptor is pollable (``ringbuf_map_poll_kern``: readable while data waits),
so an event loop watches it beside sockets and signals. The kernel wakes a waiter only when
the reader has caught up, so a reader drains the ring each time it is woken; a level-triggered
loop (select, poll, epoll without EPOLLET, asyncio's readers) reports a partly drained ring
again.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

from sockgate.errors import AdapterError
from sockgate.linux import bpfsys
from sockgate.linux._errors import translated

# <linux/bpf.h>
BPF_MAP_TYPE_RINGBUF = 27
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8

_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")
PAGE = mmap.PAGESIZE
DRAIN_LIMIT = 65536  # records taken per read: a flooded ring cannot hold the loop forever


class RingError(AdapterError):
    """The ring's positions or a record header are impossible: a corrupt or foreign ring."""


@dataclass(frozen=True)
class Walked:
    """What ``walk`` found: the records' payloads, and the consumer position after them."""

    records: tuple[bytes, ...]
    consumer: int


def walk(data: bytes | memoryview, size: int, consumer: int, producer: int, limit: int = DRAIN_LIMIT) -> Walked:
    """The committed records of a ring whose data area (``size`` bytes, mapped twice:
    ``data`` holds ``2 * size`` bytes) lies between ``consumer`` and ``producer``; stops at
    a busy record or after ``limit`` records. Raises ``RingError`` on an impossible state."""
    if size <= 0 or size & (size - 1) or len(data) < 2 * size:
        raise RingError(f"ring data of {len(data)} bytes does not hold a ring of {size} bytes twice")
    if not consumer <= producer <= consumer + size:
        raise RingError(f"ring positions impossible: consumer {consumer}, producer {producer}, size {size}")
    out: list[bytes] = []
    while consumer < producer and len(out) < limit:
        off = consumer & (size - 1)
        (head,) = _U32.unpack_from(data, off)
        if head & BPF_RINGBUF_BUSY_BIT:
            break
        length = head & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)
        total = (length + BPF_RINGBUF_HDR_SZ + 7) & ~7
        if total > producer - consumer:
            raise RingError(f"ring record of {length} bytes at position {consumer} runs past the data ({producer - consumer} bytes)")
        if not head & BPF_RINGBUF_DISCARD_BIT:
            out.append(bytes(data[off + BPF_RINGBUF_HDR_SZ : off + BPF_RINGBUF_HDR_SZ + length]))
        consumer += total
    return Walked(tuple(out), consumer)


class RingBuffer:
    """The consumer of one ring map; owns ``fd`` (closed by ``close``)."""

    def __init__(self, fd: int, name: str = "") -> None:
        self.fd = fd
        self.name = name or f"fd {fd}"
        self._consumer: mmap.mmap | None = None
        self._producer: mmap.mmap | None = None
        try:
            self.size = self._check(fd)
            with translated(f"map BPF ring {self.name}"):
                self._consumer = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
                self._producer = mmap.mmap(fd, PAGE + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE)
        except BaseException:
            self.close()
            raise
        self._data = memoryview(self._producer)[PAGE:]

    @classmethod
    def pinned(cls, path: str) -> RingBuffer:
        """The ring pinned at ``path`` (read-write: the reader writes its consumer position)."""
        return cls(bpfsys.get_pinned(path), path)  # (the ring owns the fd, and closes it on failure)

    def _check(self, fd: int) -> int:
        kind = bpfsys.object_kind(fd)
        if kind != "map":
            raise RingError(f"{self.name}: not a BPF map (a {kind})", target=self.name)
        info = bpfsys.map_info(fd)
        size = int(info.max_entries)
        if info.type != BPF_MAP_TYPE_RINGBUF or size <= 0 or size & (size - 1) or size % PAGE:
            raise RingError(f"{self.name}: not a BPF ring buffer (map type {info.type}, {size} bytes)", target=self.name)
        return size

    def fileno(self) -> int:
        return self.fd

    @property
    def positions(self) -> tuple[int, int]:
        """(consumer, producer)."""
        assert self._consumer is not None and self._producer is not None, "ring closed"
        return _U64.unpack_from(self._consumer, 0)[0], _U64.unpack_from(self._producer, 0)[0]

    def read(self, limit: int = DRAIN_LIMIT) -> list[bytes]:
        """The records committed since the last read (at most ``limit``); the consumer position
        moves past them, so the kernel may reuse their space. Raises ``RingError``."""
        consumer, producer = self.positions
        try:
            walked = walk(self._data, self.size, consumer, producer, limit)
        except RingError as e:
            raise RingError(f"{self.name}: {e}", target=self.name) from None
        self._advance(walked.consumer)
        return list(walked.records)

    def skip(self) -> None:
        """Drop everything up to the producer position (after a ``RingError``)."""
        self._advance(self.positions[1])

    def _advance(self, consumer: int) -> None:
        assert self._consumer is not None, "ring closed"
        _U64.pack_into(self._consumer, 0, consumer)

    def close(self) -> None:
        if hasattr(self, "_data"):
            self._data.release()
        for m in (self._producer, self._consumer):
            if m is not None:
                m.close()
        self._producer = self._consumer = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
