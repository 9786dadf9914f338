"""``compile_service``: a service → an eBPF program and the contents of its maps, or an error.

Passes: refuse rules that need user space (``ResolvedService.refusal``, as the classic
compiler does; with ``Options`` the program enforces rate limits, ``ENFORCES``, concurrent
limits stay refused) → interval tables (resolve/ranges.py, shared with the classic compiler, so both decide alike) → prefixes
(prefixes.py) → code (codegen.py). The program does not depend on the address rules, only
on the default and the verdict for non-IP packets: rules live in the maps, so a new rule set
is a map update, not a new program.

Map file descriptors exist only once the maps are created, so the program carries
relocations — the slots of its map loads — and ``link`` patches the fds in, as libbpf does
for an object file. The digest covers the service name, the program and every map entry, so
equal digests mean equal enforcement.

Without ``Options`` the program is the rules alone: no map but the two rule tries. With
them it uses the service's state maps (layout.py) — bans, refusal counters, refusal events,
and token buckets when the policy has rate limits — listed in ``service_maps`` (only those the
program loads) and relocated like the tries: the loader creates or reopens them under the
service's bpffs directory and passes their fds to ``link`` with the tries'.
"""

from __future__ import annotations

import hashlib
from itertools import chain
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from sockgate.bulk import no_cycle_collection
from sockgate.resolve import ranges as _ranges
from sockgate.resolve import ResolvedService, resolve_service
from sockgate.ebpf import labels, layout, prefixes, rates
from sockgate.ebpf.codegen import Shape, State, generate
from sockgate.ebpf.insn import BPF_OBJ_NAME_LEN, BPF_PSEUDO_MAP_FD, Insn, ProgType, encode, ld_map_fd
from sockgate.ebpf.maps import MapContents, MapSpec, lpm_spec
from sockgate.policy.ir import Action, Service
from sockgate.policy.needs import Need

LICENSE = "GPL"  # socket filters need no GPL-only helper; any string works, this one always does


def program_name(digest: str) -> str:
    """The kernel object name of the program of ``digest`` (``BPF_OBJ_NAME_LEN``): ``sg_`` and
    the digest's start; what a reader matches a loaded program id against."""
    return ("sg_" + digest)[: BPF_OBJ_NAME_LEN - 1]


@dataclass(frozen=True)
class Options:
    """The service state a program keeps, sized by configuration (layout.py's defaults).
    ``protocol`` is the guarded socket's: for TCP only a SYN is a new connection, for UDP every
    datagram; "any" reads it from each packet (one program for a service's TCP and UDP
    sockets; counting.syn_check)."""

    protocol: Literal["tcp", "udp", "any"] = "tcp"
    counters: int = layout.DEFAULT_COUNTERS
    buckets: int = layout.DEFAULT_BUCKETS
    bans: int = layout.DEFAULT_BANS
    event_interval_ns: int = layout.DEFAULT_EVENT_INTERVAL_NS
    ring_bytes: int = layout.RING_BYTES
    tcp_bans: bool = False  # let a TCP SYN over its rate ban its (unverified) source: docs/ebpf.md

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp", "any"):
            raise ValueError(f"protocol {self.protocol!r}: tcp or udp, or any (read from each packet)")
        if self.event_interval_ns < 0:
            raise ValueError("the event interval is not negative")
        if self.ring_bytes < 4096 or self.ring_bytes & (self.ring_bytes - 1):
            raise ValueError(f"ring of {self.ring_bytes} bytes: a power of two of at least one page (4096)")

    def specs(self, limits: Sequence[rates.Limit] | None = None) -> dict[str, MapSpec]:
        """Every service map by name, sized by these options; when ``limits`` has no
        per-source limit the buckets hold its totals alone (``layout.TOTAL_BUCKETS``)."""
        buckets = self.buckets
        if limits is not None and not any(lim.per_source for lim in limits):
            buckets = min(self.buckets, max(layout.TOTAL_BUCKETS, 4 * len(limits)))
        specs = (layout.bans_spec(4, self.bans), layout.bans_spec(6, self.bans), layout.counts_spec(self.counters),
                 layout.events_spec(self.ring_bytes), layout.buckets_spec(buckets), layout.stats_spec())
        return {s.name: s for s in specs}


@dataclass(frozen=True)
class EbpfProgram:
    """A compiled eBPF filter: the program, its map relocations and the maps' contents."""

    service: str
    digest: str
    insns: tuple[Insn, ...]
    relocations: tuple[tuple[int, str], ...]  # (slot of an ld_imm64, map name)
    maps: tuple[MapContents, ...]
    default: Action  # the verdict when no prefix matches
    other: Action  # the verdict of a packet neither IPv4 nor IPv6
    prog_type: ProgType = ProgType.SOCKET_FILTER
    service_maps: tuple[MapSpec, ...] = ()  # service-scope maps (layout.py) the relocations also name

    @property
    def backend(self) -> Literal["ebpf"]:
        return "ebpf"

    @property
    def instructions(self) -> int:
        return len(self.insns)

    @property
    def name(self) -> str:
        return program_name(self.digest)

    def link(self, fds: Mapping[str, int]) -> bytes:
        """The encoded program with each map load pointing at ``fds[map name]``."""
        insns = list(self.insns)
        for slot, name in self.relocations:
            if name not in fds:
                raise ValueError(f"no file descriptor for map {name!r}")
            first, second = ld_map_fd(insns[slot].dst, fds[name])
            if insns[slot].src != BPF_PSEUDO_MAP_FD:
                raise ValueError(f"slot {slot} is not a map load")
            insns[slot : slot + 2] = [first, second]
        return encode(insns)

    def __len__(self) -> int:
        return len(self.insns)

    @property
    def prefixes(self) -> int:
        return sum(len(m) for m in self.maps)


ENFORCES = frozenset({Need.SOURCE_RATE_LIMIT, Need.TOTAL_RATE_LIMIT})  # beyond the address, with ``Options``


def compile_resolved(service: ResolvedService, *, banned: Sequence[_ranges.Banned] = (), spare: int = 0,
                     options: Options | None = None) -> EbpfProgram:
    """Compile ``service`` (``banned`` sources denied before any rule). The maps hold the
    prefixes plus ``spare`` free entries each, for later updates. With ``options`` the
    program keeps the service's state (bans, counters, events, rate limits: ``ENFORCES``).
    Raises ``UnsupportedInKernel`` for rules that need user space, concurrent limits first
    (they stay with the proxy, and ``rates.limits_of`` says so)."""
    with no_cycle_collection():  # (bulk.py: millions of acyclic values, nothing to collect)
        return _compile(service, banned, spare, options)


def _compile(service: ResolvedService, banned: Sequence[_ranges.Banned], spare: int, options: Options | None) -> EbpfProgram:
    state = None
    if options is not None:
        state = State(options.protocol, options.event_interval_ns, rates.limits_of(service), options.tcp_bans)
    refused = service.refusal(ENFORCES if options is not None else frozenset())
    if refused is not None:
        raise refused
    limited = frozenset(lim.rule for lim in state.limits if lim.rule is not None) if state else frozenset()
    tables = labels.separate(service, _ranges.first_match_tables(service, banned), sorted(limited), banned)
    default = service.default
    maps = []
    for table in (tables.v4, tables.v6):
        keys, values = prefixes.entries(table, default, limited)
        maps.append(MapContents(lpm_spec(table.family, len(keys) + spare), keys, values))
    gen = generate(Shape(default, tables.other, state), maps[0].spec.name, maps[1].spec.name)
    specs = options.specs(state.limits) if options is not None and state is not None else {}
    service_maps = tuple(specs[name] for name in gen.maps if name in specs)
    digest = _digest(service.name, gen.insns, maps, service_maps)
    return EbpfProgram(service.name, digest, gen.insns, gen.relocations, tuple(maps), default, tables.other,
                       service_maps=service_maps)


def compile_service(service: Service, *, banned: Sequence[_ranges.Banned] = (), spare: int = 0,
                    options: Options | None = None) -> EbpfProgram:
    """``compile_resolved`` of ``service`` resolved."""
    return compile_resolved(resolve_service(service), banned=banned, spare=spare, options=options)


def _digest(service: str, insns: Sequence[Insn], maps: Sequence[MapContents], service_maps: Sequence[MapSpec] = ()) -> str:
    """16 hex digits of SHA-256 over the service name, the program, the map entries and the
    service maps' shapes."""
    h = hashlib.sha256(service.encode() + b"\0")
    h.update(encode(insns))
    for s in service_maps:
        h.update(f"{s.name}:{s.map_type}:{s.key_size}:{s.value_size}:{s.max_entries}:{s.flags}\0".encode())
    for m in maps:
        h.update(m.spec.name.encode() + b"\0")
        h.update(b"".join(chain.from_iterable(zip(m.keys, m.values))))  # k + v, one entry after another
    return h.hexdigest()[:16]
