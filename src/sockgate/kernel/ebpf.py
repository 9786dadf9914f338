"""The eBPF backend: a service compiled by ``sockgate.ebpf``, its maps and program pinned in
bpffs, attached with ``SO_ATTACH_BPF``, and recognised again through a registry of cookies.

Every service is compiled with its state (``OPTIONS``: bans, refusal counters and events, rate
limits — ``ENFORCES``) and with the protocol read from each packet, so one program guards a
service's TCP and UDP sockets alike.

Loading (``load``) is generic over what the program names: every program-scope map of
``program.maps`` (the rule tries) is created and filled in one batch and pinned with the
program; every service-scope map it names (``program.service_maps``: counters, buckets, bans,
events) is opened from, or made and pinned in, the service's directory (``kernel.ebpfstore``:
the pins, their races, and what a reload carries over); the program is linked to every map's
fd and loaded; the verifier's refusal is a ``VerifierError`` naming the end of its log.

Attaching records socket cookie → (program id, digest, service, namespace) in the pinned
registry (``ebpf/registry.py``) before the ``setsockopt``, and puts the old record back if the
kernel refuses. ``recognise`` answers for an eBPF filter whose cookie is recorded and whose
program id is still loaded under the recorded digest's name; anything else eBPF stays foreign
(never unknown). ``restore`` puts a recognised program back by its id (the socket it came off
may hold the last reference, so the id is tried first), else from its pin.

``collect`` (``kernel.ebpfcollect``) removes registry entries whose socket is gone and the
program and service directories nothing names any more, each only after ``grace`` seconds; a
load collects at most once per ``grace`` (listing the namespace's sockets is what costs).
"""

from __future__ import annotations

import errno
import os
import sys
import time
import weakref
from typing import Collection, Literal, Sequence

from sockgate.resolve.ranges import Banned
from sockgate.ebpf import layout, registry
from sockgate.ebpf.program import ENFORCES, EbpfProgram, compile_resolved, program_name
from sockgate.errors import AdapterError, SockgateError, UsageError
from sockgate.kernel.backend import BanLike, Compiled, Loaded
from sockgate.kernel import ebpfcollect
from sockgate.kernel.banmaps import BanMaps
from sockgate.kernel.bpfops import BpfOps
from sockgate.kernel.ebpfopts import options, probe_program
from sockgate.kernel.ebpfstore import Paths, default_mount, ktime_ns, open_or_create, pin_program, repin
from sockgate.kernel.pins import map_name
from sockgate.kernel.reading import Attached, BpfFilter, GuardInfo
from sockgate.policy.needs import Need
from sockgate.resolve import ResolvedService


# ------------------------------------------------------------------------------ values


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


# ------------------------------------------------------------------------------ backend


class EbpfBackend:
    def __init__(self, ops: BpfOps, mount: str | None = None, grace: float = ebpfcollect.GRACE) -> None:
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
                fds[spec.name] = open_or_create(self.ops, f"{svc_dir}/{map_name(spec)}", spec)
            self.sweep_bans(program.service)
            for m in program.maps:
                fds[m.spec.name] = self.ops.map_create(m.spec)
                self.ops.map_update_many(fds[m.spec.name], *m.packed())
            prog_fd = self.ops.prog_load(program.prog_type, program.link(fds), program.name)
            try:
                directory = pin_program(self.ops, self.paths, program, prog_fd,
                                        {m.spec.name: fds[m.spec.name] for m in program.maps})
                repin(self.ops, svc_dir, program.service_maps, fds)
                prog_id, _ = self.ops.prog_id_name(prog_fd)
            except BaseException:
                self.ops.close(prog_fd)
                raise
        finally:
            for fd in fds.values():
                self.ops.close(fd)
        return EbpfLoaded(program, prog_fd, prog_id, directory, self.ops, self.paths.root)

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
        reg = open_or_create(self.ops, self.paths.registry, registry.spec())
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
        """Stale registry entries and unreferenced program directories removed
        (``ebpfcollect.collect``); how many of each."""
        return ebpfcollect.collect(self.ops, self.paths, self.grace)
