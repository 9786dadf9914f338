"""What a load of the eBPF backend writes in bpffs, and the clock its entries are stamped with.

A program's rule tries are pinned with the program under ``layout.program_dir(service,
digest)`` (``prog`` and each map's name without ``sg_``), first in a temporary directory that
is then renamed into place, so a reader never finds half a program (``pin_program``).

A service's state (counters, buckets, bans, events) is pinned under
``layout.service_dir(service)``; ``open_or_create`` opens the pinned map when it has the
wanted type, key, value, flags and capacity, and otherwise makes a new one and pins it in its
place (renamed over the old pin), carrying the old entries over where key and value sizes are
equal (a ring buffer carries nothing) — so a reload keeps counts and bans. Expired bans are
not carried; active ones always are, and a capacity too small for them is refused before
anything is replaced (``carried``).

Loaders race: the proxy's workers reload one digest at once, and another process's
``collect`` may unpin a service map between our opening it and our program directory
appearing. Each step here meets that by trying again or pinning again, never by a lock: every
copy of one digest is the same program, so whichever lands serves.

Hand-written over ``BpfOps`` (kernel/bpfops.py) rather than a bpffs library: no library
offers the pin-then-rename protocol, and the port lets tests/core drive every race with fakes.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from typing import Sequence

from sockgate.ebpf import layout
from sockgate.ebpf.insn import MapType
from sockgate.ebpf.maps import MapSpec
from sockgate.ebpf.program import EbpfProgram
from sockgate.errors import AdapterError, UsageError
from sockgate.kernel.bpfops import BpfOps
from sockgate.kernel.pins import map_name
from sockgate.linux import procfs

BPFFS_ENV = "SOCKGATE_BPFFS"  # where the bpf filesystem is (default layout.BPFFS)
_ITERABLE = frozenset({MapType.HASH, MapType.LRU_HASH, MapType.LPM_TRIE, MapType.PERCPU_HASH, MapType.LRU_PERCPU_HASH})
_BAN_MAPS = frozenset(layout.bans_spec(f).name for f in (4, 6))
_SWAP_TRIES = 8  # renames tried against concurrent loaders of one digest (_swap_dir)


@dataclass(frozen=True)
class Paths:
    """Where the backend's objects are under one bpffs mount."""

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


def ktime_ns() -> int:
    """Now on the clock the programs stamp and compare (``bpf_ktime_get_ns()``: the kernel's
    CLOCK_MONOTONIC, which no time namespace offsets), so that expiries carried over and the
    registry's ages mean the same to every loader, whatever time namespace it runs in."""
    return time.monotonic_ns() - procfs.monotonic_offset_ns()


# -------------------------------------------------------------------- pure decisions


def same_shape(pinned: MapSpec, wanted: MapSpec) -> bool:
    """Whether a pinned map can serve as ``wanted`` (its name aside)."""
    return (pinned.map_type, pinned.key_size, pinned.value_size, pinned.flags, pinned.max_entries) == (
        wanted.map_type, wanted.key_size, wanted.value_size, wanted.flags, wanted.max_entries)


def can_carry(pinned: MapSpec, wanted: MapSpec) -> bool:
    """Whether the entries of ``pinned`` may be copied into a new ``wanted`` map."""
    return (pinned.map_type == wanted.map_type and pinned.map_type in _ITERABLE
            and (pinned.key_size, pinned.value_size) == (wanted.key_size, wanted.value_size))


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


# -------------------------------------------------------------------- service maps


def open_or_create(ops: BpfOps, path: str, spec: MapSpec) -> int:
    """The map pinned at ``path`` if it has ``spec``'s shape; else a new one pinned there
    (the old one's entries carried over where they fit)."""
    old = ops.get(path)
    shape: MapSpec | None = None
    if old is not None:
        try:
            shape = ops.map_shape(old)
        except AdapterError:
            shape = None
        if shape is not None and same_shape(shape, spec):
            return old
    fd = ops.map_create(spec)
    try:
        if old is None:
            return _pin_new(ops, fd, path)
        if shape is not None and can_carry(shape, spec):
            _carry(ops, old, fd, spec)
        tmp = f"{path}-new-{os.getpid()}"
        ops.pin(fd, tmp)
        ops.rename(tmp, path)
        return fd
    except BaseException:
        ops.close(fd)
        raise
    finally:
        if old is not None:
            ops.close(old)


def _pin_new(ops: BpfOps, fd: int, path: str) -> int:
    """Pin a new map where none was; if another loader pinned one meanwhile, use theirs."""
    try:
        ops.pin(fd, path)
        return fd
    except AdapterError as e:
        if e.errno != errno.EEXIST:
            raise
    theirs = ops.get(path)
    if theirs is None:
        raise AdapterError(f"{path}: pinned by another process and gone again", target=path)
    ops.close(fd)
    return theirs


def _carry(ops: BpfOps, old: int, new: int, spec: MapSpec) -> None:
    items = carried(spec, list(ops.map_items(old, spec.key_size, spec.value_size)), ktime_ns())
    if items:
        ops.map_update_many(new, [k for k, _ in items], [v for _, v in items])


def repin(ops: BpfOps, svc_dir: str, specs: Sequence[MapSpec], fds: dict[str, int]) -> None:
    """Pin again any service map another process's ``collect`` unpinned between our
    opening it and our program directory appearing (which keeps them from then on), so
    the maps the program uses stay the ones its bans and counters are read from."""
    for spec in specs:
        path = f"{svc_dir}/{map_name(spec)}"
        held = ops.get(path)
        if held is not None:
            ops.close(held)
            continue
        try:
            ops.pin(fds[spec.name], path)
        except AdapterError as e:
            if e.errno != errno.EEXIST:
                raise


# -------------------------------------------------------------------- program directories


def pin_program(ops: BpfOps, paths: Paths, program: EbpfProgram, prog_fd: int, maps: dict[str, int]) -> str:
    """Pin into a fresh directory, then rename it into place (replacing an older copy of
    the same digest, whose objects live on as long as sockets hold them)."""
    final = paths.program(program.service, program.digest)
    tmp = f"{final}-new-{os.getpid()}-{time.monotonic_ns()}"
    ops.ensure_dirs(paths.mount, paths.relative(tmp))
    try:
        for m in program.maps:
            ops.pin(maps[m.spec.name], f"{tmp}/{map_name(m.spec)}")
        ops.pin(prog_fd, f"{tmp}/prog")
        _swap_dir(ops, tmp, final)
    except BaseException:
        ops.remove_tree(tmp)
        raise
    return final


def _swap_dir(ops: BpfOps, tmp: str, final: str) -> None:
    """``tmp`` renamed to ``final``, an existing ``final`` moved aside first. Loaders of the
    same digest (the proxy's workers reloading at once) race here: one moving ``final``
    away under another, or putting its own in place in between, is met by trying again —
    every copy of one digest is the same program, so whichever lands serves."""
    olds: list[str] = []
    try:
        for attempt in range(_SWAP_TRIES):
            try:
                ops.rename(tmp, final)
                return
            except AdapterError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or attempt == _SWAP_TRIES - 1:
                    raise
            old = f"{final}-old-{os.getpid()}-{time.monotonic_ns()}"
            try:
                ops.rename(final, old)
                olds.append(old)
            except AdapterError as e:
                if e.errno != errno.ENOENT:  # (ENOENT: another loader moved it aside first)
                    raise
    finally:
        for old in olds:
            ops.remove_tree(old)
