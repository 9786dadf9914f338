"""The refusal log: the eBPF filters' refusal events, one line per source per interval.

TCP Wrappers logged ``refused connect from HOST`` and fail2ban, sshguard and DenyHosts ban on
it; a kernel filter refuses silently. The ``RefusalMonitor`` reads each service's event ring
(linux/ringbuf.py), gathers the events of an interval (ebpf/refusals.Aggregator, counted from
the service's refusal counters where they tell), and at the end of each interval writes one
record per refused source through a ``Log``: in text ``ssh: refused connect from 203.0.113.5
(3 times in 60 s, rule 2)``, in JSON one object with service, source, count, first_seen,
last_seen, reason, rule, local; a source that is one of this host's own addresses
(``linux/netaddrs``, every namespace it may enter) ends ``, local source)`` so that no ban
tool bans the host itself; to stderr, syslog (``sockgate`` on LOG_AUTH at LOG_WARNING, as
tcpd logs refusals) or the journal (``refusal_log``). contrib/fail2ban matches the lines.

Any event loop hosts it: ``fds`` to watch, ``on_readable(fd)`` when one is readable,
``next_deadline`` (seconds on the programs' clock) and ``on_deadline`` for the timer; ``start(loop)`` does
all of it on a ``supervisor.Loop`` (the selectors loop of ``run`` and inetd, or asyncio's in
the proxy), and ``start_refusal_log`` opens the pins and the log and starts, in one call. A
corrupt ring is an error record and a resynchronisation, never the end of the host; ``close``
writes what is pending.
"""

from __future__ import annotations

import functools
import os
import syslog
import time
from typing import Callable, Iterable, Mapping, Sequence, TextIO

from sockgate.ebpf import layout
from sockgate.ebpf.maps import LpmKey
from sockgate.ebpf.refusals import (
    Aggregator, Clock, Overflow, Refusal, decode_event, describe, describe_overflow, fields, overflow_fields,
)
from sockgate.errors import SockgateError
from sockgate.kernel import pins
from sockgate.kernel.backend import Loaded
from sockgate.kernel.ebpf import EbpfLoaded
from sockgate.kernel.ebpfstore import ktime_ns
from sockgate.linux import bpfsys, netaddrs
from sockgate.linux.netaddrs import Address
from sockgate.linux.ringbuf import RingBuffer, RingError
from sockgate.log import Log, LogFormat, LogSink
from sockgate.resolve.model import ResolvedService
from sockgate.supervisor import Cancel, Loop

DEFAULT_INTERVAL = 60.0  # seconds per line per source, as fail2ban's findtime thinks in minutes
SEVERITY = syslog.LOG_WARNING  # libwrap's deny_severity


def refusal_log(fmt: LogFormat = "text", sink: LogSink = "stderr", stream: TextIO | None = None) -> Log:
    """The ``Log`` the refusal lines go to: ident ``sockgate``, facility LOG_AUTH."""
    return Log(fmt, stream, sink=sink, ident="sockgate", facility=syslog.LOG_AUTH, flush_interval=0.0)


class _Service:
    def __init__(self, name: str, ring: RingBuffer, counts: int | None, stats: int | None = None,
                 bans: Mapping[int, int] | None = None) -> None:
        self.name, self.ring, self.counts = name, ring, counts
        self.stats = stats  # its sg_stats map's fd (events lost)
        self.bans = dict(bans or {})  # family → its ban trie's fd
        self.lost = 0  # events lost as of the last flush


class RefusalMonitor:
    """Watches the event rings of services, and writes their refusal lines to ``log``."""

    def __init__(self, log: Log, interval: float = DEFAULT_INTERVAL, *, labels: Mapping[str, Sequence[str]] | None = None,
                 mono_ns: Callable[[], int] = ktime_ns, wall_ns: Callable[[], int] = time.time_ns,
                 local: Callable[[], frozenset[Address]] = netaddrs.host_addresses) -> None:
        self.log = log
        self._local = local  # this host's own addresses, asked once per flush that writes a line
        self.interval = interval
        self.labels = dict(labels or {})  # service → its rules' labels (``file:line``), by index
        self._mono, self._wall = mono_ns, wall_ns
        self._agg = Aggregator(max(1, int(interval * 1e9)), mono_ns())
        self._by_fd: dict[int, _Service] = {}
        self._counts: dict[str, int] = {}  # service → its counter map's fd
        self._malformed = 0
        self._cancel: Cancel | None = None

    @classmethod
    def pinned(cls, services: Iterable[str], log: Log, *, root: str = layout.ROOT, interval: float = DEFAULT_INTERVAL,
               labels: Mapping[str, Sequence[str]] | None = None) -> RefusalMonitor:
        """A monitor of ``services``' pinned rings and counters (all or none: an error closes
        what was opened). Raises ``PinError``."""
        monitor = cls(log, interval, labels=labels)
        events, counts = layout.events_spec(), layout.counts_spec()
        try:
            for name in services:
                d = layout.service_dir(name, root)
                path = f"{d}/{pins.map_name(events)}"
                ring = RingBuffer(pins.open_map(path, events, readonly=False), path)
                opened: list[int] = []
                try:
                    counts_fd = pins.open_map(f"{d}/{pins.map_name(counts)}", counts)
                    opened.append(counts_fd)
                    stats_fd = pins.open_stats(d)
                    opened += [stats_fd] if stats_fd is not None else []
                    bans = pins.open_bans(d)
                    opened += bans.values()
                except BaseException:
                    ring.close()
                    for fd in opened:
                        os.close(fd)
                    raise
                monitor.add(name, ring, counts_fd, stats_fd, bans=bans)
        except BaseException:
            monitor.close(flush=False)
            raise
        return monitor

    def add(self, service: str, ring: RingBuffer, counts_fd: int | None = None, stats_fd: int | None = None, *,
            bans: Mapping[int, int] | None = None) -> None:
        """Watch ``ring`` for ``service``; ``counts_fd`` (its counter map) gives exact counts
        and names the sources whose events were lost; ``stats_fd`` (its ``sg_stats``) says
        how many were; ``bans`` (family → its ban trie) names the cause of a recovered source
        that is banned. The monitor owns the fds."""
        s = _Service(service, ring, counts_fd, stats_fd, bans)
        s.lost = self._lost(s)
        self._by_fd[ring.fileno()] = s
        if counts_fd is not None:
            self._counts[service] = counts_fd

    # -- what an event loop drives ---------------------------------------------------------

    def fds(self) -> list[int]:
        return list(self._by_fd)

    def on_readable(self, fd: int) -> None:
        """Drain the ring of ``fd`` into the interval."""
        s = self._by_fd.get(fd)
        if s is None:
            return
        try:
            records = s.ring.read()
        except RingError as e:
            self.log.error(f"refusal events lost: {e}", service=s.name)
            s.ring.skip()
            return
        for raw in records:
            event = decode_event(raw)
            if event is None:
                self._malformed += 1
            else:
                self._agg.add(s.name, event)

    def next_deadline(self) -> float:
        """When ``on_deadline`` is due, in seconds of ``mono_ns`` (the programs' clock,
        ``kernel.ebpfstore.ktime_ns``: ``time.monotonic()`` outside a time namespace)."""
        return self._agg.deadline / 1e9

    def on_deadline(self) -> None:
        if self._mono() >= self._agg.deadline:
            self.flush()

    def flush(self) -> None:
        """Write the lines of the interval so far, and start a new one."""
        now = self._mono()
        clock = Clock(self._wall(), now)
        for s in self._by_fd.values():
            self._recover(s)
        items = self._agg.flush(now, self._totals)
        own = self._own() if any(isinstance(i, Refusal) for i in items) else frozenset()
        for item in items:
            self._write(item, clock, own)
        if self._malformed:
            self.log.error(f"{self._malformed} ring records were not refusal events, skipped")
            self._malformed = 0
        self.log.flush()

    def start(self, loop: Loop) -> None:
        """Everything, on ``loop``: each ring watched, the interval's timer armed."""
        for fd in self._by_fd:
            loop.watch(fd, functools.partial(self.on_readable, fd))

        def tick() -> None:
            self.on_deadline()
            self._cancel = loop.call_later(max(0.0, self.next_deadline() - self._mono() / 1e9), tick)

        self._cancel = loop.call_later(self.interval, tick)

    def close(self, flush: bool = True) -> None:
        """Write what is pending (unless ``flush`` is False), stop the timer, close the maps."""
        if self._cancel is not None:
            self._cancel()
            self._cancel = None
        if flush:
            for fd in self._by_fd:
                self.on_readable(fd)
            self.flush()
        for s in self._by_fd.values():
            s.ring.close()
            for owned in (s.counts, s.stats, *s.bans.values()):
                if owned is not None:
                    os.close(owned)
        self._by_fd.clear()
        self._counts.clear()

    # -- inside ----------------------------------------------------------------------------

    def _totals(self, service: str, key: layout.SourceKey) -> layout.Count | None:
        fd = self._counts.get(service)
        if fd is None:
            return None
        try:
            raw = bpfsys.map_lookup(fd, key.pack(), layout.COUNT_VALUE.size)
        except SockgateError:
            return None
        return layout.Count.unpack(raw) if raw is not None else None

    def _lost(self, s: _Service) -> int:
        if s.stats is None:
            return 0
        try:
            return pins.read_stats(s.stats).get(layout.Stat.EVENTS_LOST, 0)
        except SockgateError:
            return 0

    def _recover(self, s: _Service) -> None:
        """Say how many of ``s``'s events the full ring dropped since the last flush, and
        add the sources its counters show refused in this interval that no event named
        (``Aggregator.recover``). The counters are walked at every flush, lost events or
        not: a source refused again within its event interval after a flush has no event
        either."""
        lost = self._lost(s)
        if lost > s.lost:
            self.log.error(f"{lost - s.lost} refusal events lost (the event ring was full); sources are named from the"
                           " counters, without a cause", service=s.name)
        s.lost = max(lost, s.lost)
        if s.counts is None:
            return
        spec = layout.counts_spec()
        try:
            rows = [(layout.SourceKey.unpack(k), layout.Count.unpack(v)) for k, v in pins.walk(s.counts, spec)
                    if len(k) == layout.SOURCE_KEY.size and len(v) == layout.COUNT_VALUE.size]
        except SockgateError as e:
            self.log.error(f"refusal counters not read: {e}", service=s.name)
            return
        self._agg.recover(s.name, [(k, c) for k, c in rows if k.scope == layout.SERVICE_SCOPE],
                          functools.partial(self._banned, s, self._mono()))

    def _banned(self, s: _Service, now_ns: int, key: layout.SourceKey) -> bool:
        """Whether ``key``'s address is banned now, as the program would find it (the longest
        matching entry of its family's trie, not expired)."""
        address, fd = key.address, s.bans.get(key.family)
        if address is None or fd is None:
            return False
        try:
            raw = bpfsys.map_lookup(fd, LpmKey.host(address).pack(), layout.BAN_VALUE.size)
        except SockgateError:
            return False
        return raw is not None and layout.Ban.unpack(raw).active(now_ns)

    def _own(self) -> frozenset[Address]:
        """This host's addresses; when they cannot be read, said once per flush and taken as
        none (a line then names a source as any other)."""
        try:
            return self._local()
        except (OSError, SockgateError) as e:
            self.log.error(f"this host's own addresses could not be read (local sources not marked): {e}")
            return frozenset()

    def _write(self, item: Refusal | Overflow, clock: Clock, own: frozenset[Address] = frozenset()) -> None:
        if isinstance(item, Overflow):
            self.log.message("refused", describe_overflow(item), SEVERITY, **overflow_fields(item))
            return
        label = _label(self.labels.get(item.service, ()), item.rule)
        local = item.source in own
        self.log.message("refused", describe(item, label, local), SEVERITY, **fields(item, clock, local))


def start_refusal_log(loop: Loop, services: Iterable[str], fmt: LogFormat = "text", sink: LogSink = "stderr", *,
                      root: str = layout.ROOT, interval: float = DEFAULT_INTERVAL,
                      labels: Mapping[str, Sequence[str]] | None = None, stream: TextIO | None = None) -> RefusalMonitor:
    """The refusal log of ``services`` running on ``loop``: what ``run``, the proxy and the
    agent call once their eBPF guards are loaded (``close`` the result when they stop).
    Raises ``PinError`` when a service has no pinned ring or counters."""
    monitor = RefusalMonitor.pinned(services, refusal_log(fmt, sink, stream), root=root, interval=interval, labels=labels)
    monitor.start(loop)
    return monitor


class RefusalLogs:
    """The refusal log of a command hosting several services (the agent, the proxy): which
    services are eBPF changes with a reload (a backend chosen by ``auto``, a service added or
    dropped), so after every swap ``update`` brings the monitor to the services in force. The
    same services keep their monitor (the rings are pinned per service, not per program, and
    outlive a reload) with the new rules' labels; another set closes the old monitor (writing
    what is pending) and starts one over the new set. A log that cannot start is said (and kept
    in ``error``), and the guards stay: the log is what is lost, never a filter."""

    def __init__(self, loop: Loop, fmt: LogFormat = "text", sink: LogSink = "stderr",
                 interval: float = DEFAULT_INTERVAL, say: Callable[[str], None] = lambda text: None) -> None:
        self.loop, self.fmt, self.sink, self.interval, self.say = loop, fmt, sink, interval, say
        self.monitor: RefusalMonitor | None = None
        self.watching: tuple[str, frozenset[str]] | None = None  # (pin root, services)
        self.error: str | None = None  # why the log is not running

    def update(self, loaded: Mapping[str, Loaded], resolved: Mapping[str, ResolvedService]) -> None:
        """The log over the eBPF services of ``loaded`` (the policy in force)."""
        ebpf = {n: p for n, p in loaded.items() if isinstance(p, EbpfLoaded)}
        labels: dict[str, Sequence[str]] = {n: rule_labels(resolved[n]) for n in ebpf if n in resolved}
        roots = {p.root for p in ebpf.values()}
        want = (min(roots), frozenset(ebpf)) if ebpf else None
        if want == self.watching and self.monitor is not None:
            self.monitor.labels = labels
            return
        self.close()
        if want is None:
            return
        if len(roots) > 1:  # (one kernel, one bpffs: never so today)
            self.error = f"no refusal log: eBPF services pinned under several roots ({', '.join(sorted(roots))})"
            self.say(self.error)
            return
        try:
            self.monitor = start_refusal_log(self.loop, sorted(want[1]), self.fmt, self.sink, root=want[0],
                                             interval=self.interval, labels=labels)
        except SockgateError as e:
            self.error = f"no refusal log: {e}"
            self.say(self.error)
            return
        self.watching, self.error = want, None
        self.say(f"refusal log of {', '.join(sorted(want[1]))}: {self.fmt} to {self.sink}, "
                 f"one line per refused source per {self.interval:g} s")

    def close(self) -> None:
        """Write what is pending and stop."""
        if self.monitor is not None:
            self.monitor.close()
        self.monitor, self.watching, self.error = None, None, None


def rule_labels(resolved: ResolvedService) -> tuple[str, ...]:
    """Each rule's ``file:line``, by its index in ``Service.rules`` (the refusal log's cause)."""
    return tuple(f"{r.span.file}:{r.span.line}" for r in resolved.service.rules)


def _label(labels: Sequence[str], rule: int | None) -> str | None:
    return labels[rule] if rule is not None and 0 <= rule < len(labels) else None
