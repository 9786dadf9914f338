"""A ``BpfOps`` without a kernel: maps, programs, pins and sockets as dictionaries, so the eBPF
backend's load, recognise, restore and clean-up logic run in tests/core without root. An
eBPF attach writes ``BpfFilter(cookie=...)`` into a ``FakeOps`` (tests/support/fakekernel.py),
as the real socket side reads one back."""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from sockgate.ebpf.maps import MapSpec
from sockgate.errors import AdapterError
from sockgate.kernel.reading import BpfFilter
from support.fakekernel import FakeOps


@dataclass(eq=False)
class FakeMap:
    spec: MapSpec
    entries: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(eq=False)
class FakeProg:
    id: int
    name: str
    insns: bytes


def _err(code: int, what: str) -> AdapterError:
    return AdapterError(f"{what}: injected ({errno.errorcode[code]})", errno=code, target=what)


@dataclass
class FakeBpf:
    sockets: FakeOps
    netns: int = 7  # the namespace of every fake socket, and of this process
    live: set[int] | None = None  # cookies sock_diag lists (None: cannot list)
    netns_ino: int = 0  # the nsfs inode of every fake socket's namespace (0: unknown)
    namespaces: set[int] | None = None  # nsfs inodes of live namespaces (None: cannot tell)
    fds: dict[int, Any] = field(default_factory=dict)
    pins: dict[str, Any] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    ages: dict[str, float] = field(default_factory=dict)  # default: just made
    progs: dict[int, FakeProg] = field(default_factory=dict)  # loaded (id → program)
    on_socket: dict[int, FakeProg] = field(default_factory=dict)
    fail_attach: set[int] = field(default_factory=set)  # indexes of attach calls (0-based) that fail
    attaches: list[tuple[int, int]] = field(default_factory=list)  # (socket fd, program id) tried
    refuse_create: int | None = None  # errno every map_create fails with
    refuse_load: int | None = None  # errno every prog_load fails with (EACCES: as the verifier refuses)
    _next: Any = field(default_factory=lambda: itertools.count(100))

    def _fd(self, obj: Any) -> int:
        fd = next(self._next)
        self.fds[fd] = obj
        return fd

    # bpffs
    def ensure_dirs(self, mount: str, relative: str) -> str:
        path = mount
        for part in relative.split("/"):
            path = f"{path}/{part}"
            self.dirs.add(path)
        return path

    def get(self, path: str) -> int | None:
        return self._fd(self.pins[path]) if path in self.pins else None

    def pin(self, fd: int, path: str) -> None:
        if path in self.pins:
            raise _err(errno.EEXIST, f"pin {path}")
        self.pins[path] = self.fds[fd]

    def unpin(self, path: str) -> bool:
        return self.pins.pop(path, None) is not None

    def rename(self, src: str, dst: str) -> None:
        if src in self.pins:
            self.pins[dst] = self.pins.pop(src)
            return
        if any(p.startswith(dst + "/") for p in self.pins):
            raise _err(errno.ENOTEMPTY, f"rename {src}")
        for p in [p for p in self.pins if p.startswith(src + "/")]:
            self.pins[dst + p[len(src):]] = self.pins.pop(p)
        self.dirs.discard(src)
        self.dirs.add(dst)

    def listdir(self, path: str) -> list[str]:
        names = {p[len(path) + 1:].split("/")[0] for p in [*self.pins, *self.dirs] if p.startswith(path + "/")}
        return sorted(names)

    def age(self, path: str) -> float | None:
        return self.ages.get(path, 0.0) if path in self.dirs or path in self.pins else None

    def remove_tree(self, path: str) -> None:
        for p in [p for p in self.pins if p.startswith(path + "/")]:
            del self.pins[p]
        self.dirs.discard(path)

    # maps
    def map_create(self, spec: MapSpec) -> int:
        if self.refuse_create is not None:
            raise _err(self.refuse_create, "create map")
        return self._fd(FakeMap(spec))

    def map_shape(self, fd: int) -> MapSpec:
        spec: MapSpec = self.fds[fd].spec
        return spec

    def map_update_many(self, fd: int, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        m: FakeMap = self.fds[fd]
        for k, v in zip(keys, values):
            if k not in m.entries and len(m.entries) >= m.spec.max_entries:
                raise _err(errno.E2BIG, "update map")
            m.entries[k] = v

    def map_lookup(self, fd: int, key: bytes, value_size: int) -> bytes | None:
        value: bytes | None = self.fds[fd].entries.get(key)
        return value

    def map_delete(self, fd: int, key: bytes) -> bool:
        return self.fds[fd].entries.pop(key, None) is not None

    def map_items(self, fd: int, key_size: int, value_size: int) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted(self.fds[fd].entries.items()))

    # programs
    def prog_load(self, prog_type: int, insns: bytes, name: str) -> int:
        if self.refuse_load is not None:
            raise _err(self.refuse_load, f"load BPF program {name}")
        p = FakeProg(len(self.progs) + 1, name, insns)
        self.progs[p.id] = p
        return self._fd(p)

    def prog_id_name(self, fd: int) -> tuple[int, str]:
        p: FakeProg = self.fds[fd]
        return p.id, p.name

    def prog_by_id(self, prog_id: int) -> int | None:
        return self._fd(self.progs[prog_id]) if prog_id in self.progs else None

    def close(self, fd: int) -> None:
        del self.fds[fd]

    # sockets
    def attach(self, sock_fd: int, prog_fd: int, label: str) -> None:
        p: FakeProg = self.fds[prog_fd]
        self.attaches.append((sock_fd, p.id))
        if len(self.attaches) - 1 in self.fail_attach:
            raise _err(errno.ENOMEM, label)
        self.on_socket[sock_fd] = p
        self.sockets.attached[sock_fd] = BpfFilter(cookie=self.socket_cookie(sock_fd))

    def socket_cookie(self, fd: int) -> int:
        return 1000 + fd

    def netns_cookie(self, fd: int) -> int | None:
        return self.netns

    def netns_inode(self, fd: int) -> int | None:
        return self.netns_ino

    def live_netns(self) -> set[int] | None:
        return self.namespaces

    def here(self) -> int | None:
        return self.netns

    def live_cookies(self) -> set[int] | None:
        return self.live
