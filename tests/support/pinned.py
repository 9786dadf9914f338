"""A private bpffs and a service's maps pinned in it as the eBPF loader pins them
(ebpf/layout.py), for the readers' kernel tests: ``sockgate refused`` and the refusal log."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import subprocess
import tempfile
from typing import Iterator

from sockgate.ebpf import layout
from sockgate.ebpf.maps import LpmKey, MapSpec
from sockgate.kernel.pins import map_name
from sockgate.linux import bpfsys

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def mounted(path: str) -> bool:
    """Whether a filesystem is mounted on ``path``."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@contextlib.contextmanager
def private_bpffs() -> Iterator[str]:
    """A bpf filesystem mounted on a fresh temporary directory, unmounted (with whatever was
    pinned in it) and removed afterwards, even on failure."""
    root = tempfile.mkdtemp(prefix="sg-bpffs-")
    try:
        subprocess.run(["mount", "-t", "bpf", "bpf", root], check=True, capture_output=True)
        try:
            yield root
        finally:
            if _libc.umount2(root.encode(), MNT_DETACH) != 0:
                raise OSError(ctypes.get_errno(), f"umount {root}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def create(spec: MapSpec) -> int:
    return bpfsys.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, spec.name)


def pin_map(directory: str, spec: MapSpec) -> int:
    """Create ``spec``'s map, pin it in ``directory`` under its layout name; returns its fd."""
    os.makedirs(directory, exist_ok=True)
    fd = create(spec)
    bpfsys.pin(fd, f"{directory}/{map_name(spec)}")
    return fd


class PinnedService:
    """A service's counters, ban tries and event ring, pinned under ``root``; fds closed by
    ``close`` (the pins keep the maps)."""

    def __init__(self, root: str, service: str, ring_bytes: int = 4096) -> None:
        self.dir = layout.service_dir(service, root)
        self.counts = pin_map(self.dir, layout.counts_spec(1024))
        self.bans = {f: pin_map(self.dir, layout.bans_spec(f, 64)) for f in (4, 6)}
        self.events = pin_map(self.dir, layout.events_spec(ring_bytes))

    def count(self, source: str, c: layout.Count) -> None:
        bpfsys.map_update(self.counts, layout.SourceKey.of(ipaddress.ip_address(source)).pack(), c.pack())

    def ban(self, network: str, b: layout.Ban) -> None:
        net = ipaddress.ip_network(network)
        bpfsys.map_update(self.bans[net.version], LpmKey(net.version, net.prefixlen, int(net.network_address)).pack(), b.pack())

    def close(self) -> None:
        for fd in (self.counts, *self.bans.values(), self.events):
            os.close(fd)
