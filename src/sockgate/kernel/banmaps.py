"""A service's bans in the kernel: the pinned ``bans4``/``bans6`` LPM tries of the eBPF backend
(ebpf/layout.py), written, read back, swept and brought to a wanted set in place.

Why maps and not a recompile: the program (ebpf/codegen.py) looks every source up in these
tries before any rule and honours ``expires_ns`` itself, so a ban is one map update that takes
effect on the next packet — no program is rebuilt, no socket touched — and an expiry needs no
user-space action at all; ``sweep`` only frees the room an expired entry takes.

One subtlety of longest-prefix match shapes ``apply`` and ``put``: a lookup answers the
*longest* stored prefix holding the source, and only that entry's expiry is compared. An
expired ``192.0.2.7/32`` inside an active ``192.0.2.0/24`` would therefore let ``192.0.2.7``
through until it is swept. So every stored entry carries the latest expiry of itself and every
entry covering it (``normalise``): an address is refused exactly while some ban holding it
lasts, whichever entry the trie answers. The entries the program writes itself
(``Origin.LIMIT``, the policy's ``ban DURATION``) are never deleted by ``apply`` — they are not
user space's to lift — though they may be lengthened under a covering ban.

Bans come in as anything with ``network``, ``expires_ns`` (CLOCK_MONOTONIC ns, 0 never) and
``origin`` (``kernel.backend.BanLike``), so the agent's book and the ban sources need no type
of this module. A ban that lands also ends the established TCP connections from the banned
networks on the ports the caller names (``sockdiag.destroy_tcp``): a filter only sees new
connections.
"""

from __future__ import annotations

import errno
import ipaddress
import time
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Mapping, Sequence

from sockgate.ebpf import layout
from sockgate.ebpf.maps import PREFIX_BITS, LpmKey, MapSpec
from sockgate.errors import AdapterError
from sockgate.kernel.backend import BanLike
from sockgate.kernel.bpfops import BpfOps
from sockgate.linux import sockdiag
from sockgate.policy.source import escape

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Entries = dict[Network, layout.Ban]
Destroy = Callable[[Iterable[int], Iterable[Network]], int]
BATCH = 16384  # entries per BPF_MAP_UPDATE_BATCH: bounded buffers, few system calls
FOREVER = 1 << 64  # how ``expires_ns == 0`` (never) sorts against real expiries


class BanMapError(AdapterError):
    """The ban maps are missing, not sockgate's, or cannot hold the wanted set."""


# ------------------------------------------------------------------------ pure decisions


def until(expires_ns: int) -> int:
    """A sort key for expiries: 0 (never) last."""
    return FOREVER if expires_ns == 0 else expires_ns


def later(a: layout.Ban, b: layout.Ban) -> layout.Ban:
    """The one of ``a``, ``b`` that lasts longer (``a`` on a tie)."""
    return b if until(b.expires_ns) > until(a.expires_ns) else a


def active(ban: layout.Ban, now_ns: int) -> bool:
    """Whether the program refuses with ``ban`` at ``now_ns`` (codegen: ``expires > now``)."""
    return ban.expires_ns == 0 or ban.expires_ns > now_ns


def entries_of(bans: Iterable[BanLike]) -> Entries:
    """One map entry per network; two bans of one network keep the longer one's expiry and
    origin."""
    out: Entries = {}
    for b in bans:
        if b.expires_ns < 0:
            raise ValueError(f"{b.network}: a negative expiry")
        ban = layout.Ban(b.expires_ns, _origin(b.origin))
        old = out.get(b.network)
        out[b.network] = ban if old is None else later(old, ban)
    return out


def _origin(origin: int) -> layout.Origin:
    try:
        return layout.Origin(int(origin))
    except ValueError:
        raise ValueError(f"not a ban origin: {origin!r}") from None


def normalise(entries: Mapping[Network, layout.Ban]) -> Entries:
    """Each entry with the latest expiry of itself and every entry covering it (its origin
    kept), so the entry longest-prefix match answers is never shorter than a ban holding the
    same address (module docstring). Linear in entries × distinct prefix lengths."""
    out: Entries = dict(entries)
    for family in (4, 6):
        bits = PREFIX_BITS[family]
        mine = {n: b for n, b in entries.items() if n.version == family}
        lengths = sorted({n.prefixlen for n in mine})
        for net in sorted(mine, key=lambda n: n.prefixlen):  # ancestors first: they are final when read
            addr = int(net.network_address)
            best = out[net]
            for length in lengths:
                if length >= net.prefixlen:
                    break
                up = _net(family, addr >> (bits - length) << (bits - length), length)
                if up in out:
                    best = later(best, layout.Ban(out[up].expires_ns, best.origin))
            out[net] = best
    return out


def _net(family: int, addr: int, length: int) -> Network:
    return ipaddress.IPv4Network((addr, length)) if family == 4 else ipaddress.IPv6Network((addr, length))


@dataclass(frozen=True)
class Plan:
    """What ``apply`` writes: entries to put (new or changed) and networks to delete."""

    puts: Entries
    deletes: tuple[Network, ...]


def plan(current: Mapping[Network, layout.Ban], wanted: Mapping[Network, layout.Ban]) -> Plan:
    """From the map's entries to ``wanted`` plus the program's own (``Origin.LIMIT``) entries."""
    target: Entries = dict(wanted)
    for net, ban in current.items():
        if ban.origin is layout.Origin.LIMIT:
            target[net] = ban if net not in target else later(target[net], ban)
    target = normalise(target)
    puts = {n: b for n, b in target.items() if current.get(n) != b}
    deletes = tuple(sorted((n for n in current if n not in target), key=_order))
    return Plan(puts, deletes)


def _order(n: Network) -> tuple[int, int, int]:
    return n.version, int(n.network_address), n.prefixlen


def newly_banned(current: Mapping[Network, layout.Ban], puts: Mapping[Network, layout.Ban], now_ns: int) -> list[Network]:
    """The networks a write starts refusing: active after it and not active before."""
    return sorted((n for n, b in puts.items() if active(b, now_ns) and not (n in current and active(current[n], now_ns))),
                  key=_order)


# --------------------------------------------------------------------------- the maps


@dataclass(frozen=True)
class Applied:
    put: int
    deleted: int
    ended: int  # established connections ended (SOCK_DESTROY)


class BanMaps:
    """The ban tries pinned in one service directory (``layout.service_dir``)."""

    def __init__(self, ops: BpfOps, directory: str, destroy: Destroy = sockdiag.destroy_tcp,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.ops = ops
        self.directory = directory
        self.destroy = destroy
        self.clock = clock

    # --- reading

    def list(self) -> list[tuple[Network, layout.Ban]]:
        """Every entry, decoded, in address order."""
        return sorted(self._current().items(), key=lambda item: _order(item[0]))

    def _current(self) -> Entries:
        out: Entries = {}
        for family in (4, 6):
            fd, spec = self._open(family)
            try:
                for k, v in self.ops.map_items(fd, spec.key_size, spec.value_size):
                    out[LpmKey.unpack(family, k).network] = layout.Ban.unpack(v)
            finally:
                self.ops.close(fd)
        return out

    def _open(self, family: int) -> tuple[int, MapSpec]:
        """The family's trie, checked to be a sockgate ban map; and its shape."""
        want = layout.bans_spec(family)
        path = f"{self.directory}/bans{family}"
        fd = self.ops.get(path)
        if fd is None:
            raise BanMapError(f"{escape(path)}: no ban map pinned (is the service guarded with --backend ebpf?)",
                              errno=errno.ENOENT, target=path)
        try:
            shape = self.ops.map_shape(fd)
            if (shape.map_type, shape.key_size, shape.value_size) != (want.map_type, want.key_size, want.value_size):
                raise BanMapError(f"{escape(path)}: not a sockgate ban map", target=path)
        except BaseException:
            self.ops.close(fd)
            raise
        return fd, shape

    # --- writing

    def put(self, network: Network, expires_ns: int, origin: int, ports: Collection[int] = ()) -> Applied:
        """Ban ``network`` until ``expires_ns`` (0: never) on ``origin``'s word, keeping every
        covering and covered entry consistent (``normalise``); then end its established
        connections on ``ports``. A full-length prefix (one address) is one lookup and one
        update: nothing lies inside it, and the entry answering for it now already carries the
        latest expiry of everything covering it."""
        ban = layout.Ban(expires_ns, _origin(origin))
        if network.prefixlen == PREFIX_BITS[network.version]:
            before = self._answering(network)
            current: Entries = {} if before is None else {network: before}
            puts = {network: ban if before is None else layout.Ban(later(ban, before).expires_ns, ban.origin)}
        else:
            current = self._current()
            merged = dict(current)
            merged[network] = ban if network not in current else later(ban, current[network])
            puts = {n: b for n, b in normalise(merged).items() if current.get(n) != b}
        return self._write(current, Plan(puts, ()), ports)

    def _answering(self, network: Network) -> layout.Ban | None:
        """The entry a lookup of ``network`` finds: its own or the nearest covering one."""
        fd, spec = self._open(network.version)
        try:
            raw = self.ops.map_lookup(fd, _key(network), spec.value_size)
        finally:
            self.ops.close(fd)
        return None if raw is None else layout.Ban.unpack(raw)

    def delete(self, network: Network) -> bool:
        """Lift the entry for exactly ``network``; False when there was none."""
        fd, _ = self._open(network.version)
        try:
            return self.ops.map_delete(fd, _key(network))
        finally:
            self.ops.close(fd)

    def sweep(self, now_ns: int | None = None) -> int:
        """Delete every entry expired at ``now_ns`` (the program already ignores them); how
        many."""
        now = self.clock() if now_ns is None else now_ns
        gone = [n for n, b in self._current().items() if not active(b, now)]
        return self._delete_all(gone)

    def apply(self, bans: Iterable[BanLike], ports: Collection[int] = ()) -> Applied:
        """Bring the maps to exactly ``bans`` (and the program's own entries): deletes first
        (nothing deleted is wanted, and the room is needed), then the changed entries in
        batches; then end the newly banned networks' connections on ``ports``. A set larger
        than the maps hold is refused before anything is written."""
        current = self._current()
        p = plan(current, entries_of(bans))
        gone = set(p.deletes)
        for family in (4, 6):
            self._check_room(family, sum(1 for n in current if n.version == family and n not in gone)
                             + sum(1 for n in p.puts if n.version == family and n not in current))
        deleted = self._delete_all(p.deletes)
        done = self._write(current, p, ports)
        return Applied(done.put, deleted, done.ended)

    def _check_room(self, family: int, needed: int) -> None:
        fd, shape = self._open(family)
        self.ops.close(fd)
        if needed > shape.max_entries:
            raise BanMapError(f"{escape(self.directory)}/bans{family}: {needed} IPv{family} bans wanted, the map holds"
                              f" {shape.max_entries}; nothing was changed", errno=errno.E2BIG)

    def _write(self, current: Mapping[Network, layout.Ban], p: Plan, ports: Collection[int]) -> Applied:
        for family in (4, 6):
            items = [(n, b) for n, b in p.puts.items() if n.version == family]
            if items:
                self._put_batches(family, items)
        ended = 0
        fresh = newly_banned(current, p.puts, self.clock())
        if ports and fresh:
            ended = self.destroy(ports, fresh)
        return Applied(len(p.puts), 0, ended)

    def _put_batches(self, family: int, items: Sequence[tuple[Network, layout.Ban]]) -> None:
        fd, _ = self._open(family)
        try:
            for i in range(0, len(items), BATCH):
                chunk = items[i:i + BATCH]
                self.ops.map_update_many(fd, [_key(n) for n, _ in chunk], [b.pack() for _, b in chunk])
        finally:
            self.ops.close(fd)

    def _delete_all(self, networks: Sequence[Network]) -> int:
        deleted = 0
        for family in (4, 6):
            mine = [n for n in networks if n.version == family]
            if not mine:
                continue
            fd, _ = self._open(family)
            try:
                deleted += sum(1 for n in mine if self.ops.map_delete(fd, _key(n)))
            finally:
                self.ops.close(fd)
        return deleted


def _key(network: Network) -> bytes:
    return LpmKey(network.version, network.prefixlen, int(network.network_address)).pack()
