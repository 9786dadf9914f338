"""What the eBPF backend needs of the kernel, as one port: bpffs directories and pins, maps,
programs, socket cookies. ``LinuxBpf`` is the real one (``linux.bpffs``, ``linux.bpfsys``,
``linux.sockdiag``); tests/core/test_kernel_ebpf.py drives the backend's recognise, restore
and clean-up logic through a fake, without root."""

from __future__ import annotations

import os
import socket
import time
from typing import Iterator, Protocol, Sequence

from sockgate.ebpf.insn import MapType
from sockgate.ebpf.maps import MapSpec
from sockgate.errors import AdapterError
from sockgate.linux import bpffs, bpfsys, procfs, sockdiag


class BpfOps(Protocol):
    # bpffs
    def ensure_dirs(self, mount: str, relative: str) -> str: ...
    def get(self, path: str) -> int | None: ...
    def pin(self, fd: int, path: str) -> None: ...
    def unpin(self, path: str) -> bool: ...
    def rename(self, src: str, dst: str) -> None: ...
    def listdir(self, path: str) -> list[str]: ...
    def age(self, path: str) -> float | None: ...
    def remove_tree(self, path: str) -> None: ...
    # maps
    def map_create(self, spec: MapSpec) -> int: ...
    def map_shape(self, fd: int) -> MapSpec: ...
    def map_update_many(self, fd: int, keys: Sequence[bytes], values: Sequence[bytes]) -> None: ...
    def map_lookup(self, fd: int, key: bytes, value_size: int) -> bytes | None: ...
    def map_delete(self, fd: int, key: bytes) -> bool: ...
    def map_items(self, fd: int, key_size: int, value_size: int) -> Iterator[tuple[bytes, bytes]]: ...
    # programs
    def prog_load(self, prog_type: int, insns: bytes, name: str) -> int: ...
    def prog_id_name(self, fd: int) -> tuple[int, str]: ...
    def prog_by_id(self, prog_id: int) -> int | None: ...
    def close(self, fd: int) -> None: ...
    # sockets
    def attach(self, sock_fd: int, prog_fd: int, label: str) -> None: ...
    def socket_cookie(self, fd: int) -> int: ...
    def netns_cookie(self, fd: int) -> int | None: ...
    def netns_inode(self, fd: int) -> int | None: ...
    def live_netns(self) -> set[int] | None: ...
    def here(self) -> int | None:
        """The cookie of this process's network namespace."""

    def live_cookies(self) -> set[int] | None:
        """The cookies of this namespace's TCP/UDP sockets; None when they cannot be listed."""


class LinuxBpf:
    def ensure_dirs(self, mount: str, relative: str) -> str:
        return bpffs.ensure_dirs(mount, relative)

    def get(self, path: str) -> int | None:
        return bpffs.get(path)

    def pin(self, fd: int, path: str) -> None:
        bpffs.pin(fd, path)

    def unpin(self, path: str) -> bool:
        return bpffs.unpin(path)

    def rename(self, src: str, dst: str) -> None:
        bpffs.rename(src, dst)

    def listdir(self, path: str) -> list[str]:
        return bpffs.listdir(path)

    def age(self, path: str) -> float | None:
        return bpffs.age(path, time.time())

    def remove_tree(self, path: str) -> None:
        bpffs.remove_tree(path)

    def map_create(self, spec: MapSpec) -> int:
        return bpfsys.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, spec.name)

    def map_shape(self, fd: int) -> MapSpec:
        i = bpfsys.map_info(fd)
        name = i.name.decode(errors="replace") or "sg_unnamed"
        try:
            return MapSpec(name, MapType(i.type), i.key_size, i.value_size, i.max_entries, i.map_flags)
        except ValueError as e:  # a map type or name sockgate never makes: not ours
            raise AdapterError(f"pinned map fd {fd} is not a sockgate map: {e}") from None

    def map_update_many(self, fd: int, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        bpfsys.map_update_many(fd, keys, values)

    def map_lookup(self, fd: int, key: bytes, value_size: int) -> bytes | None:
        return bpfsys.map_lookup(fd, key, value_size)

    def map_delete(self, fd: int, key: bytes) -> bool:
        return bpfsys.map_delete(fd, key)

    def map_items(self, fd: int, key_size: int, value_size: int) -> Iterator[tuple[bytes, bytes]]:
        return bpfsys.map_items(fd, key_size, value_size)

    def prog_load(self, prog_type: int, insns: bytes, name: str) -> int:
        return bpfsys.prog_load(prog_type, insns, name)

    def prog_id_name(self, fd: int) -> tuple[int, str]:
        info = bpfsys.prog_info(fd)
        return int(info.id), info.name.decode(errors="replace")

    def prog_by_id(self, prog_id: int) -> int | None:
        return bpfsys.prog_by_id(prog_id)

    def close(self, fd: int) -> None:
        os.close(fd)

    def attach(self, sock_fd: int, prog_fd: int, label: str) -> None:
        try:
            bpfsys.attach(sock_fd, prog_fd)
        except AdapterError as e:
            raise AdapterError(f"{label}: {str(e).split(': ', 1)[-1]}", errno=e.errno, target=label) from e

    def socket_cookie(self, fd: int) -> int:
        return bpfsys.socket_cookie(fd)

    def netns_cookie(self, fd: int) -> int | None:
        return bpfsys.netns_cookie(fd)

    def netns_inode(self, fd: int) -> int | None:
        return bpfsys.netns_inode(fd)

    def live_netns(self) -> set[int] | None:
        try:
            return procfs.live_netns()
        except AdapterError:
            return None

    def here(self) -> int | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            return bpfsys.netns_cookie(s)

    def live_cookies(self) -> set[int] | None:
        try:
            return sockdiag.inet_cookies()
        except OSError:
            return None
