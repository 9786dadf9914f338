"""agent/watcher without a kernel: records become events; the poll fallback learns first,
then reports new listeners and watched UDP binds once; the fallback says why in its reason;
``start`` drives either kind on a supervisor loop."""

from __future__ import annotations

from typing import Callable

import pytest

from sockgate.agent import watcher as wmod
from sockgate.agent.model import ResyncPacer, SocketEvent, resync
from sockgate.agent.watcher import POLL_BURST, PollWatcher, open_watcher, start, to_event
from sockgate.ebpf.watch import Hook, WatchRecord, WatchSet
from sockgate.errors import AdapterError
from sockgate.linux import bpfsys, cgroupbpf
from sockgate.linux.sockdiag import Sock


def test_records_become_events() -> None:
    r = WatchRecord(Hook.BIND6, 5, 77, 3, 42, 43, 6, "udp", 53, "named")
    assert to_event(r) == SocketEvent("bind", 77, 3, 42, "named", 6, "udp", 53, 5)
    assert to_event(WatchRecord(Hook.LISTEN, 5, 78, 3, 0, 0, 4, "tcp", 22, "")).kind == "listen"


def sock(proto: str, port: int, inode: int, family: str = "ipv4") -> Sock:
    return Sock(proto, family, "stream" if proto == "tcp" else "dgram", 10 if proto == "tcp" else 7, inode,
                local_addr="0.0.0.0", local_port=port, cookie=1000 + inode if inode % 2 else None)


class Table:
    def __init__(self) -> None:
        self.socks: list[Sock] = []
        self.asked: list[tuple[list[str], dict[str, int]]] = []
        self.ports: list[dict[str, frozenset[int]]] = []

    def __call__(self, kinds: list[str], states: dict[str, int], *, ports: dict[str, frozenset[int]]) -> list[Sock]:
        self.asked.append((kinds, states))
        self.ports.append(ports)
        return [s for s in self.socks if s.proto not in ports or s.local_port in ports[s.proto]]


def test_poll_learns_first_then_reports_each_new_socket_once() -> None:
    table = Table()
    table.socks = [sock("tcp", 22, 1)]
    p = PollWatcher("cgroup BPF unavailable (x)", 2.0, table, now=lambda: 9)
    p.watch(WatchSet.of([("udp", 53)], []))
    assert [e.kind for e in p.drain()] == ["resync"]
    assert table.asked[0] == (["tcp", "udp"], {"tcp": 1 << 10, "udp": 1 << 7})
    table.socks += [sock("tcp", 80, 2, "ipv6"), sock("udp", 53, 3), sock("udp", 5353, 4)]
    assert p.drain() == [SocketEvent("listen", 0, 0, 0, "", 6, "tcp", 80, 9), SocketEvent("bind", 1003, 0, 0, "", 4, "udp", 53, 9)]
    assert p.drain() == []
    table.socks.append(sock("udp", 5353, 5))  # a new socket on an unwatched port: only when names are watched
    p.watch(WatchSet.of([], ["avahi-daemon"]))
    # the earlier one on 5353 was never dumped (UDP by port: the kernel filtered it out), so it
    # is new to the poll too: reported once, never missed
    assert [(e.port, e.cookie) for e in p.drain()] == [(5353, 0), (5353, 1005)]
    assert p.fileno() is None and p.interval() == 2.0 and p.lost == 0
    assert p.reason == "cgroup BPF unavailable (x): polling sock_diag every 2 s, in this network namespace only"


def test_a_poll_pass_with_many_new_sockets_is_one_rescan() -> None:
    table = Table()
    p = PollWatcher("r", 2.0, table, now=lambda: 9)
    assert [e.kind for e in p.drain()] == ["resync"]
    table.socks = [sock("tcp", 8000 + i, 10 + i) for i in range(POLL_BURST)]
    assert [e.port for e in p.drain()] == list(range(8000, 8000 + POLL_BURST))  # a few: each its own event
    table.socks += [sock("tcp", 9000 + i, 100 + i) for i in range(POLL_BURST + 1)]
    assert [e.kind for e in p.drain()] == ["resync"]  # more: one rescan, not a host-wide look each
    assert p.drain() == []


def test_the_poll_reads_full_records_only_when_its_cheap_look_sees_something_new() -> None:
    table = Table()
    table.socks = [sock("tcp", 22, 1)]
    looks: list[int] = []

    def identities(kinds: list[str], states: dict[str, int], *, ports: object) -> set[tuple[str, str, int]]:
        looks.append(1)
        return {(s.proto, s.family, s.inode) for s in table.socks}

    p = PollWatcher("r", 2.0, table, now=lambda: 9, identities=identities)
    assert [e.kind for e in p.drain()] == ["resync"]
    assert p.drain() == [] and p.drain() == []
    assert (len(looks), table.asked) == (3, [])  # nothing new: no record read
    table.socks.append(sock("tcp", 80, 3))
    assert p.drain() == [SocketEvent("listen", 1003, 0, 0, "", 4, "tcp", 80, 9)]
    assert len(table.asked) == 1
    table.socks = table.socks[1:]  # a close only: nothing to read
    assert p.drain() == [] and len(table.asked) == 1


def test_the_poll_dumps_udp_only_when_a_udp_socket_could_be_wanted() -> None:
    asked: list[list[str]] = []
    p = PollWatcher("r", 2.0, Table(), identities=lambda kinds, states, ports: asked.append(kinds) or set())
    for ws in (WatchSet.of([("tcp", 22)], []), WatchSet.of([("tcp", 22), ("udp", 53)], []), WatchSet.of([], ["sshd"]),
               WatchSet(all=True)):
        p.watch(ws)
        p.drain()
    assert asked == [["tcp"], ["tcp", "udp"], ["tcp", "udp"], ["tcp", "udp"]]


def test_a_socket_bound_between_the_cheap_look_and_the_records_is_reported_once() -> None:
    table = Table()
    early = [sock("tcp", 22, 1)]
    p = PollWatcher("r", 2.0, table, now=lambda: 9, identities=lambda k, s, ports: {(x.proto, x.family, x.inode) for x in early})
    p.drain()
    early.append(sock("tcp", 80, 3))
    table.socks = [*early, sock("tcp", 443, 5)]  # 443 came after the cheap look
    assert [e.port for e in p.drain()] == [80, 443]
    early.append(table.socks[2])
    assert p.drain() == []


def test_open_watcher_falls_back_to_the_poll_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: object, **k: object) -> object:
        raise AdapterError("load BPF program sg_wbind4 (69 instructions): operation not permitted")

    monkeypatch.setattr(wmod.CgroupWatcher, "open", refuse)
    w = open_watcher(period=5)
    assert w.mode == "poll" and w.reason.startswith("cgroup BPF unavailable (load BPF program sg_wbind4")
    with pytest.raises(AdapterError):
        open_watcher("cgroup-bpf")
    assert open_watcher("poll").mode == "poll"


class FakeLoop:
    def __init__(self) -> None:
        self.watched: dict[int, Callable[[], None]] = {}
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        del self.watched[fd]

    def call_later(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        self.timers.append((delay, callback))

        def cancel() -> None:
            self.cancelled += 1

        return cancel

    def stop(self) -> None:
        pass


class FakeRing:
    mode = "cgroup-bpf"
    reason = "fake"
    lost = 0

    def __init__(self) -> None:
        self.batches: list[list[SocketEvent]] = []
        self.due_s: list[float | None] = []

    def fileno(self) -> int:
        return 7

    def interval(self) -> None:
        return None

    def due(self) -> float | None:
        return self.due_s.pop(0) if self.due_s else None

    def drain(self) -> list[SocketEvent]:
        return self.batches.pop(0) if self.batches else []

    def watch(self, ws: WatchSet) -> None:
        pass

    def close(self, unpin: bool = False) -> None:
        pass


def test_start_watches_the_ring_and_delivers_non_empty_drains() -> None:
    loop, ring, got = FakeLoop(), FakeRing(), []
    ev = SocketEvent("bind", 1, 2, 3, "x", 4, "udp", 53, 0)
    ring.batches = [[ev], []]
    stop = start(ring, loop, got.append)
    loop.watched[7]()
    loop.watched[7]()
    assert got == [[ev]]
    stop()
    assert loop.watched == {}


def test_start_polls_on_a_timer_and_stops() -> None:
    loop, table, got = FakeLoop(), Table(), []
    p = PollWatcher("r", 3.0, table)
    stop = start(p, loop, got.append)
    assert loop.timers[0][0] == 0.0
    loop.timers[0][1]()  # first pass: a resync
    table.socks = [sock("tcp", 22, 1)]
    loop.timers[1][1]()
    assert [[e.kind for e in batch] for batch in got] == [["resync"], ["listen"]]
    assert [d for d, _ in loop.timers] == [0.0, 3.0, 3.0]
    stop()
    assert loop.cancelled == 1


def test_a_listen_program_refused_with_pid_is_loaded_without(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    def load(prog_type: int, attach_type: int, insns: bytes, name: str) -> int:
        if name == "sg_wlisten" and "sg_wlisten" not in loaded:
            loaded.append(name)
            raise bpfsys.VerifierError("refused", "R1 helper not allowed")
        if name == "sg_wrelease":
            raise AdapterError("load BPF program sg_wrelease: Invalid argument")
        loaded.append(name)
        return 100 + len(loaded)

    monkeypatch.setattr(cgroupbpf, "load", load)
    got = wmod._Opened(maps={"ring": 3, "ports": 4, "comms": 5, "conf": 6, "lost": 7, "tracked": 8})
    assert wmod._load(got) is False
    assert sorted(got.progs) == ["bind4", "bind6", "listen"] and loaded.count("sg_wlisten") == 2


def test_a_deferred_resync_is_drained_by_a_timer_when_due() -> None:
    loop, ring, got = FakeLoop(), FakeRing(), []
    later = resync(5)
    ring.batches, ring.due_s = [[], [later]], [2.5, 2.5, None]
    stop = start(ring, loop, got.append)
    loop.watched[7]()  # a drain that left a resync pending: one timer, when it is due
    loop.watched[7]()  # still pending: no second timer
    assert [d for d, _ in loop.timers] == [2.5]
    loop.timers[0][1]()
    assert got == [[later]] and len(loop.timers) == 1
    stop()


def test_the_pacer_coalesces_spaces_with_backoff_and_never_drops() -> None:
    p, s = ResyncPacer(min_s=1.0, max_s=4.0), 10**9
    p.ask()
    assert p.take(0) and not p.pending  # the first goes out at once
    for t in (1, 2, 3):  # a flood asks again and again: one pending, spaced
        p.ask()
    assert not p.take(s // 2) and p.due_in(s // 2) == 0.5
    assert p.take(1 * s) and p.spacing == 2.0  # followed the last closely: spacing doubled
    p.ask()
    assert not p.take(2 * s) and p.take(3 * s) and p.spacing == 4.0
    p.ask()
    assert p.take(7 * s) and p.spacing == 4.0  # capped
    p.ask()
    assert p.take(100 * s) and p.spacing == 1.0  # after a quiet time: back to the start
    assert p.due_in(200 * s) is None and not p.take(200 * s)  # nothing asked: nothing due


def test_udp_watched_by_port_alone_is_dumped_for_those_ports_only() -> None:
    """Only the policy's UDP ports are asked of the kernel while no name and not everything is
    watched; names (any port) or everything ask for every bound UDP socket again."""
    table = Table()
    p = PollWatcher("r", 2.0, table, now=lambda: 9)
    p.watch(WatchSet.of([("tcp", 22), ("udp", 53), ("udp", 123)], []))
    p.drain()
    assert table.ports[-1] == {"udp": frozenset({53, 123})}
    table.socks += [sock("udp", 53, 3), sock("udp", 5353, 5)]
    assert [e.port for e in p.drain()] == [53]
    p.watch(WatchSet.of([("udp", 53)], ["avahi-daemon"]))
    assert [e.port for e in p.drain()] == [5353] and table.ports[-1] == {}
    p.watch(WatchSet(all=True))
    p.drain()
    assert table.ports[-1] == {}
