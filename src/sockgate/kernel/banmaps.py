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
(``Origin.LIMIT``, the policy's ``ban DURATION``) are not deleted by ``apply`` — they are not
user space's to lift — except where a longer-lasting ban covers one: then it adds nothing, and
lengthening it instead would make it outlive that ban's unban, so it goes.

Bans come in as anything with ``network``, ``expires_ns`` (CLOCK_MONOTONIC ns, 0 never) and
``origin`` (``kernel.backend.BanLike``: ``sockgate.bans.BannedPrefix`` as it is), so the
agent's book and the ban sources need no type of this module. A ban that lands also ends the established TCP connections from the banned
networks on the ports the caller names (``sockdiag.destroy_tcp``): a filter only sees new
connections.

Inside, a prefix is the tuple ``(family, address as int, prefix length)``: hashing and
ordering 100,000 of them as ``ipaddress`` networks cost seconds, as tuples milliseconds
(bench/bench_bans.py); networks appear only at the edges (``list``, ``destroy_tcp``).
"""

from __future__ import annotations

import errno
import ipaddress
import struct
import time
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Mapping, NamedTuple, Sequence

from sockgate.bans import check_width
from sockgate.ebpf import layout
from sockgate.ebpf.maps import PREFIX_BITS, LpmKey, MapSpec
from sockgate.errors import AdapterError
from sockgate.kernel.backend import BanLike
from sockgate.kernel.bpfops import BpfOps
from sockgate.linux import procfs, sockdiag
from sockgate.policy.literals import unmap
from sockgate.policy.source import escape

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Key = tuple[int, int, int]  # (family 4 or 6, network address, prefix length)


class Held(NamedTuple):
    """A map value as ``layout.Ban`` packs it, as a tuple: compared and hashed cheaply."""

    expires_ns: int
    origin: int  # layout.Origin's number

    def pack(self) -> bytes:
        return layout.BAN_VALUE.pack(self.expires_ns, self.origin, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> Held:
        expires, origin, _ = layout.BAN_VALUE.unpack(raw)
        return cls(expires, origin)

    def ban(self) -> layout.Ban:
        return layout.Ban.unpack(self.pack())


Entries = dict[Key, Held]
Destroy = Callable[[Iterable[int], Iterable[Network]], int]
BATCH = 16384  # entries per BPF_MAP_UPDATE_BATCH: bounded buffers, few system calls
FOREVER = 1 << 64  # how ``expires_ns == 0`` (never) sorts against real expiries
FULL = (errno.ENOSPC, errno.E2BIG)  # a full LPM trie answers ENOSPC (hash maps E2BIG)
_PREFIXLEN = struct.Struct("=I")  # struct bpf_lpm_trie_key's prefixlen (ebpf/maps.LpmKey)


class BanMapError(AdapterError):
    """The ban maps are missing, not sockgate's, or cannot hold the wanted set."""


# ------------------------------------------------------------------------ pure decisions


def key_of(network: Network) -> Key:
    return network.version, int(network.network_address), network.prefixlen


def banned_network(network: Network) -> Network:
    """``network`` as a ban names it in the tries: an IPv4-mapped network (what a dual-stack
    socket's peer address gives) folded to IPv4 — written to ``bans6`` it would ban nothing,
    since the program refuses a mapped IPv6 source as forged before any ban and looks real
    IPv4 clients up in ``bans4`` — and refused when wider than any ban may be
    (``bans.check_width``: ``::ffff:0:0/96`` is 0.0.0.0/0). ValueError (``BanTooWide``)."""
    folded = unmap(network)
    check_width(folded)
    return folded


def network_of(key: Key) -> Network:
    family, addr, length = key
    return ipaddress.IPv4Network((addr, length)) if family == 4 else ipaddress.IPv6Network((addr, length))


def pack_key(key: Key) -> bytes:
    """The trie key (``ebpf.maps.LpmKey.pack``, without its per-key checks: ``key_of`` keys
    come from valid networks)."""
    family, addr, length = key
    return _PREFIXLEN.pack(length) + addr.to_bytes(4 if family == 4 else 16, "big")


def unpack_key(family: int, raw: bytes) -> Key:
    """A trie key read back; a prefix length past the family's bits is refused (``LpmKey``)."""
    (length,) = _PREFIXLEN.unpack_from(raw)
    if length > PREFIX_BITS[family]:
        LpmKey.unpack(family, raw)  # raises, naming the key
    return family, int.from_bytes(raw[_PREFIXLEN.size:], "big"), length


def decode(family: int, items: Iterable[tuple[bytes, bytes]]) -> Entries:
    """Trie entries read back, as ``unpack_key`` and ``Held.unpack`` read them, in one loop
    (100,000 entries: the per-call overhead is most of the cost)."""
    bits, length_of, value_of, from_bytes = PREFIX_BITS[family], _PREFIXLEN.unpack_from, layout.BAN_VALUE.unpack, int.from_bytes
    out: Entries = {}
    for k, v in items:
        (length,) = length_of(k)
        if length > bits:
            unpack_key(family, k)  # raises, naming the key
        expires, origin, _ = value_of(v)
        out[(family, from_bytes(k[4:], "big"), length)] = Held(expires, origin)
    return out


def until(expires_ns: int) -> int:
    """A sort key for expiries: 0 (never) last."""
    return FOREVER if expires_ns == 0 else expires_ns


def later(a: Held, b: Held) -> Held:
    """The one of ``a``, ``b`` that lasts longer (``a`` on a tie)."""
    return b if until(b.expires_ns) > until(a.expires_ns) else a


def _over(ban: Held, before: Held) -> Held:
    """What a single-address ``put`` of ``ban`` stores where ``before`` answers: the later
    expiry, with the origin of the ban that gives it — a program's (``Origin.LIMIT``) ban
    that outlasts the new one stays the program's, so a later ``apply`` that no longer
    wants the new ban leaves the program's in place instead of lifting it."""
    if before.origin == layout.Origin.LIMIT and until(before.expires_ns) > until(ban.expires_ns):
        return before
    return Held(later(ban, before).expires_ns, ban.origin)


def active(ban: Held, now_ns: int) -> bool:
    """Whether the program refuses with ``ban`` at ``now_ns`` (codegen: ``expires > now``)."""
    return ban.expires_ns == 0 or ban.expires_ns > now_ns


def entries_of(bans: Iterable[BanLike]) -> Entries:
    """One map entry per network; two bans of one network keep the longer one's expiry and
    origin."""
    out: Entries = {}
    origins: set[int] = set()
    for b in bans:
        expires, origin, n = b.expires_ns, b.origin, banned_network(b.network)
        if expires < 0:
            raise ValueError(f"{n}: a negative expiry")
        if origin not in origins:
            origins.add(_origin(origin))
        k = (n.version, int(n.network_address), n.prefixlen)
        ban = Held(expires, int(origin))
        old = out.get(k)
        out[k] = ban if old is None else later(old, ban)
    return out


def _origin(origin: int) -> int:
    """``origin`` when it is one of ``layout.Origin``'s numbers."""
    try:
        return int(layout.Origin(int(origin)))
    except ValueError:
        raise ValueError(f"not a ban origin: {origin!r}") from None


def normalise(entries: Mapping[Key, Held]) -> Entries:
    """Each entry with the latest expiry of itself and every entry covering it (its origin
    kept), so the entry longest-prefix match answers is never shorter than a ban holding the
    same address (module docstring). Linear in entries × distinct shorter prefix lengths."""
    out: Entries = dict(entries)
    for family in (4, 6):
        bits = PREFIX_BITS[family]
        lengths = sorted({k[2] for k in entries if k[0] == family})
        if len(lengths) < 2:
            continue  # one length: no entry covers another
        mine = sorted((k for k in entries if k[0] == family), key=lambda k: k[2])  # ancestors first: final when read
        for k in mine:
            _, addr, length = k
            best = out[k]
            for up_len in lengths:
                if up_len >= length:
                    break
                up = out.get((family, addr >> (bits - up_len) << (bits - up_len), up_len))
                if up is not None and until(up.expires_ns) > until(best.expires_ns):
                    best = Held(up.expires_ns, best.origin)
            out[k] = best
    return out


@dataclass(frozen=True)
class Plan:
    """What ``apply`` writes: entries to put (new or changed) and prefixes to delete."""

    puts: Entries
    deletes: tuple[Key, ...]


def plan(current: Mapping[Key, Held], wanted: Mapping[Key, Held]) -> Plan:
    """From the map's entries to ``wanted`` plus the program's own (``Origin.LIMIT``) entries."""
    target = settle(current, dict(wanted))
    puts = {k: b for k, b in target.items() if current.get(k) != b}
    return Plan(puts, tuple(sorted(k for k in current if k not in target)))


def settle(current: Mapping[Key, Held], wanted: Entries) -> Entries:
    """``wanted`` plus the program's own entries of ``current``, normalised (a program entry
    that outlasts a wanted ban of the same prefix stays, with its later expiry); a program entry a
    longer-lasting ban covers is dropped rather than lengthened — it adds nothing while the
    cover lasts, and lengthened it would outlive the cover's unban."""
    own = {k: b for k, b in current.items()
           if b.origin == layout.Origin.LIMIT and (k not in wanted or until(b.expires_ns) > until(wanted[k].expires_ns))}
    target = normalise({**wanted, **own})
    for k, ban in own.items():
        if target[k] == ban:
            continue
        if k in wanted:  # a cover outlasts both: the wanted ban, under the cover's expiry
            target[k] = Held(target[k].expires_ns, wanted[k].origin)
        else:
            del target[k]
    return target


def newly_banned(current: Mapping[Key, Held], puts: Mapping[Key, Held], now_ns: int) -> list[Key]:
    """The prefixes a write starts refusing: active after it and not active before."""
    return sorted(k for k, b in puts.items() if active(b, now_ns) and not (k in current and active(current[k], now_ns)))


# --------------------------------------------------------------------------- the maps


@dataclass(frozen=True)
class Applied:
    put: int
    deleted: int
    ended: int  # established connections ended (SOCK_DESTROY)


class BanMaps:
    """The ban tries pinned in one service directory (``layout.service_dir``)."""

    def __init__(self, ops: BpfOps, directory: str, destroy: Destroy = sockdiag.destroy_tcp,
                 clock: Callable[[], int] = time.monotonic_ns, offset_ns: int | None = None) -> None:
        """``clock``: this process's CLOCK_MONOTONIC, the clock of every ``expires_ns`` and
        ``now_ns`` given and returned here. The program compares ``bpf_ktime_get_ns()``, which
        no time namespace offsets: in one whose ``monotonic`` offset is ``offset_ns`` (read from
        /proc/self/timens_offsets when None) every expiry is moved by it on the way in and out
        — else a 10-minute ban written from a namespace 50 minutes behind would have expired
        before it was written, and a sweep from one ahead would delete active bans."""
        self.ops = ops
        self.directory = directory
        self.destroy = destroy
        self.clock = clock
        self.offset_ns = procfs.monotonic_offset_ns() if offset_ns is None else offset_ns

    def _kernel(self, held: Held) -> Held:
        """``held`` (this process's clock) as the program reads it; 0 (never) stays 0."""
        return held if held.expires_ns == 0 else Held(max(1, held.expires_ns - self.offset_ns), held.origin)

    def _user(self, held: Held) -> Held:
        return held if held.expires_ns == 0 else Held(max(1, held.expires_ns + self.offset_ns), held.origin)

    def _now(self) -> int:
        """Now on the program's clock."""
        return self.clock() - self.offset_ns

    # --- reading

    def list(self) -> list[tuple[Network, layout.Ban]]:
        """Every entry, decoded, in address order."""
        return [(network_of(k), self._user(b).ban()) for k, b in sorted(self._current().items())]

    def _current(self) -> Entries:
        out: Entries = {}
        for family in (4, 6):
            fd, spec = self._open(family)
            try:
                out.update(decode(family, self.ops.map_items(fd, spec.key_size, spec.value_size)))
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
        if expires_ns < 0:
            raise ValueError(f"{network}: a negative expiry")
        network = banned_network(network)
        ban = self._kernel(Held(expires_ns, _origin(origin)))
        k = key_of(network)
        if network.prefixlen == PREFIX_BITS[network.version]:
            before = self._answering(k)
            current: Entries = {} if before is None else {k: before}
            puts = {k: ban if before is None else _over(ban, before)}
        else:
            current = self._current()
            mine = {n: b for n, b in current.items() if b.origin != layout.Origin.LIMIT}
            mine[k] = ban if k not in current else later(ban, current[k])
            target = settle(current, mine)
            puts = {n: b for n, b in target.items() if current.get(n) != b}
            return self._write(current, Plan(puts, ()), ports, drop=[n for n in current if n not in target])
        return self._write(current, Plan(puts, ()), ports)

    def _answering(self, k: Key) -> Held | None:
        """The entry a lookup of ``k`` finds: its own or the nearest covering one."""
        fd, spec = self._open(k[0])
        try:
            raw = self.ops.map_lookup(fd, pack_key(k), spec.value_size)
        finally:
            self.ops.close(fd)
        return None if raw is None else Held.unpack(raw)

    def delete(self, network: Network) -> bool:
        """Lift the entry for exactly ``network`` (an IPv4-mapped one: its IPv4 network, as
        ``put`` wrote it); False when there was none."""
        return self._delete_all([key_of(unmap(network))]) == 1

    def sweep(self, now_ns: int | None = None) -> int:
        """Delete every entry expired at ``now_ns`` (the program already ignores them); how
        many. The trie is not LRU: without a sweep, expired entries fill it and every new ban
        fails. Each entry is read again just before its delete and kept if it changed since
        the walk (the program or another writer refreshed it): a lookup-compare-delete. A
        refresh between that lookup and the delete is still lost — the kernel has no
        compare-and-delete for maps; the window is one system call wide, and the program
        bans the source again on its next excess."""
        now = (self.clock() if now_ns is None else now_ns) - self.offset_ns
        gone = 0
        for family in (4, 6):
            expired = sorted((k, b) for k, b in self._current().items() if k[0] == family and not active(b, now))
            if not expired:
                continue
            fd, spec = self._open(family)
            try:
                for k, b in expired:
                    key = pack_key(k)
                    raw = self.ops.map_lookup(fd, key, spec.value_size)
                    if raw is not None and Held.unpack(raw) == b:
                        gone += self.ops.map_delete(fd, key)
            finally:
                self.ops.close(fd)
        return gone

    def apply(self, bans: Iterable[BanLike], ports: Collection[int] = ()) -> Applied:
        """Bring the maps to exactly ``bans`` (and the program's own entries): deletes first
        (nothing deleted is wanted, and the room is needed), then the changed entries in
        batches; then end the newly banned networks' connections on ``ports``. A set larger
        than the maps hold is refused before anything is written — after a sweep, when the
        program's expired bans are what takes the room."""
        wanted = {k: self._kernel(b) for k, b in entries_of(bans).items()}
        current = self._current()
        p = plan(current, wanted)
        try:
            self._check_plan(current, p)
        except BanMapError as e:
            if e.errno != errno.E2BIG or not self.sweep():
                raise
            current = self._current()
            p = plan(current, wanted)
            self._check_plan(current, p)
        deleted = self._delete_all(p.deletes)
        done = self._write(current, p, ports)
        return Applied(done.put, deleted, done.ended)

    def _check_plan(self, current: Mapping[Key, Held], p: Plan) -> None:
        after = {4: 0, 6: 0}  # entries each trie holds once the plan is written
        for k in current:
            after[k[0]] += 1
        for k in p.deletes:
            after[k[0]] -= 1
        for k in p.puts:
            after[k[0]] += k not in current
        for family in (4, 6):
            self._check_room(family, after[family])

    def _check_room(self, family: int, needed: int) -> None:
        fd, shape = self._open(family)
        self.ops.close(fd)
        if needed > shape.max_entries:
            raise BanMapError(f"{escape(self.directory)}/bans{family}: {needed} IPv{family} bans wanted, the map holds"
                              f" {shape.max_entries}; nothing was changed", errno=errno.E2BIG)

    def _write(self, current: Mapping[Key, Held], p: Plan, ports: Collection[int], drop: Sequence[Key] = ()) -> Applied:
        self._delete_all(drop)
        for family in (4, 6):
            items = [(k, b) for k, b in p.puts.items() if k[0] == family]
            if items:
                self._put_batches(family, items)
        ended = 0
        if ports:
            fresh = newly_banned(current, p.puts, self._now())
            if fresh:
                ended = self.destroy(ports, [network_of(k) for k in fresh])
        return Applied(len(p.puts), 0, ended)

    def _put_batches(self, family: int, items: Sequence[tuple[Key, Held]]) -> None:
        """Write ``items``; a trie found full (expired entries not swept yet) is swept and
        the write tried once more."""
        try:
            self._put_batches_once(family, items)
        except AdapterError as e:
            if e.errno not in FULL:
                raise
            self.sweep()
            self._put_batches_once(family, items)

    def _put_batches_once(self, family: int, items: Sequence[tuple[Key, Held]]) -> None:
        fd, _ = self._open(family)
        try:
            for i in range(0, len(items), BATCH):
                chunk = items[i:i + BATCH]
                self.ops.map_update_many(fd, [pack_key(k) for k, _ in chunk], [b.pack() for _, b in chunk])
        finally:
            self.ops.close(fd)

    def _delete_all(self, keys: Sequence[Key]) -> int:
        deleted = 0
        for family in (4, 6):
            mine = [k for k in keys if k[0] == family]
            if not mine:
                continue
            fd, _ = self._open(family)
            try:
                deleted += sum(1 for k in mine if self.ops.map_delete(fd, pack_key(k)))
            finally:
                self.ops.close(fd)
        return deleted
