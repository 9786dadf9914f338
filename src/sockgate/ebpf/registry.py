"""The registry of attached eBPF guards: socket cookie → what sockgate attached there.

No socket option, sock_diag attribute or bpftool view names the eBPF program a socket filter
runs (docs/ebpf.md, "Identifying an attached eBPF filter"), so whoever attaches records it:
one entry per socket in a pinned hash map (``layout.REGISTRY``), keyed by the socket's cookie
(``SO_COOKIE``: sock_diag reports it for every socket, and it is never reused within a boot,
which is also the life of a bpffs). The value names the program (its id, to confirm it is
still loaded and to put it back), the service and digest ``ls`` shows, the network
namespace the socket lives in (so a clean-up that sees only its own namespace's sockets
leaves the others' entries alone while their namespace exists, and collects them once it is
gone) and when the entry was written. Pure: layouts only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sockgate.ebpf.insn import BPF_F_NO_PREALLOC, MapType
from sockgate.ebpf.maps import MapSpec

KEY = struct.Struct("=Q")  # __u64 cookie
RECORD = struct.Struct("=IIQQ8sB3xI216s")
"""``struct sg_guard { __u32 prog_id; __u32 insns; __u64 netns; __u64 written_ns; __u8
digest[8]; __u8 service_len; __u8 pad[3]; __u32 netns_ino; char service[216]; }`` (256
bytes): ``netns`` is the namespace's cookie (``SO_NETNS_COOKIE``, 0 when unknown),
``written_ns`` CLOCK_MONOTONIC, ``netns_ino`` the namespace's nsfs inode (``SIOCGSKNS``, 0
when unknown; entries written before it existed hold 0 there): the cookie tells this
namespace's entries apart, the inode tells whether another namespace still exists."""

SERVICE_BYTES = 216
CAPACITY = 65536  # guarded sockets per host


def spec(capacity: int = CAPACITY) -> MapSpec:
    return MapSpec("sg_sockets", MapType.HASH, KEY.size, RECORD.size, capacity, BPF_F_NO_PREALLOC)


@dataclass(frozen=True)
class Record:
    prog_id: int
    insns: int
    service: str
    digest: str  # 16 hex digits
    netns: int = 0
    written_ns: int = 0
    netns_ino: int = 0

    def pack(self) -> bytes:
        name = self.service.encode()
        if len(name) > SERVICE_BYTES:
            raise ValueError(f"service name longer than {SERVICE_BYTES} bytes: cannot be recorded for ls")
        return RECORD.pack(self.prog_id, self.insns, self.netns, self.written_ns, bytes.fromhex(self.digest),
                           len(name), self.netns_ino, name)

    @classmethod
    def unpack(cls, raw: bytes) -> Record:
        prog_id, insns, netns, written, digest, n, ino, name = RECORD.unpack(raw[: RECORD.size])
        return cls(prog_id, insns, name[: min(n, SERVICE_BYTES)].decode(errors="replace"), digest.hex(), netns, written,
                   ino)


def key(cookie: int) -> bytes:
    return KEY.pack(cookie)


def cookie(raw: bytes) -> int:
    return int(KEY.unpack(raw[: KEY.size])[0])
