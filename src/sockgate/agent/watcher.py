"""How the agent learns of a new socket: cgroup BPF events, or a sock_diag poll as a fallback.

``CgroupWatcher`` loads ebpf/watch's programs, links them to a cgroup (the cgroup2 root by
default: every process, every network namespace) and reads their ring buffer: a UDP bind the
agent cares about or any TCP listen becomes a ``SocketEvent`` with pid, comm, socket cookie and
port, microseconds after the system call (docs/agent.md, "How sockets are noticed"). Which UDP
binds are reported is set in the kernel (``watch``: ports and process names), so a bind storm
elsewhere costs the agent nothing. Nothing is ever silently missed: a record the ring had no
room for is counted by the program (``sg_wlost``), and a grown count, a corrupt ring or an
undecodable record yields a ``resync`` event — the consumer then rescans everything. Listens
are not filtered in the kernel (the agent enrols daemons by the listeners they open, on any
port), so any local user can overflow the ring with a ``listen()`` loop: the rescans that
costs are paced (``model.ResyncPacer``: coalesced, spaced by a backoff from 1 s to 30 s, and
the one pending always goes out), so a flood delays convergence but never forces rescans back
to back.

With a bpf filesystem directory (``bpffs``) the ring, the maps, the programs and the links are
pinned under ``{bpffs}/sockgate/watch/``: the hooks stay attached and events queue while no
agent runs, and the next agent reuses them when the pinned programs are the ones it would load
(same tag, same cgroup, same hook, using only the pinned maps) and the pinned maps are exactly
the ones it would make (type, sizes, capacity, flags, name) — else it links its own first and
only then unpins the old, so there is no moment without a hook (a socket seen twice is
harmless, one not seen is not). The directory goes through linux/bpffs's trusted-directory
walk, as the guards' tree does: each component opened without following links, root's and
writable by nobody else, else refused — and every pin is checked to be a pin, not a symlink,
before it is opened. A directory another user planted would otherwise let them remove the
link pins (the hooks then die with the agent) or point ``ring`` at another service's ring.

``PollWatcher`` is the fallback when cgroup BPF is unavailable (no CAP_BPF, no cgroup2, an old
kernel): a sock_diag dump of TCP listeners and bound UDP sockets at a modest interval, new
sockets by inode. It reads no pid or comm (and no cookie from the /proc tables sock_diag falls
back to), sees only its own network namespace, and costs tens of milliseconds per pass on a
busy host; its ``reason`` says so for the status. Since its events name no process, each costs
the agent a host-wide look: a pass with more than ``POLL_BURST`` new sockets is one ``resync``.

Any event loop drives either: ``fileno()`` (None for the poll), ``interval()`` (None for
events), ``drain()``; ``start(watcher, loop, deliver)`` wires one to a ``supervisor.Loop``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, assert_never

from sockgate.agent.model import Family, Proto, ResyncPacer, SocketEvent, resync
from sockgate.ebpf import watch as w
from sockgate.ebpf.insn import AttachType, ProgType, encode
from sockgate.ebpf.maps import MapSpec
from sockgate.errors import AdapterError
from sockgate.kernel import pins
from sockgate.linux import bpffs as trusted, bpfsys, cgroupbpf, sockdiag
from sockgate.linux.ringbuf import RingBuffer, RingError
from sockgate.supervisor import Cancel, Loop

WatchMode = Literal["cgroup-bpf", "poll"]
DEFAULT_POLL_INTERVAL = 2.0
# A poll event carries no pid, so the agent finds its socket with a host-wide inventory — as
# much work as a full rescan. More new sockets than this in one pass are one rescan instead
# (10,000 sockets opened at once were 5,000 host-wide inventories: hours, the agent deaf).
POLL_BURST = 3
PIN_DIR = "sockgate/watch"  # below the bpffs mount, beside the guards' tree (ebpf/layout.ROOT)


@dataclass(frozen=True)
class HookSpec:
    name: str  # pins: prog-NAME, link-NAME
    prog_type: ProgType
    attach_type: AttachType
    optional: bool = False  # watching works without it (an older kernel refuses it)


HOOKS = (HookSpec("bind4", ProgType.CGROUP_SOCK, AttachType.CGROUP_INET4_POST_BIND),
         HookSpec("bind6", ProgType.CGROUP_SOCK, AttachType.CGROUP_INET6_POST_BIND),
         HookSpec("listen", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS),
         HookSpec("release", ProgType.CGROUP_SOCK, AttachType.CGROUP_INET_SOCK_RELEASE, optional=True))


class WatchUnavailable(AdapterError):
    """Cgroup BPF watching cannot start here (the reason says why)."""


class Watcher(Protocol):
    mode: WatchMode
    reason: str  # one line for the status: how sockets are noticed, and any limit of that
    releases: bool  # whether tracked sockets' closes are reported

    def fileno(self) -> int | None: ...  # pollable; None: call drain every interval()

    def interval(self) -> float | None: ...

    def due(self) -> float | None: ...  # seconds until drain must run even if fileno() stays quiet

    def drain(self) -> list[SocketEvent]: ...

    def watch(self, ws: w.WatchSet) -> None: ...  # replace what is reported

    def track(self, cookie: int, port: int) -> None: ...  # report this socket's close (if releases)

    def untrack(self, cookie: int) -> None: ...

    @property
    def lost(self) -> int: ...  # events lost since this watcher opened

    def close(self, unpin: bool = False) -> None: ...


def to_event(r: w.WatchRecord) -> SocketEvent:
    match r.hook:
        case w.Hook.BIND4 | w.Hook.BIND6:
            kind: Literal["bind", "listen", "release"] = "bind"
        case w.Hook.LISTEN:
            kind = "listen"
        case w.Hook.RELEASE:
            kind = "release"
        case _:
            assert_never(r.hook)
    return SocketEvent(kind, r.cookie, r.netns_cookie, r.pid, r.comm, _family(r.family), _proto(r.proto), r.port, r.ts_ns)


def _family(n: int) -> Family:
    return 6 if n == 6 else 4


def _proto(p: str) -> Proto:
    return "tcp" if p == "tcp" else "udp"


# -- cgroup BPF ----------------------------------------------------------------------------------


@dataclass
class _Opened:
    """What ``CgroupWatcher.open`` holds while it builds; everything closed on failure."""

    maps: dict[str, int] = field(default_factory=dict)
    progs: dict[str, int] = field(default_factory=dict)
    links: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in (*self.maps.values(), *self.progs.values(), *self.links.values()):
            os.close(fd)
        self.maps, self.progs, self.links = {}, {}, {}


class CgroupWatcher:
    mode: WatchMode = "cgroup-bpf"

    def __init__(self, ring: RingBuffer, maps: dict[str, int], links: dict[str, int], cgroup: str, pin_dir: str | None,
                 reused: bool, with_pid: bool, releases: bool, now: Callable[[], int] = time.monotonic_ns) -> None:
        self.ring, self._maps, self._links, self.releases = ring, maps, links, releases
        self.cgroup, self.pin_dir, self.reused, self.with_pid = cgroup, pin_dir, reused, with_pid
        self._now = now
        self.pacer = ResyncPacer()  # rescans coalesced and spaced: a listen() flood must not force them back to back
        self.malformed = 0
        self._lost_base = self._lost_seen = self._read_lost()
        self._ports, self._comms = (set(self._keys("ports")), set(self._keys("comms"))) if reused else (set(), set())
        limits = [] if with_pid else ["listen events without pid"]
        limits += [] if releases else ["closes not reported"]
        self.reason = f"cgroup BPF hooks on {cgroup}" + (f" ({', '.join(limits)})" if limits else "")

    @classmethod
    def open(cls, cgroup: str | None = None, bpffs: str | None = None, ring_bytes: int = w.RING_BYTES) -> CgroupWatcher:
        """Load and link the watch programs on ``cgroup`` (default: the cgroup2 root); with
        ``bpffs`` (a mounted bpf filesystem directory) pinned there, reusing what an earlier
        agent pinned. Raises ``AdapterError`` (``WatchUnavailable`` without cgroup2)."""
        path = cgroup or cgroupbpf.cgroup2_root()
        if path is None:
            raise WatchUnavailable("no cgroup2 hierarchy is mounted (see /proc/self/mountinfo)")
        pin_dir = f"{bpffs}/{PIN_DIR}" if bpffs else None
        specs = {n: w.ring_spec(ring_bytes) if n == "ring" else s for n, s in w.MAPS.items()}
        got = _Opened()
        try:
            found = trusted.trusted_dir(bpffs, PIN_DIR) if bpffs else None  # a planted directory raises
            pinned = _pinned_maps(found, specs) if found else None
            got.maps = pinned or {n: _create(s) for n, s in specs.items()}
            with_pid = _load(got)
            releases = "release" in got.progs
            cg = cgroupbpf.open_cgroup(path)
            try:
                reused = pinned is not None and found is not None and _same_links(found, got.progs, got.maps, cg)
                if not reused:
                    got.links = {h.name: cgroupbpf.link(got.progs[h.name], cg, h.attach_type) for h in HOOKS if h.name in got.progs}
            finally:
                os.close(cg)
            if bpffs and not reused:
                _pin(trusted.ensure_dirs(bpffs, PIN_DIR), got, maps_too=pinned is None)
            for fd in got.progs.values():
                os.close(fd)
            got.progs = {}
            ring = RingBuffer(got.maps.pop("ring"), f"{pin_dir}/ring" if pin_dir else "watch ring")  # (closes it on failure)
        except BaseException:
            got.close()
            raise
        try:
            return cls(ring, got.maps, got.links, path, pin_dir, reused, with_pid, releases)
        except BaseException:
            ring.close()
            got.close()
            raise

    # -- what an event loop drives -------------------------------------------------------------

    def fileno(self) -> int:
        return self.ring.fileno()

    def interval(self) -> float | None:
        return None

    def due(self) -> float | None:
        """Seconds until a deferred ``resync`` is due (``drain`` then emits it); None if none."""
        left = self.pacer.due_in(self._now())
        return None if left is None else max(left, 0.0)

    def drain(self) -> list[SocketEvent]:
        """The events since the last drain; a ``resync`` at the end when any were lost — at
        once the first time, then paced (``ResyncPacer``): one deferred stands for all asked
        meanwhile, and goes out from the drain ``due`` calls for."""
        out: list[SocketEvent] = []
        need_resync = False
        try:
            records = self.ring.read()
        except RingError:
            self.ring.skip()
            records, need_resync = [], True
        for raw in records:
            r = w.decode(raw)
            if r is None:
                self.malformed += 1
                need_resync = True
            else:
                out.append(to_event(r))
        lost = self._read_lost()
        if lost != self._lost_seen:
            out.append(SocketEvent("lost", (lost - self._lost_seen) % (1 << 64), 0, 0, "", 4, "tcp", 0, self._now()))
            self._lost_seen, need_resync = lost, True
        if need_resync:
            self.pacer.ask()
        now = self._now()
        if self.pacer.take(now):
            out.append(resync(now, self.lost))
        return out

    @property
    def lost(self) -> int:
        return (self._lost_seen - self._lost_base) % (1 << 64)

    def watch(self, ws: w.WatchSet) -> None:
        """Report UDP binds on ``ws``'s ports, by its process names, or all. New entries go in
        before old ones go out, so a port watched before and after is never unwatched."""
        ports, comms = ws.keys()
        for name, now, want in (("ports", self._ports, ports), ("comms", self._comms, comms)):
            for key in sorted(want - now):
                bpfsys.map_update(self._maps[name], key, w.PRESENT)
                now.add(key)
        bpfsys.map_update(self._maps["conf"], w.ZERO_KEY, w.U32.pack(w.CONF_ALL if ws.all else 0))
        for name, now, want in (("ports", self._ports, ports), ("comms", self._comms, comms)):
            for key in sorted(now - want):
                bpfsys.map_delete(self._maps[name], key)
                now.discard(key)

    def track(self, cookie: int, port: int) -> None:
        """Report the close of this socket (once), when ``releases``."""
        if self.releases:
            key, value = w.tracked_entry(cookie, port)
            bpfsys.map_update(self._maps["tracked"], key, value)

    def untrack(self, cookie: int) -> None:
        if self.releases and 0 < cookie < 1 << 64:
            bpfsys.map_delete(self._maps["tracked"], w.U64.pack(cookie))

    def close(self, unpin: bool = False) -> None:
        """Close every descriptor; with ``unpin`` also remove the pins, which detaches the
        hooks (without pins they detach when the descriptors close)."""
        self.ring.close()
        for fd in (*self._maps.values(), *self._links.values()):
            os.close(fd)
        self._maps, self._links = {}, {}
        if unpin and self.pin_dir:
            unpin_all(self.pin_dir)

    # -- inside ------------------------------------------------------------------------------

    def _read_lost(self) -> int:
        raw = bpfsys.map_lookup(self._maps["lost"], w.ZERO_KEY, w.U64.size)
        return int(w.U64.unpack(raw)[0]) if raw is not None else 0

    def _keys(self, name: str) -> list[bytes]:
        return [k for k, _ in pins.walk(self._maps[name], w.MAPS[name])]


def _create(spec: MapSpec) -> int:
    return bpfsys.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, spec.name)


def _load(got: _Opened) -> bool:
    """Load the programs into ``got.progs`` (the optional release program when the kernel
    takes it); False when the verifier refused pid and comm in the listen program (older
    kernels) and it was loaded without them."""
    m = got.maps
    h = HOOKS[3]
    try:
        code = encode(w.release_program(m["ring"], m["tracked"], m["lost"]))
        got.progs[h.name] = cgroupbpf.load(h.prog_type, h.attach_type, code, "sg_wrelease")
    except AdapterError:
        pass  # before Linux 5.9: no release hook; the agent's sweep finds closed sockets
    for fam, h in ((4, HOOKS[0]), (6, HOOKS[1])):
        code = encode(w.bind_program(m["ring"], m["ports"], m["comms"], m["conf"], m["lost"], fam))
        got.progs[h.name] = cgroupbpf.load(h.prog_type, h.attach_type, code, f"sg_wbind{fam}")
    h = HOOKS[2]
    try:
        got.progs[h.name] = cgroupbpf.load(h.prog_type, h.attach_type, encode(w.listen_program(m["ring"], m["lost"])), "sg_wlisten")
        return True
    except bpfsys.VerifierError:
        code = encode(w.listen_program(m["ring"], m["lost"], with_pid=False))
        got.progs[h.name] = cgroupbpf.load(h.prog_type, h.attach_type, code, "sg_wlisten")
        return False


def _pinned_maps(pin_dir: str, specs: dict[str, MapSpec]) -> dict[str, int] | None:
    """The maps an earlier agent pinned in the trusted ``pin_dir``, each a pin itself (no
    symlink) and exactly the map ``specs`` names (type, sizes, capacity, flags, name); None
    when any is missing or not that (then everything is made anew)."""
    out: dict[str, int] = {}
    try:
        for name, spec in specs.items():
            trusted.check_pin(f"{pin_dir}/{name}")
            out[name] = pins.open_map(f"{pin_dir}/{name}", spec, readonly=False, exact=True)
    except AdapterError:
        for fd in out.values():
            os.close(fd)
        return None
    return out


def _same_links(pin_dir: str, fresh: dict[str, int], maps: dict[str, int], cgroup_fd: int) -> bool:
    """Whether every pinned link holds the pinned program of its hook, on this cgroup, with the
    tag of the program this agent would load, using only the pinned ``maps`` (so the hooks
    write to the ring this agent reads)."""
    cgroup_id = os.fstat(cgroup_fd).st_ino
    map_ids = {int(bpfsys.map_info(fd).id) for fd in maps.values()}
    for h in (h for h in HOOKS if h.name in fresh):
        fds: list[int] = []
        try:
            for kind in ("link", "prog"):
                trusted.check_pin(f"{pin_dir}/{kind}-{h.name}")
            fds.append(link := bpfsys.get_pinned(f"{pin_dir}/link-{h.name}"))
            fds.append(prog := bpfsys.get_pinned(f"{pin_dir}/prog-{h.name}"))
            if (bpfsys.object_kind(link), bpfsys.object_kind(prog)) != ("link", "prog"):
                return False
            li, pi, new = bpfsys.link_info(link), bpfsys.prog_info(prog), bpfsys.prog_info(fresh[h.name])
            if (li.prog_id, li.cgroup_id, li.attach_type) != (pi.id, cgroup_id, h.attach_type) or bytes(pi.tag) != bytes(new.tag):
                return False
            if not set(bpfsys.prog_map_ids(prog)) <= map_ids:
                return False
        except AdapterError:
            return False
        finally:
            for fd in fds:
                os.close(fd)
    return True


def _pin(pin_dir: str, got: _Opened, maps_too: bool) -> None:
    """Pin the new programs and links (and maps) over whatever was pinned: the new links are
    attached already, so the old ones detach only once their replacements run. ``pin_dir``
    is a trusted directory (``bpffs.ensure_dirs``): root's, closed to others."""
    objects = {**{f"prog-{name}": fd for name, fd in got.progs.items()},
               **{f"link-{name}": fd for name, fd in got.links.items()}}
    if maps_too:
        objects.update(got.maps)
    for h in HOOKS:
        if h.name not in got.links:  # a hook this kernel did not take: no old one stays behind
            _unlink(f"{pin_dir}/link-{h.name}")
            _unlink(f"{pin_dir}/prog-{h.name}")
    for name, fd in objects.items():
        _unlink(f"{pin_dir}/{name}")
        bpfsys.pin(fd, f"{pin_dir}/{name}")


def unpin_all(pin_dir: str) -> None:
    """Remove the watcher's pins (links first: the hooks detach) and its directory."""
    names = [f"link-{h.name}" for h in HOOKS] + [f"prog-{h.name}" for h in HOOKS] + list(w.MAPS)
    for name in names:
        _unlink(f"{pin_dir}/{name}")
    try:
        os.rmdir(pin_dir)
    except FileNotFoundError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- the sock_diag fallback ------------------------------------------------------------------------

_STATES = {"tcp": 1 << sockdiag.TCP_LISTEN, "udp": 1 << sockdiag.TCP_CLOSE}  # listeners; bound, unconnected UDP
Ports = dict[str, frozenset[int]]  # a kind named: only sockets on those local ports (sockdiag.inventory)


class Inventory(Protocol):
    def __call__(self, kinds: list[str], states: dict[str, int], *, ports: Ports) -> list[sockdiag.Sock]: ...


class Identities(Protocol):
    def __call__(self, kinds: list[str], states: dict[str, int], *, ports: Ports) -> set[tuple[str, str, int]]: ...


class PollWatcher:
    mode: WatchMode = "poll"
    releases = False

    def __init__(self, reason: str, period: float = DEFAULT_POLL_INTERVAL, inventory: Inventory = sockdiag.inventory,
                 now: Callable[[], int] = time.monotonic_ns, identities: Identities | None = None) -> None:
        """``identities``: the look each pass takes — (proto, family, inode) of every socket,
        by default those of ``inventory``'s records; ``inventory`` itself is asked only when
        something is new (``sockdiag.identities`` costs a third of it: ``open_watcher``)."""
        self.reason = f"{reason}: polling sock_diag every {period:g} s, in this network namespace only"
        self.period, self._inventory, self._now = period, inventory, now
        self._identities = identities or (lambda kinds, states, *, ports: {_identity(s) for s in _bound(inventory(kinds, states, ports=ports))})
        self._seen: set[tuple[str, str, int]] | None = None
        self._ws = w.WatchSet()

    def fileno(self) -> None:
        return None

    def interval(self) -> float:
        return self.period

    def due(self) -> None:
        return None  # drained on its own timer

    @property
    def lost(self) -> int:
        return 0

    def watch(self, ws: w.WatchSet) -> None:
        self._ws = ws

    def track(self, cookie: int, port: int) -> None:
        pass  # the poll reports no closes: the agent's sweep finds them

    def untrack(self, cookie: int) -> None:
        pass

    def drain(self) -> list[SocketEvent]:
        """New listeners and new bound UDP sockets since the last call (TCP always; UDP when
        watched by port, or by name — the poll cannot tell names — or all). The first call
        only learns what exists, and asks for a rescan."""
        kinds, ports = self._kinds(), self._ports()
        current = self._identities(kinds, dict(_STATES), ports=ports)
        first, self._seen, seen = self._seen is None, current, self._seen or set()
        now = self._now()
        if first:
            return [resync(now)]
        if current <= seen:
            return []
        socks = _bound(self._inventory(kinds, dict(_STATES), ports=ports))
        self._seen = current | {_identity(s) for s in socks}  # one bound between the two looks: reported once
        out = []
        for s in socks:
            if _identity(s) in seen or not self._wanted(s):
                continue
            kind: Literal["bind", "listen"] = "listen" if s.proto == "tcp" else "bind"
            family: Family = 6 if s.family == "ipv6" else 4
            out.append(SocketEvent(kind, s.cookie or 0, 0, 0, "", family, _proto(s.proto), s.local_port or 0, now))
        return out if len(out) <= POLL_BURST else [resync(now)]

    def _kinds(self) -> list[str]:
        """TCP always; UDP only when some UDP socket could be wanted (``_wanted``): a policy of
        TCP services alone spares the dump of every bound UDP socket on the host."""
        ws = self._ws
        return ["tcp", "udp"] if ws.all or ws.comms or any(p == "udp" for p, _ in ws.ports) else ["tcp"]

    def _ports(self) -> Ports:
        """UDP watched by port alone (no names, not all): only those ports' sockets are dumped,
        the kernel filtering the rest (a host's thousands of bound UDP sockets are never
        decoded). TCP listeners are always dumped whole: any new one is looked at."""
        ws = self._ws
        if ws.all or ws.comms:
            return {}
        return {"udp": frozenset(p for proto, p in ws.ports if proto == "udp")}

    def _wanted(self, s: sockdiag.Sock) -> bool:
        ws = self._ws
        return s.proto == "tcp" or ws.all or bool(ws.comms) or (s.proto, s.local_port or 0) in ws.ports

    def close(self, unpin: bool = False) -> None:
        self._seen = None


def _bound(socks: list[sockdiag.Sock]) -> list[sockdiag.Sock]:
    return [s for s in socks if s.local_port and s.family in ("ipv4", "ipv6")]


def _identity(s: sockdiag.Sock) -> tuple[str, str, int]:
    return (s.proto, s.family, s.inode)


# -- choosing and driving --------------------------------------------------------------------------


def open_watcher(mode: Literal["auto", "cgroup-bpf", "poll"] = "auto", cgroup: str | None = None, bpffs: str | None = None,
                 period: float = DEFAULT_POLL_INTERVAL) -> Watcher:
    """Cgroup BPF when it can start (``auto``), else the poll, whose reason says why."""
    if mode == "poll":
        return PollWatcher("polling chosen", period, identities=sockdiag.identities)
    try:
        return CgroupWatcher.open(cgroup, bpffs)
    except AdapterError as e:
        if mode == "cgroup-bpf":
            raise
        return PollWatcher(f"cgroup BPF unavailable ({e})", period, identities=sockdiag.identities)


def _start_ring(watcher: Watcher, fd: int, loop: Loop, deliver: Callable[[list[SocketEvent]], None]) -> Cancel:
    """The ring watched; when a drain leaves a deferred resync, a timer drains again when it
    is due (one timer at a time), so it goes out even if the ring stays quiet."""
    timer: list[Cancel] = []

    def drain() -> None:
        events = watcher.drain()
        if events:
            deliver(events)
        left = watcher.due()
        if left is not None and not timer:
            timer.append(loop.call_later(left, fire))

    def fire() -> None:
        timer.clear()
        drain()

    def stop() -> None:
        loop.unwatch(fd)
        for cancel in timer:
            cancel()

    loop.watch(fd, drain)
    return stop


def start(watcher: Watcher, loop: Loop, deliver: Callable[[list[SocketEvent]], None]) -> Cancel:
    """Drive ``watcher`` on ``loop``: its ring watched, or its poll on a timer; every non-empty
    drain goes to ``deliver``. The returned function stops it."""
    fd = watcher.fileno()
    if fd is not None:
        return _start_ring(watcher, fd, loop, deliver)
    period = watcher.interval() or DEFAULT_POLL_INTERVAL
    cancel: list[Cancel] = []

    def tick() -> None:
        cancel[:] = [loop.call_later(period, tick)]  # first: a failing pass must not end the polling
        events = watcher.drain()
        if events:
            deliver(events)

    cancel.append(loop.call_later(0.0, tick))
    return lambda: cancel[0]()
