"""refusallog.RefusalMonitor with a fake ring, clock and loop: what an event loop drives (fds,
on_readable, next_deadline, on_deadline), one start() call on a supervisor loop, a corrupt
ring reported and resynchronised, records that are no events counted, close() writing what is
pending. The real rings and pins: tests/kernel/test_refusallog.py."""

from __future__ import annotations

import io
import ipaddress
import json
from typing import Any, Callable

from sockgate.ebpf import layout
from sockgate.ebpf.layout import Reason
from sockgate.linux.ringbuf import RingError
from sockgate.refusallog import RefusalMonitor, refusal_log

S = 1_000_000_000


class FakeRing:
    def __init__(self, fd: int) -> None:
        self.fd, self.records, self.broken, self.skipped, self.closed = fd, [], False, 0, False

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[bytes]:
        if self.broken:
            self.broken = False
            raise RingError("ring record of 99999 bytes at position 8 runs past the data (40 bytes)")
        out, self.records = self.records, []
        return out

    def skip(self) -> None:
        self.skipped += 1

    def close(self) -> None:
        self.closed = True


class FakeLoop:
    def __init__(self) -> None:
        self.watched: dict[int, Callable[[], None]] = {}
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        del self.watched[fd]

    def call_later(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        entry = (delay, callback)
        self.timers.append(entry)
        return lambda: self.timers.remove(entry) if entry in self.timers else None

    def stop(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.ns = 1000 * S

    def __call__(self) -> int:
        return self.ns


def _event(ts: int, source: str, reason: Reason = Reason.RULE, rule: int = 0) -> bytes:
    a = ipaddress.ip_address(source)
    return layout.EVENT.pack(ts, a.version, int(reason), 0, rule, a.packed.ljust(16, b"\0"))


def _monitor(fmt: str = "json") -> tuple[RefusalMonitor, FakeRing, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    mon = RefusalMonitor(refusal_log(fmt, stream=out), 60.0, mono_ns=clock, wall_ns=lambda: 1_700_000_000 * S)  # type: ignore[arg-type]
    ring = FakeRing(7)
    mon.add("ssh", ring)  # type: ignore[arg-type]
    return mon, ring, out, clock


def _records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_what_a_loop_drives() -> None:
    mon, ring, out, clock = _monitor()
    assert mon.fds() == [7] and mon.next_deadline() == 1060.0
    ring.records = [_event(1001 * S, "203.0.113.5"), _event(1002 * S, "203.0.113.5"), b"short", bytes(32)]
    mon.on_readable(7)
    clock.ns = 1059 * S
    mon.on_deadline()
    assert out.getvalue() == ""  # not due yet
    clock.ns = 1060 * S
    mon.on_deadline()
    recs = _records(out)
    assert recs[0]["event"] == "refused" and {k: recs[0][k] for k in ("service", "source", "count", "reason", "rule")} == {
        "service": "ssh", "source": "203.0.113.5", "count": 2, "reason": "rule", "rule": 1}
    assert recs[0]["first_seen"] == "2023-11-14T22:12:21Z" and recs[0]["interval"] == 60
    assert recs[1]["event"] == "error" and recs[1]["message"] == "2 ring records were not refusal events, skipped"
    assert mon.next_deadline() == 1120.0


def test_start_is_one_call_on_a_loop() -> None:
    mon, ring, out, clock = _monitor("text")
    loop = FakeLoop()
    mon.start(loop)
    assert list(loop.watched) == [7] and [d for d, _ in loop.timers] == [60.0]
    ring.records = [_event(1001 * S, "2001:db8::7", Reason.RATE)]
    loop.watched[7]()
    clock.ns = 1060 * S
    _, tick = loop.timers.pop()
    tick()
    assert out.getvalue().endswith(": ssh: refused connect from 2001:db8::7 (1 time in 60 s, rate limit)\n")
    assert [d for d, _ in loop.timers] == [60.0]  # re-armed for the next interval
    mon.close()
    assert loop.timers == [] and ring.closed


def test_a_corrupt_ring_is_reported_and_resynchronised() -> None:
    mon, ring, out, _ = _monitor()
    ring.broken = True
    mon.on_readable(7)
    mon.flush()
    [rec] = _records(out)
    assert rec["event"] == "error" and rec["service"] == "ssh" and "runs past the data" in rec["message"]
    assert ring.skipped == 1


def test_close_drains_and_writes_what_is_pending() -> None:
    mon, ring, out, clock = _monitor("text")
    ring.records = [_event(1001 * S, "192.0.2.1", Reason.RULE, -1)]
    clock.ns = 1010 * S
    mon.close()
    assert out.getvalue().endswith(": ssh: refused connect from 192.0.2.1 (1 time in 10 s, banned)\n") and ring.closed
