"""The eBPF backend's kernel objects as the program, the loader and the readers share them:
map names and layouts, record formats, and where each object is pinned in bpffs.

Written down once because three parties must agree on every byte: the generated program
(ebpf/codegen.py) writes counters, token buckets, bans and refusal events; the loader
(kernel/ebpfstore.py) creates and pins the maps; and readers in other processes (``sockgate
refused``, the refusal log, the agent) find them by path and decode them. Pure: names,
``struct`` layouts and path strings, no I/O.

Two scopes. A *program* owns its address rules (the LPM tries of ebpf/maps.py): a new rule
set is a new program with new tries, swapped onto each socket in one step. A *service* owns
the state that must outlive a reload — refusal counters, token buckets, bans, the event ring —
so a reload neither forgets who was refused nor lifts a ban. Both are pinned; a restart of
the loader finds them again.

Times are ``bpf_ktime_get_ns()``: CLOCK_MONOTONIC in nanoseconds (``time.monotonic_ns()`` in
user space), so expiries compare in the program without a clock conversion. Numbers are in
host byte order, addresses in network order.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import struct
from dataclasses import dataclass
from enum import IntEnum

from sockgate.bans import Origin as Origin  # re-exported: readers of the map decode it from here
from sockgate.ebpf.insn import BPF_F_NO_PREALLOC, MapType
from sockgate.ebpf.maps import ADDR_BYTES, MapSpec, PREFIX_BITS

BPFFS = "/sys/fs/bpf"
ROOT = BPFFS + "/sockgate"  # everything sockgate pins lives below here

# -- a source, as counters and buckets key it ---------------------------------------------

SOURCE_KEY = struct.Struct("=BBH16s")
"""``struct sg_source { __u8 family; __u8 zero; __u16 scope; __u8 addr[16]; }`` (20 bytes):
``family`` 4 or 6 (0 for the service-wide bucket of ``limit rate N/UNIT`` without ``per
source``, whose address is all zero); ``scope`` 0 for the service, ``i + 1`` for rule ``i``
(a rule's own limit keeps its own bucket); an IPv4 address fills the first 4 bytes."""

SERVICE_SCOPE = 0


@dataclass(frozen=True)
class SourceKey:
    family: int  # 0, 4 or 6
    addr: int
    scope: int = SERVICE_SCOPE

    def pack(self) -> bytes:
        raw = self.addr.to_bytes(ADDR_BYTES[self.family], "big") if self.family else b""
        return SOURCE_KEY.pack(self.family, 0, self.scope, raw.ljust(16, b"\0"))

    @classmethod
    def unpack(cls, raw: bytes) -> SourceKey:
        family, _, scope, addr = SOURCE_KEY.unpack(raw)
        n = ADDR_BYTES.get(family, 0)
        return cls(family, int.from_bytes(addr[:n], "big") if n else 0, scope)

    @classmethod
    def of(cls, address: ipaddress.IPv4Address | ipaddress.IPv6Address, scope: int = SERVICE_SCOPE) -> SourceKey:
        return cls(address.version, int(address), scope)

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if self.family == 4:
            return ipaddress.IPv4Address(self.addr)
        if self.family == 6:
            return ipaddress.IPv6Address(self.addr)
        return None


# -- refusal counters: LRU hash, service scope ----------------------------------------------

COUNT_VALUE = struct.Struct("=QQQQ")
"""``struct sg_count { __u64 refused; __u64 first_ns; __u64 last_ns; __u64 event_ns; }``:
refused packets from one source (SYNs for TCP, datagrams for UDP), first and last seen, and
when the last refusal event for it went to the ring (the per-source event rate limit)."""


@dataclass(frozen=True)
class Count:
    refused: int
    first_ns: int
    last_ns: int
    event_ns: int = 0

    def pack(self) -> bytes:
        return COUNT_VALUE.pack(self.refused, self.first_ns, self.last_ns, self.event_ns)

    @classmethod
    def unpack(cls, raw: bytes) -> Count:
        return cls(*COUNT_VALUE.unpack(raw))


DEFAULT_COUNTERS = 16384
"""Sources remembered per service; the least recently refused go first. A preallocated LRU
costs about 120 bytes an entry whether used or not (about 2 MiB here; 7.5 MiB at 65,536),
and every eBPF-guarded service has one: ``SOCKGATE_COUNTERS`` sizes it (kernel/ebpfopts.py)."""


def counts_spec(capacity: int = DEFAULT_COUNTERS) -> MapSpec:
    return MapSpec("sg_counts", MapType.LRU_HASH, SOURCE_KEY.size, COUNT_VALUE.size, capacity)


# -- token buckets: LRU hash, service scope -------------------------------------------------

BUCKET_VALUE = struct.Struct("=Q")
"""``__u64 tat``: the generic cell rate algorithm's theoretical arrival time (ns). A new
connection at ``now`` conforms when ``tat - now <= burst_ns``; then ``tat = max(tat, now) +
interval_ns``. One word per source, so a bucket is a single map value."""

DEFAULT_BUCKETS = 262144
"""Generous on purpose: an LRU bucket evicted by SYNs from other (forgeable) sources comes
back with a full burst, so a fresh burst should cost a flooder a quarter of a million SYNs
(about 20 MiB of kernel memory per rate-limited service; docs/ebpf.md, *Bucket eviction*)."""


TOTAL_BUCKETS = 1024
"""The buckets of a service whose limits are all totals: one per limited scope, in an LRU
with room enough that its per-CPU free lists never evict one (about 100 KiB)."""


def buckets_spec(capacity: int = DEFAULT_BUCKETS) -> MapSpec:
    return MapSpec("sg_buckets", MapType.LRU_HASH, SOURCE_KEY.size, BUCKET_VALUE.size, capacity)


# -- bans: one LPM trie per family, service scope -------------------------------------------

BAN_VALUE = struct.Struct("=QII")
"""``struct sg_ban { __u64 expires_ns; __u32 origin; __u32 zero; }``; ``expires_ns`` 0 never
expires; ``origin`` is ``sockgate.bans.Origin`` (backend-neutral: every source of bans names
it). The key is ``struct bpf_lpm_trie_key`` as for the rules (ebpf/maps.LpmKey)."""


@dataclass(frozen=True)
class Ban:
    expires_ns: int
    origin: Origin

    def pack(self) -> bytes:
        return BAN_VALUE.pack(self.expires_ns, int(self.origin), 0)

    def active(self, now_ns: int) -> bool:
        """Whether the ban still holds at ``now_ns`` (0: until lifted)."""
        return self.expires_ns == 0 or now_ns < self.expires_ns

    @classmethod
    def unpack(cls, raw: bytes) -> Ban:
        expires, origin, _ = BAN_VALUE.unpack(raw)
        return cls(expires, Origin(origin) if origin in Origin._value2member_map_ else Origin.MANUAL)


DEFAULT_BANS = 131072


def bans_spec(family: int, capacity: int = DEFAULT_BANS) -> MapSpec:
    return MapSpec(f"sg_bans{family}", MapType.LPM_TRIE, 4 + ADDR_BYTES[family], BAN_VALUE.size,
                   capacity, BPF_F_NO_PREALLOC)


# -- refusal events: a ring buffer, service scope -------------------------------------------

EVENT = struct.Struct("=QBBhi16s")
"""``struct sg_event { __u64 ts_ns; __u8 family; __u8 reason; __s16 zero; __s32 rule;
__u8 addr[16]; }`` (32 bytes), one per source at most once per event interval."""


class Reason(IntEnum):
    RULE = 1  # a deny rule or the default (``rule`` says which; ebpf.maps.DEFAULT_RULE)
    BAN = 2
    RATE = 3  # over a ``limit rate``
    FORGED = 4  # an IPv4-mapped IPv6 source


@dataclass(frozen=True)
class Event:
    ts_ns: int
    family: int
    reason: Reason
    rule: int
    addr: int

    @classmethod
    def unpack(cls, raw: bytes) -> Event:
        ts, family, reason, _, rule, addr = EVENT.unpack(raw[: EVENT.size])
        n = ADDR_BYTES.get(family, 16)
        return cls(ts, family, Reason(reason) if reason in Reason._value2member_map_ else Reason.RULE,
                   rule, int.from_bytes(addr[:n], "big"))

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.IPv4Address(self.addr) if self.family == 4 else ipaddress.IPv6Address(self.addr)


RING_BYTES = 256 * 1024  # a power of two and a multiple of the page size, as BPF_MAP_TYPE_RINGBUF requires
DEFAULT_EVENT_INTERVAL_NS = 1_000_000_000


def events_spec(size: int = RING_BYTES) -> MapSpec:
    return MapSpec("sg_events", MapType.RINGBUF, 0, 0, size)


# -- service statistics: an array of counters, service scope --------------------------------

STAT_VALUE = struct.Struct("=Q")
"""``__u64``, indexed by ``Stat``: what the program failed to do and would otherwise lose
without a trace. Atomic adds in the program; an array, so no flood can evict a counter (the
LRU ``counts`` map could evict a special key exactly under the pressure it measures)."""


class Stat(IntEnum):
    EVENTS_LOST = 0  # refusal events the ring had no room for (``bpf_ringbuf_output`` < 0)
    BANS_FAILED = 1  # ``ban DURATION`` inserts that failed (the ban trie full)


def stats_spec() -> MapSpec:
    return MapSpec("sg_stats", MapType.ARRAY, 4, STAT_VALUE.size, len(Stat))


# -- where things are pinned -----------------------------------------------------------------

SERVICE_MAPS = ("counts", "buckets", "bans4", "bans6", "events", "stats")  # file names in a service's directory
REGISTRY = ROOT + "/sockets"  # hash: socket cookie → what sockgate attached (kernel/ebpf.py)

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")  # no ".": bpffs refuses names holding one (bpf_lookup)


def service_dir(service: str, root: str = ROOT) -> str:
    """The directory of ``service``'s objects: its name when that is a safe file name, else
    ``x-`` and the name's UTF-8 in hex (a daemon name is any word, and a name like ``..`` or
    one holding ``/`` must not escape the root; bpffs refuses any name with a dot); a name
    longer than 120 bytes is ``h-`` and its SHA-256 in hex. A plain name that itself starts
    with ``x-`` or ``h-`` is encoded too, so no two services share a directory."""
    raw = service.encode()
    if _PLAIN.fullmatch(service) and not service.startswith(("x-", "h-")):
        name = service
    elif len(raw) <= 120:  # NAME_MAX is 255: the hex of a longer name would not fit
        name = "x-" + raw.hex()
    else:
        name = "h-" + hashlib.sha256(raw).hexdigest()
    return f"{root}/services/{name}"


def program_dir(service: str, digest: str, root: str = ROOT) -> str:
    """The directory of one compiled program of ``service``: ``prog`` and its rule tries."""
    if not re.fullmatch(r"[0-9a-f]{16}", digest):
        raise ValueError(f"not a digest: {digest!r}")
    return f"{service_dir(service, root)}/prog-{digest}"


def host_bits(family: int) -> int:
    return PREFIX_BITS[family]
