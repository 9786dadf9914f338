"""The eBPF backend's pinned objects, as readers in other processes find and check them.

``sockgate refused`` and the refusal log open maps that another process pinned under
``layout.ROOT`` (``services/<service_dir>/<name>``, ebpf/layout.py). bpffs is root's, but a
reader trusts no file there blindly: a path may hold a program, a link, a map of another
layout, or (under a ``--root`` that is no bpffs) a plain file. ``open_map`` opens an object
and checks it is a map with the type and key and value sizes the layout names before any of
its bytes are decoded; ``walk`` iterates a map with a bound, since a key deleted while a hash
map is walked restarts the walk; ``services`` lists the service directories, telling
apart the names ``layout.service_dir`` makes from anything else (a name with a newline is
reported escaped, never printed raw).
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from typing import Iterator

from sockgate.ebpf import layout
from sockgate.ebpf.maps import MapSpec
from sockgate.ebpf.refusals import service_of
from sockgate.errors import AdapterError
from sockgate.linux import bpfsys
from sockgate.policy.source import escape

_U32 = struct.Struct("=I")  # an array map's key


class PinError(AdapterError):
    """A pinned object is missing, unreadable, or not what the layout says."""


@dataclass(frozen=True)
class ServiceDir:
    service: str
    path: str


def map_name(spec: MapSpec) -> str:
    """The file a service's map is pinned as: the spec's name without ``sg_``."""
    return spec.name.removeprefix("sg_")


def open_map(path: str, spec: MapSpec, readonly: bool = True, exact: bool = False) -> int:
    """An fd for the map pinned at ``path`` after checking it against ``spec`` (type, key and
    value size; with ``exact`` also capacity, flags and name: a map this layout made, not one
    of the same shape made for something else); the caller closes it. Raises ``PinError``
    (errno kept)."""
    try:
        fd = bpfsys.get_pinned(path, bpfsys.BPF_F_RDONLY if readonly else 0)
    except AdapterError as e:
        raise PinError(str(e), errno=e.errno, target=path) from None
    try:
        _check(fd, path, spec)
        if exact:
            _check_exact(fd, path, spec)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(fd: int, path: str, spec: MapSpec) -> None:
    kind = bpfsys.object_kind(fd)
    if kind != "map":
        raise PinError(f"{escape(path)}: not a BPF map (a {kind})", target=path)
    info = bpfsys.map_info(fd)
    got = (int(info.type), int(info.key_size), int(info.value_size))
    want = (int(spec.map_type), spec.key_size, spec.value_size)
    if got != want:
        raise PinError(f"{escape(path)}: not a sockgate {map_name(spec)} map (type {got[0]}, key {got[1]} bytes,"
                       f" value {got[2]} bytes; expected type {want[0]}, key {want[1]}, value {want[2]})", target=path)


def _check_exact(fd: int, path: str, spec: MapSpec) -> None:
    info = bpfsys.map_info(fd)
    got = (int(info.max_entries), int(info.map_flags), bytes(info.name).rstrip(b"\0"))
    want = (spec.max_entries, spec.flags, spec.name.encode()[: bpfsys.BPF_OBJ_NAME_LEN - 1])
    if got != want:
        raise PinError(f"{escape(path)}: not the {map_name(spec)} map sockgate makes (capacity {got[0]}, flags"
                       f" {got[1]:#x}, name {escape(got[2].decode(errors='replace'))!r}; expected {want[0]},"
                       f" {want[1]:#x}, {spec.name!r})", target=path)


def open_stats(directory: str) -> int | None:
    """An fd for a service's ``sg_stats`` (checked as ``open_map``); None when none is pinned
    (a service loaded before it existed)."""
    spec = layout.stats_spec()
    path = f"{directory}/{map_name(spec)}"
    return open_map(path, spec) if os.path.lexists(path) else None


def open_bans(directory: str) -> dict[int, int]:
    """Family → an fd for a service's ban trie (checked as ``open_map``), for those pinned."""
    out: dict[int, int] = {}
    try:
        for family in (4, 6):
            spec = layout.bans_spec(family)
            path = f"{directory}/{map_name(spec)}"
            if os.path.lexists(path):
                out[family] = open_map(path, spec)
    except BaseException:
        for fd in out.values():
            os.close(fd)
        raise
    return out


def read_stats(fd: int) -> dict[layout.Stat, int]:
    """The counters of an ``sg_stats`` map (layout.Stat: events lost, program bans failed)."""
    out: dict[layout.Stat, int] = {}
    for stat in layout.Stat:
        raw = bpfsys.map_lookup(fd, _U32.pack(stat), layout.STAT_VALUE.size)
        out[stat] = 0 if raw is None else int(layout.STAT_VALUE.unpack(raw)[0])
    return out


def walk(fd: int, spec: MapSpec, bound: int | None = None) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` of every entry: in batches where the map type has them (hash maps),
    else key by key, each key once, at most ``bound`` (by default twice the pinned map's
    capacity) keys looked at: a map written while it is walked may restart the walk, and a
    reader must end."""
    yield from bpfsys.map_items(fd, spec.key_size, spec.value_size,
                                bound if bound is not None else 2 * capacity(fd) + 16)


def capacity(fd: int) -> int:
    return int(bpfsys.map_info(fd).max_entries)


def services(root: str = layout.ROOT) -> tuple[list[ServiceDir], list[str]]:
    """The service directories under ``root``, sorted by service, and a warning for each
    entry that is not one. Raises ``PinError`` when ``root`` has no ``services`` directory
    or cannot be read."""
    base = f"{root}/services"
    try:
        names = sorted(os.listdir(base))
    except OSError as e:
        reason = "nothing pinned there" if e.errno == errno.ENOENT else e.strerror
        raise PinError(f"{escape(base)}: {reason}", errno=e.errno, target=base) from None
    found, problems = [], []
    for name in names:
        path = f"{base}/{name}"
        service = service_of(name)
        if service is None or not os.path.isdir(path) or os.path.islink(path):
            problems.append(f"{escape(path)}: not a sockgate service directory, skipped")
            continue
        found.append(ServiceDir(service, path))
    return sorted(found, key=lambda s: s.service), problems
