"""The eBPF backend: a service compiled by ``sockgate.ebpf``, its maps and program pinned in
bpffs, attached with ``SO_ATTACH_BPF``, and recognised again through a registry of cookies.

Every service is compiled with its state (``OPTIONS``: bans, refusal counters and events, rate
limits — ``ENFORCES``) and with the protocol read from each packet, so one program guards a
service's TCP and UDP sockets alike.

Loading (``load``) is generic over what the program names:

* every program-scope map of ``program.maps`` (the rule tries) is created and filled in one
  batch; with the program they are pinned under ``layout.program_dir(service, digest)``
  (``prog`` and each map's name without ``sg_``), first in a temporary directory that is then
  renamed into place, so a reader never finds half a program;
* every service-scope map the program names (``program.service_maps``: counters, buckets,
  bans, events) is opened from ``layout.service_dir(service)`` when one is pinned with the
  same type, key, value, flags and capacity; otherwise a new one is made and pinned in its
  place (renamed over the old pin), carrying the old entries over where key and value sizes
  are equal (a ring buffer carries nothing) — so a reload keeps counts and bans. Expired bans
  are not carried; active ones always are, and a capacity too small for them is refused
  before anything is replaced;
* the program is linked to every map's fd and loaded; the verifier's refusal is a
  ``VerifierError`` naming the end of its log.

Attaching records socket cookie → (program id, digest, service, namespace) in the pinned
registry (``ebpf/registry.py``) before the ``setsockopt``, and puts the old record back if the
kernel refuses. ``recognise`` answers for an eBPF filter whose cookie is recorded and whose
program id is still loaded under the recorded digest's name; anything else eBPF stays foreign
(never unknown). ``restore`` puts a recognised program back by its id (the socket it came off
may hold the last reference, so the id is tried first), else from its pin.

``collect`` removes registry entries whose socket is gone (its cookie absent from this
namespace's sock_diag; an entry of another namespace once that namespace no longer exists —
its nsfs inode held by no process, descriptor or ``ip netns`` mount) and then program
directories no remaining entry names; both only after ``grace`` seconds, so a program
loaded but not yet attached, or a socket guarded before it is bound, is not collected. A load
collects at most once per ``grace`` (listing the namespace's sockets is what costs). Pins
are only names: a socket keeps its program whatever is unpinned.
"""

from __future__ import annotations

import errno
import os
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Collection, Literal, Sequence

from sockgate.resolve.ranges import Banned
from sockgate.ebpf import layout, registry
from sockgate.ebpf.insn import MapType
from sockgate.ebpf.maps import MapSpec
from sockgate.ebpf.program import ENFORCES, EbpfProgram, compile_resolved
from sockgate.errors import AdapterError, SockgateError, UsageError
from sockgate.kernel.backend import BanLike, Compiled, Loaded
from sockgate.kernel.banmaps import BanMaps
from sockgate.kernel.bpfops import BpfOps
from sockgate.kernel.ebpfopts import OPTIONS as OPTIONS, options, probe_program as probe_program
from sockgate.kernel.pins import map_name
from sockgate.kernel.reading import Attached, BpfFilter, GuardInfo
from sockgate.linux import procfs
from sockgate.policy.needs import Need
from sockgate.resolve import ResolvedService

GRACE = 60.0  # seconds a fresh registry entry or program directory is safe from ``collect``
BPFFS_ENV = "SOCKGATE_BPFFS"  # where the bpf filesystem is (default layout.BPFFS)
_ITERABLE = frozenset({MapType.HASH, MapType.LRU_HASH, MapType.LPM_TRIE, MapType.PERCPU_HASH, MapType.LRU_PERCPU_HASH})


# -------------------------------------------------------------------- pure decisions


def same_shape(pinned: MapSpec, wanted: MapSpec) -> bool:
    """Whether a pinned map can serve as ``wanted`` (its name aside)."""
    return (pinned.map_type, pinned.key_size, pinned.value_size, pinned.flags, pinned.max_entries) == (
        wanted.map_type, wanted.key_size, wanted.value_size, wanted.flags, wanted.max_entries)


def can_carry(pinned: MapSpec, wanted: MapSpec) -> bool:
    """Whether the entries of ``pinned`` may be copied into a new ``wanted`` map."""
    return (pinned.map_type == wanted.map_type and pinned.map_type in _ITERABLE
            and (pinned.key_size, pinned.value_size) == (wanted.key_size, wanted.value_size))


_BAN_MAPS = frozenset(layout.bans_spec(f).name for f in (4, 6))


def ktime_ns() -> int:
    """Now on the clock the programs stamp and compare (``bpf_ktime_get_ns()``: the kernel's
    CLOCK_MONOTONIC, which no time namespace offsets), so that expiries carried over and the
    registry's ages mean the same to every loader, whatever time namespace it runs in."""
    return time.monotonic_ns() - procfs.monotonic_offset_ns()


def carried(spec: MapSpec, items: Sequence[tuple[bytes, bytes]], now_ns: int) -> list[tuple[bytes, bytes]]:
    """The entries of an old map to copy into a new ``spec`` map. Bans: the expired ones are
    left behind and every active one is kept — a new capacity they do not fit is refused
    (``UsageError``), never a ban silently lifted. Other maps (counters, buckets): the first
    that fit."""
    if spec.name not in _BAN_MAPS:
        return list(items[: spec.max_entries])
    active = [(k, v) for k, v in items if layout.Ban.unpack(v).active(now_ns)]
    if len(active) > spec.max_entries:
        raise UsageError(f"{spec.name}: {len(active)} active bans do not fit the new capacity of {spec.max_entries};"
                         " nothing was changed (raise the capacity, or lift bans first)")
    return active


def program_name(digest: str) -> str:
    """The kernel object name of the program of ``digest`` (``EbpfProgram.name``)."""
    return ("sg_" + digest)[:15]


def stale(record: registry.Record, cookie: int, live: set[int] | None, here: int | None, now_ns: int,
          grace: float, namespaces: set[int] | None = None) -> bool:
    """Whether a registry entry names a socket that is gone, once it is old enough: a socket
    of this namespace whose cookie sock_diag no longer lists, or a socket of another namespace
    that no longer exists (its recorded nsfs inode among no live namespace's, ``namespaces``).
    An inode a new namespace reuses keeps the entry: a leak, never a live guard forgotten."""
    if now_ns - record.written_ns < grace * 1e9:
        return False
    if here is not None and record.netns == here:
        return live is not None and cookie not in live
    return namespaces is not None and record.netns_ino != 0 and record.netns_ino not in namespaces


# ------------------------------------------------------------------------------ values


_SWAP_TRIES = 8  # renames tried against concurrent loaders of one digest (_swap_dir)


class EbpfLoaded:
    """A loaded program: its fd (closed when this is dropped), id and pinned directory, and
    the root its service's state is pinned under (``layout.service_dir(service, root)``: the
    refusal log's rings and counters)."""

    def __init__(self, compiled: EbpfProgram, prog_fd: int, prog_id: int, directory: str, ops: BpfOps,
                 root: str = layout.ROOT) -> None:
        self.compiled = compiled
        self.prog_fd = prog_fd
        self.prog_id = prog_id
        self.directory = directory
        self.root = root
        self._finalizer = weakref.finalize(self, ops.close, prog_fd)


@dataclass(frozen=True)
class Paths:
    mount: str

    @property
    def root(self) -> str:
        return self.mount + "/sockgate"

    @property
    def registry(self) -> str:
        return self.root + "/sockets"

    def service(self, service: str) -> str:
        return layout.service_dir(service, self.root)

    def program(self, service: str, digest: str) -> str:
        return layout.program_dir(service, digest, self.root)

    def relative(self, path: str) -> str:
        return path.removeprefix(self.mount + "/")


def default_mount() -> str:
    return os.environ.get(BPFFS_ENV) or layout.BPFFS


# ------------------------------------------------------------------------------ backend


class EbpfBackend:
    def __init__(self, ops: BpfOps, mount: str | None = None, grace: float = GRACE) -> None:
        self.ops = ops
        self.mount = mount  # None: $SOCKGATE_BPFFS or /sys/fs/bpf, read when used
        self.grace = grace
        self._why: dict[tuple[str, int], str | None] = {}  # (mount, euid) → why unusable (probed once each)
        self._seen: dict[int, registry.Record] = {}  # cookie → record, as recognise read it
        self._collected_at: float | None = None  # time.monotonic() of the last collection before a load

    @property
    def paths(self) -> Paths:
        return Paths(self.mount or default_mount())

    @property
    def name(self) -> Literal["ebpf"]:
        return "ebpf"

    @property
    def enforces(self) -> frozenset[Need]:
        return ENFORCES  # rate limits (and their bans), in the program's buckets

    def unavailable(self) -> str | None:
        if sys.platform != "linux":
            return f"eBPF socket filters need Linux, not {sys.platform}"
        key = (self.paths.mount, os.geteuid())  # a process that drops root probes again
        if key not in self._why:
            self._why[key] = self._probe()
        return self._why[key]

    def _probe(self) -> str | None:
        """Why this process may not load what ``load`` loads, found by doing it once with
        throw-away maps (``probe_program``: the LPM tries need CAP_BPF or CAP_SYS_ADMIN,
        whatever ``kernel.unprivileged_bpf_disabled`` says; the verifier must take every
        helper and instruction a service's program uses), all closed; then the bpffs
        directories. None: it may."""
        try:
            self._verify(probe_program())
        except AdapterError as e:
            if e.errno == errno.ENOSYS:
                return "this kernel has no bpf(2) system call"
            if e.errno == errno.EPERM:
                return "loading eBPF needs root or CAP_BPF (bpf(2): operation not permitted)"
            return f"bpf(2) does not work here: {e}"  # a verifier's or a security module's refusal too
        try:
            self.ops.ensure_dirs(self.paths.mount, self.paths.relative(self.paths.root))
        except AdapterError as e:
            return f"no usable bpf filesystem at {self.paths.mount}: {e}"
        return None

    def _verify(self, program: EbpfProgram) -> None:
        """Load ``program`` with fresh, unpinned maps of its shapes; close everything."""
        fds: dict[str, int] = {}
        try:
            for spec in (*program.service_maps, *(m.spec for m in program.maps)):
                fds[spec.name] = self.ops.map_create(spec)
            self.ops.close(self.ops.prog_load(program.prog_type, program.link(fds), "sg_probe"))
        finally:
            for fd in fds.values():
                self.ops.close(fd)

    def compile(self, service: ResolvedService, bans: Sequence[Banned] = ()) -> EbpfProgram:
        """With service state (counters, events, bans, rate limits), the protocol read from
        each packet: one program for the service's TCP and UDP sockets."""
        return compile_resolved(service, banned=bans, options=options(os.environ))

    # --- load

    def load(self, program: Compiled) -> EbpfLoaded:
        if not isinstance(program, EbpfProgram):
            raise TypeError(f"not an eBPF program: {program!r}")
        try:
            registry.Record(0, 0, program.service, program.digest).pack()
        except ValueError as e:
            raise UsageError(f"service {program.service[:40]!r}: {e}") from None
        self.ops.ensure_dirs(self.paths.mount, self.paths.relative(self.paths.root))
        self._collect_quietly()
        svc_dir = self.ops.ensure_dirs(self.paths.mount, self.paths.relative(self.paths.service(program.service)))
        fds: dict[str, int] = {}
        try:
            for spec in program.service_maps:
                fds[spec.name] = self._open_or_create(f"{svc_dir}/{map_name(spec)}", spec)
            self.sweep_bans(program.service)
            for m in program.maps:
                fds[m.spec.name] = self.ops.map_create(m.spec)
                self.ops.map_update_many(fds[m.spec.name], *m.packed())
            prog_fd = self.ops.prog_load(program.prog_type, program.link(fds), program.name)
            try:
                directory = self._pin_program(program, prog_fd, {m.spec.name: fds[m.spec.name] for m in program.maps})
                self._repin(svc_dir, program.service_maps, fds)
                prog_id, _ = self.ops.prog_id_name(prog_fd)
            except BaseException:
                self.ops.close(prog_fd)
                raise
        finally:
            for fd in fds.values():
                self.ops.close(fd)
        return EbpfLoaded(program, prog_fd, prog_id, directory, self.ops, self.paths.root)

    def _repin(self, svc_dir: str, specs: Sequence[MapSpec], fds: dict[str, int]) -> None:
        """Pin again any service map another process's ``collect`` unpinned between our
        opening it and our program directory appearing (which keeps them from then on), so
        the maps the program uses stay the ones its bans and counters are read from."""
        for spec in specs:
            path = f"{svc_dir}/{map_name(spec)}"
            held = self.ops.get(path)
            if held is not None:
                self.ops.close(held)
                continue
            try:
                self.ops.pin(fds[spec.name], path)
            except AdapterError as e:
                if e.errno != errno.EEXIST:
                    raise

    def _pin_program(self, program: EbpfProgram, prog_fd: int, maps: dict[str, int]) -> str:
        """Pin into a fresh directory, then rename it into place (replacing an older copy of
        the same digest, whose objects live on as long as sockets hold them)."""
        final = self.paths.program(program.service, program.digest)
        tmp = f"{final}-new-{os.getpid()}-{time.monotonic_ns()}"
        self.ops.ensure_dirs(self.paths.mount, self.paths.relative(tmp))
        try:
            for m in program.maps:
                self.ops.pin(maps[m.spec.name], f"{tmp}/{map_name(m.spec)}")
            self.ops.pin(prog_fd, f"{tmp}/prog")
            self._swap_dir(tmp, final)
        except BaseException:
            self.ops.remove_tree(tmp)
            raise
        return final

    def _swap_dir(self, tmp: str, final: str) -> None:
        """``tmp`` renamed to ``final``, an existing ``final`` moved aside first. Loaders of the
        same digest (the proxy's workers reloading at once) race here: one moving ``final``
        away under another, or putting its own in place in between, is met by trying again —
        every copy of one digest is the same program, so whichever lands serves."""
        olds: list[str] = []
        try:
            for attempt in range(_SWAP_TRIES):
                try:
                    self.ops.rename(tmp, final)
                    return
                except AdapterError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or attempt == _SWAP_TRIES - 1:
                        raise
                old = f"{final}-old-{os.getpid()}-{time.monotonic_ns()}"
                try:
                    self.ops.rename(final, old)
                    olds.append(old)
                except AdapterError as e:
                    if e.errno != errno.ENOENT:  # (ENOENT: another loader moved it aside first)
                        raise
        finally:
            for old in olds:
                self.ops.remove_tree(old)

    def _open_or_create(self, path: str, spec: MapSpec) -> int:
        """The map pinned at ``path`` if it has ``spec``'s shape; else a new one pinned there
        (the old one's entries carried over where they fit)."""
        old = self.ops.get(path)
        shape: MapSpec | None = None
        if old is not None:
            try:
                shape = self.ops.map_shape(old)
            except AdapterError:
                shape = None
            if shape is not None and same_shape(shape, spec):
                return old
        fd = self.ops.map_create(spec)
        try:
            if old is None:
                return self._pin_new(fd, path, spec)
            if shape is not None and can_carry(shape, spec):
                self._carry(old, fd, spec)
            tmp = f"{path}-new-{os.getpid()}"
            self.ops.pin(fd, tmp)
            self.ops.rename(tmp, path)
            return fd
        except BaseException:
            self.ops.close(fd)
            raise
        finally:
            if old is not None:
                self.ops.close(old)

    def _pin_new(self, fd: int, path: str, spec: MapSpec) -> int:
        """Pin a new map where none was; if another loader pinned one meanwhile, use theirs."""
        try:
            self.ops.pin(fd, path)
            return fd
        except AdapterError as e:
            if e.errno != errno.EEXIST:
                raise
        theirs = self.ops.get(path)
        if theirs is None:
            raise AdapterError(f"{path}: pinned by another process and gone again", target=path)
        self.ops.close(fd)
        return theirs

    def _carry(self, old: int, new: int, spec: MapSpec) -> None:
        items = carried(spec, list(self.ops.map_items(old, spec.key_size, spec.value_size)), ktime_ns())
        if items:
            self.ops.map_update_many(new, [k for k, _ in items], [v for _, v in items])

    # --- attach, recognise, restore

    def attach(self, fd: int, program: Loaded, label: str) -> None:
        if not isinstance(program, EbpfLoaded):
            raise TypeError(f"not a loaded eBPF program: {program!r}")
        p = program.compiled
        record = registry.Record(program.prog_id, p.instructions, p.service, p.digest)
        self._attach_recorded(fd, program.prog_fd, record, label)

    def _attach_recorded(self, fd: int, prog_fd: int, record: registry.Record, label: str) -> None:
        """Record, then attach; the old record back if the kernel refuses the attach."""
        key = registry.key(self.ops.socket_cookie(fd))
        netns, ino = self.ops.netns_cookie(fd) or 0, self.ops.netns_inode(fd) or 0
        rec = registry.Record(record.prog_id, record.insns, record.service, record.digest, netns, ktime_ns(), ino)
        reg = self._open_or_create(self.paths.registry, registry.spec())
        try:
            before = self.ops.map_lookup(reg, key, registry.RECORD.size)
            self._record(reg, key, rec.pack())
            try:
                self.ops.attach(fd, prog_fd, label)
            except BaseException:
                if before is None:
                    self.ops.map_delete(reg, key)
                else:
                    self.ops.map_update_many(reg, [key], [before])
                raise
        finally:
            self.ops.close(reg)

    def _record(self, reg: int, key: bytes, value: bytes) -> None:
        try:
            self.ops.map_update_many(reg, [key], [value])
            return
        except AdapterError as e:
            if e.errno != errno.E2BIG:
                raise
        self.collect()  # full: make room from sockets that are gone (and namespaces), once
        try:
            self.ops.map_update_many(reg, [key], [value])
        except AdapterError as e:
            if e.errno != errno.E2BIG:
                raise
            raise AdapterError(f"{self.paths.registry}: the registry of eBPF guards is full ({self._census(reg)});"
                               " nothing was attached", errno=e.errno) from None

    def _census(self, reg: int) -> str:
        """What fills the registry, for the message that says it is full."""
        here = self.ops.here()
        records = [registry.Record.unpack(v) for _, v in self.ops.map_items(reg, registry.KEY.size, registry.RECORD.size)]
        foreign = sum(1 for r in records if here is None or r.netns != here)
        return (f"{len(records)} of {self.ops.map_shape(reg).max_entries} entries, {len(records) - foreign} for sockets of this"
                f" network namespace still open, {foreign} of other namespaces still alive (or unknown)")

    def recognise(self, attached: Attached) -> GuardInfo | None:
        if not isinstance(attached, BpfFilter) or attached.cookie is None:
            return None
        rec = self._lookup(attached.cookie)
        if rec is None or not self._still_loaded(rec):
            return None
        self._seen[attached.cookie] = rec
        return GuardInfo("sockgate", rec.insns, rec.service, rec.digest, backend="ebpf", refused=self.refused(rec.service))

    def _lookup(self, cookie: int) -> registry.Record | None:
        reg = self.ops.get(self.paths.registry)
        if reg is None:
            return None
        try:
            raw = self.ops.map_lookup(reg, registry.key(cookie), registry.RECORD.size)
        finally:
            self.ops.close(reg)
        return None if raw is None else registry.Record.unpack(raw)

    def _still_loaded(self, rec: registry.Record) -> bool:
        fd = self.ops.prog_by_id(rec.prog_id)
        if fd is None:
            return False
        try:
            return self.ops.prog_id_name(fd)[1] == program_name(rec.digest)
        finally:
            self.ops.close(fd)

    def refused(self, service: str) -> int | None:
        """Refusals counted for ``service`` (the sum of its pinned counts map), or None."""
        spec = layout.counts_spec()
        fd = self.ops.get(f"{self.paths.service(service)}/{map_name(spec)}")
        if fd is None:
            return None
        try:
            return sum(layout.Count.unpack(v).refused for _, v in self.ops.map_items(fd, spec.key_size, spec.value_size))
        finally:
            self.ops.close(fd)

    def restore(self, fd: int, previous: Attached, label: str) -> None:
        assert isinstance(previous, BpfFilter) and previous.cookie is not None, previous  # only what recognise claimed
        rec = self._seen.get(previous.cookie)
        if rec is None:
            raise AdapterError(f"{label}: the eBPF program it had was never read", target=label)
        prog_fd = self.ops.prog_by_id(rec.prog_id)
        if prog_fd is None:
            prog_fd = self.ops.get(f"{self.paths.program(rec.service, rec.digest)}/prog")
        if prog_fd is None:
            raise AdapterError(f"{label}: eBPF program {rec.prog_id} ({rec.service} {rec.digest}) is gone", target=label)
        try:
            self._attach_recorded(fd, prog_fd, rec, label)
        finally:
            self.ops.close(prog_fd)

    # --- bans

    def update_bans(self, target: Loaded | str, bans: Sequence[BanLike], ports: Collection[int] = ()) -> bool:
        """The service's pinned ban tries brought to ``bans`` (``BanMaps.apply``): the
        program reads them on every packet, so nothing is recompiled or re-attached."""
        if isinstance(target, str):
            service = target
        elif isinstance(target, EbpfLoaded):
            service = target.compiled.service
        else:
            raise TypeError(f"not a loaded eBPF program: {target!r}")
        self.bans(service).apply(bans, ports)
        return True

    def bans(self, service: str) -> BanMaps:
        """The ban maps pinned for ``service``."""
        return BanMaps(self.ops, self.paths.service(service))

    def sweep_bans(self, service: str) -> int:
        """Free the room ``service``'s expired bans take (``BanMaps.sweep``); best effort —
        a sweep that fails costs room, never a ban — so 0 when the maps cannot be read."""
        try:
            return self.bans(service).sweep()
        except (SockgateError, ValueError):
            return 0

    # --- clean-up

    def _collect_quietly(self) -> None:
        """``collect`` before a load, at most once per ``grace`` seconds: nothing becomes
        collectable sooner, and a collection lists every socket of the namespace (sock_diag:
        seconds on a host with 100,000 sockets), which a proxy pushing a ban, or a reload,
        must not pay each time."""
        now = time.monotonic()
        if self._collected_at is not None and now - self._collected_at < self.grace:
            return
        self._collected_at = now
        try:
            self.collect()
        except AdapterError:
            pass  # a clean-up that failed leaves pins behind; it never blocks a guard

    def collect(self) -> tuple[int, int]:
        """Remove stale registry entries, then unreferenced program directories; how many of each."""
        now_ns = ktime_ns()
        keep: set[str] = set()
        gone = 0
        reg = self.ops.get(self.paths.registry)
        if reg is not None:
            try:
                gone, keep = self._collect_registry(reg, now_ns)
            finally:
                self.ops.close(reg)
        return gone, self._collect_programs(keep)

    def _collect_registry(self, reg: int, now_ns: int) -> tuple[int, set[str]]:
        records = [(k, registry.Record.unpack(v)) for k, v in self.ops.map_items(reg, registry.KEY.size, registry.RECORD.size)]
        live = here = namespaces = None  # (a dump of every socket and namespace: only when one could be stale)
        if any(now_ns - rec.written_ns >= self.grace * 1e9 for _, rec in records):
            live, here, namespaces = self.ops.live_cookies(), self.ops.here(), self.ops.live_netns()
        keep: set[str] = set()
        dead = []
        for k, rec in records:
            if stale(rec, registry.cookie(k), live, here, now_ns, self.grace, namespaces):
                dead.append(k)
            else:
                keep.add(self.paths.program(rec.service, rec.digest))
        for k in dead:
            self.ops.map_delete(reg, k)
        return len(dead), keep

    def _collect_programs(self, keep: set[str]) -> int:
        """Program directories no kept registry entry names, after ``grace``; then the
        service directories that held no program already (``_collect_service``)."""
        services = f"{self.paths.root}/services"
        removed = 0
        for svc in self.ops.listdir(services):
            left = gone = 0
            for name in self.ops.listdir(f"{services}/{svc}"):
                path = f"{services}/{svc}/{name}"
                if not name.startswith("prog-"):
                    continue
                age = self.ops.age(path)
                if path not in keep and age is not None and age >= self.grace:
                    self.ops.remove_tree(path)
                    gone += 1
                else:
                    left += 1
            removed += gone
            if not left and not gone:  # the last program went now: the directory goes next time at the earliest
                self._collect_service(f"{services}/{svc}")
        return removed

    def _collect_service(self, path: str) -> None:
        """Unpin a service directory that holds no program (so no socket's registry entry
        names it: a live guard keeps its program directory, and with it its counters and
        bans) once it has been unchanged for ``grace`` — its last program was collected at
        least that long ago — and it holds no active ban (a ban written for a service that is
        not guarded now is for its next guard). Its maps are freed when nothing else holds
        them; counters of a service no longer guarded go with them (REVIEW3 R10)."""
        age = self.ops.age(path)
        if age is None or age < self.grace:
            return
        try:
            now = time.monotonic_ns()
            if any(ban.active(now) for _, ban in BanMaps(self.ops, path).list()):
                return
        except (SockgateError, ValueError):
            return  # unreadable bans: kept, never lifted by a clean-up
        self.ops.remove_tree(path)
