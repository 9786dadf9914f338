"""The refusal log over real pinned maps: events a real program wrote to a service's ring
become one line per source per interval, counted from the service's counter; the monitor runs
on the supervisor's selectors loop, started in one call; JSON lines carry the fields;
records that are no events are reported, not fatal; the journal sink speaks the native
protocol to a socket."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import socket
import struct
import sys
import tempfile
import time
from typing import Iterator

import pytest

from sockgate.ebpf import Options, compile_service, layout
from sockgate.ebpf.layout import Count, Reason, SourceKey
from sockgate.ebpf.maps import LpmKey
from sockgate.linux import bpfsys
from sockgate.linux.journal import Journal
from sockgate.linux.ringbuf import RingBuffer
from sockgate.policy.parser import parse_policy
from sockgate.log import Log
from sockgate.refusallog import RefusalMonitor, refusal_log, start_refusal_log
from sockgate.supervisor import SelectorLoop
from support.ebpfstate import Loaded, frame
from support.pinned import PinnedService, private_bpffs
from support.ringwriter import RingWriter

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="BPF rings are Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting bpffs and loading BPF programs needs root"),
    pytest.mark.root,
]


class Lab:
    def __init__(self, root: str) -> None:
        self.root = root
        self.ssh = PinnedService(root, "ssh")
        self.writer = RingWriter(self.ssh.events, layout.EVENT.size)

    def refuse(self, source: str, reason: Reason = Reason.RULE, rule: int = 1, counted: int | None = None) -> None:
        a = ipaddress.ip_address(source)
        now = time.monotonic_ns()
        self.writer.write(layout.EVENT.pack(now, a.version, int(reason), 0, rule, a.packed.ljust(16, b"\0")))
        if counted is not None:
            bpfsys.map_update(self.ssh.counts, SourceKey.of(a).pack(), Count(counted, now, now).pack())

    def close(self) -> None:
        self.writer.close()
        self.ssh.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with private_bpffs() as root:
        lab = Lab(root)
        try:
            yield lab
        finally:
            lab.close()


def test_one_line_per_source_counted_from_the_counter(lab: Lab) -> None:
    out = io.StringIO()
    mon = RefusalMonitor.pinned(["ssh"], refusal_log("text", stream=out), root=lab.root, labels={"ssh": ["a.conf:3", "a.conf:4"]})
    try:
        for _ in range(3):
            lab.refuse("203.0.113.5")
        lab.refuse("203.0.113.5", counted=17)
        lab.refuse("2001:db8::7", Reason.RULE, -3)
        [fd] = mon.fds()
        mon.on_readable(fd)
        mon.flush()
        lines = out.getvalue().splitlines()
        assert len(lines) == 2
        assert lines[0].endswith(f" sockgate[{os.getpid()}]: ssh: refused connect from 203.0.113.5 (17 times in 1 s, rule a.conf:4)")
        assert lines[1].endswith(": ssh: refused connect from 2001:db8::7 (1 time in 1 s, default)")
    finally:
        mon.close()


def test_the_monitor_runs_on_the_supervisor_loop(lab: Lab) -> None:
    out = io.StringIO()
    loop = SelectorLoop()
    mon = start_refusal_log(loop, ["ssh"], "json", root=lab.root, interval=0.2, stream=out)
    try:
        lab.refuse("198.51.100.9", Reason.BAN, -1)
        lab.writer.write(bytes(layout.EVENT.size))  # family 0: no event
        loop.call_later(5.0, loop.stop)  # a bound, should the line never come
        deadline = time.monotonic() + 5

        def check() -> None:
            if '"refused"' in out.getvalue() or time.monotonic() > deadline:
                loop.stop()
            else:
                loop.call_later(0.05, check)

        loop.call_later(0.05, check)
        loop.run()
        recs = [json.loads(x) for x in out.getvalue().splitlines()]
        refused = [r for r in recs if r["event"] == "refused"]
        assert len(refused) == 1
        r = refused[0]
        assert {k: r[k] for k in ("service", "source", "count", "reason", "rule")} == {
            "service": "ssh", "source": "198.51.100.9", "count": 1, "reason": "ban", "rule": None}
        assert r["first_seen"].endswith("Z") and r["last_seen"] >= r["first_seen"]
        assert any(x["event"] == "error" and "1 ring records were not refusal events" in x["message"] for x in recs)
    finally:
        mon.close()
        loop.close()


def test_missing_pins_open_nothing(lab: Lab) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(Exception, match="nope"):
        RefusalMonitor.pinned(["ssh", "nope"], refusal_log(stream=io.StringIO()), root=lab.root)
    assert set(os.listdir("/proc/self/fd")) <= before | {str(n) for n in range(3)}


def _journal_fields(datagram: bytes) -> dict[str, str]:
    out, rest = {}, datagram
    while rest:
        line, sep, tail = rest.partition(b"\n")
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode()
            rest = tail
        else:
            (n,) = struct.unpack("<Q", tail[:8])
            out[line.decode()] = tail[8 : 8 + n].decode()
            rest = tail[8 + n + 1 :]
    return out


def test_the_journal_sink_speaks_the_native_protocol() -> None:
    with tempfile.TemporaryDirectory() as d:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(f"{d}/socket")
        server.settimeout(5)
        try:
            log = Log("text", sink="journal", ident="sockgate", facility=32, journal=Journal(f"{d}/socket"))
            log.message("refused", "ssh: refused connect from 203.0.113.5 (2 times in 60 s, rule 1)", 4,
                        service="ssh", source="203.0.113.5", count=2, note="two\nlines")
            log.close()
            got = _journal_fields(server.recv(65536))
        finally:
            server.close()
    assert got["MESSAGE"] == "ssh: refused connect from 203.0.113.5 (2 times in 60 s, rule 1)"
    assert (got["PRIORITY"], got["SYSLOG_IDENTIFIER"], got["SYSLOG_FACILITY"]) == ("4", "sockgate", "4")
    assert (got["SOCKGATE_SOURCE"], got["SOCKGATE_COUNT"], got["SOCKGATE_NOTE"]) == ("203.0.113.5", "2", "two\nlines")
    assert got["SOCKGATE_EVENT"] == "refused"


def test_a_source_whose_events_the_full_ring_dropped_is_still_logged() -> None:
    """An attacker hiding among a flood of spoofed sources that keeps the ring full is named
    from the counters, with its count, and the loss is said (F7)."""
    svc = parse_policy("service ssh tcp/22 {\n allow 10.0.0.0/8\n default deny\n}\n", "p.conf").require_service("ssh")
    lo = Loaded(compile_service(svc, options=Options(protocol="tcp", ring_bytes=4096)))
    out = io.StringIO()
    mon = RefusalMonitor(refusal_log("text", stream=out), interval=1.0)
    try:
        mon.add("ssh", RingBuffer(os.dup(lo.maps["sg_events"])), os.dup(lo.maps["sg_counts"]), os.dup(lo.maps["sg_stats"]))
        for i in range(300):  # spoofed noise from 300 sources: the ring is full
            lo.run(frame(f"198.18.{i // 250}.{i % 250 + 1}"))
        for _ in range(20):  # the attacker's probes: their events are lost
            lo.run(frame("203.0.113.99"))
        for fd in mon.fds():
            mon.on_readable(fd)
        mon.flush()
        lines = out.getvalue().splitlines()
        assert any(line.endswith("ssh: refused connect from 203.0.113.99 (20 times in 1 s, cause unknown: its events were"
                                 " lost)") for line in lines), lines[-3:]
        assert any("refusal events lost (the event ring was full)" in line for line in lines)
        assert sum("refused connect from" in line for line in lines) == 301  # every source, once
    finally:
        mon.close()
        lo.close()


def test_a_forged_mapped_source_without_its_event_is_still_called_forged() -> None:
    """A ``::ffff:V`` source is forged whatever the ring said: when its refusal has no event in
    an interval (refused again within its event interval, or the event lost), the line
    recovered from the counters must still say ``forged source`` — never ``cause unknown``,
    which the fail2ban filter matches and fail2ban folds to the IPv4 ``V`` (one spoofed IPv6
    datagram per interval would get an innocent IPv4 host banned)."""
    svc = parse_policy("service dns udp/53 {\n allow 10.0.0.0/8\n default deny\n}\n", "p.conf").require_service("dns")
    lo = Loaded(compile_service(svc, options=Options(protocol="udp")))
    out = io.StringIO()
    mon = RefusalMonitor(refusal_log("text", stream=out), interval=1.0)
    try:
        mon.add("dns", RingBuffer(os.dup(lo.maps["sg_events"])), os.dup(lo.maps["sg_counts"]), os.dup(lo.maps["sg_stats"]))
        for _ in range(2):  # an event, then (within the event interval) none: recovered from the counter
            lo.run(frame("::ffff:192.0.2.44", tcp_flags=None))
            for fd in mon.fds():
                mon.on_readable(fd)
            mon.flush()
        lines = [x for x in out.getvalue().splitlines() if "refused connect from" in x]
        assert len(lines) == 2, lines
        assert all(x.endswith("refused connect from ::ffff:c000:22c (1 time in 1 s, forged source)") for x in lines), lines
    finally:
        mon.close()
        lo.close()


def test_a_banned_source_without_its_event_is_still_called_banned() -> None:
    """A banned source keeps knocking; refusals without an event in an interval (within its
    event interval, or lost) must not come back as ``cause unknown``, which the fail2ban
    filter matches: sockgate's own ban would feed fail2ban again and again (its bans grow
    with ``bantime.increment``), which the filter ignores ``banned`` lines to prevent. The
    monitor asks the service's ban tries about each source it recovers from the counters."""
    svc = parse_policy("service dns udp/53 {\n allow all\n default deny\n}\n", "p.conf").require_service("dns")
    lo = Loaded(compile_service(svc, options=Options(protocol="udp")))
    out = io.StringIO()
    mon = RefusalMonitor(refusal_log("text", stream=out), interval=1.0)
    try:
        bans = {4: os.dup(lo.maps["sg_bans4"]), 6: os.dup(lo.maps["sg_bans6"])}
        mon.add("dns", RingBuffer(os.dup(lo.maps["sg_events"])), os.dup(lo.maps["sg_counts"]), os.dup(lo.maps["sg_stats"]),
                bans=bans)
        for source in ("192.0.2.9", "2001:db8::9"):
            a = ipaddress.ip_address(source)
            bpfsys.map_update(lo.maps[f"sg_bans{a.version}"], LpmKey.host(a).pack(), layout.BAN_VALUE.pack(0, 2, 0))
        for _ in range(2):  # an event each, then (within the event interval) none: recovered from the counters
            assert not lo.run(frame("192.0.2.9", tcp_flags=None)) and not lo.run(frame("2001:db8::9", tcp_flags=None))
            for fd in mon.fds():
                mon.on_readable(fd)
            mon.flush()
        lines = [x for x in out.getvalue().splitlines() if "refused connect from" in x]
        assert len(lines) == 4 and all(x.endswith("(1 time in 1 s, banned)") for x in lines), lines
        bpfsys.map_delete(lo.maps["sg_bans4"], LpmKey.host(ipaddress.ip_address("192.0.2.9")).pack())
        mon.flush()  # nothing new: no line
        assert lo.run(frame("192.0.2.9", tcp_flags=None))  # lifted: allowed, no refusal
        assert len([x for x in out.getvalue().splitlines() if "refused connect from" in x]) == 4
    finally:
        mon.close()
        lo.close()
