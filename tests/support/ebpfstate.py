"""Kernel-test helpers for the eBPF program with service state: load a compiled program with
its rule tries and its service maps, craft the Ethernet frames ``BPF_PROG_TEST_RUN`` takes,
and read the refusal ring (``BPF_MAP_TYPE_RINGBUF``) by mmap, as kernel/bpf/ringbuf.c lays it
out: a consumer page (read-write) at offset 0, then the producer page and the data area
mapped twice (read-only); each record is an 8-byte header (``u32 len`` with the BUSY and
DISCARD bits, ``u32 pg_off``) and the sample, rounded up to 8 bytes."""

from __future__ import annotations

import ipaddress
import mmap
import os
import struct
import time

from sockgate.ebpf import EbpfProgram
from sockgate.ebpf.layout import EVENT, COUNT_VALUE, Count, Event, SourceKey
from sockgate.ebpf.maps import LpmKey
from sockgate.linux import bpfsys

ALLOW = 0xFFFFFFFF
BUSY, DISCARD = 1 << 31, 1 << 30


class Loaded:
    """``prog`` loaded with fresh maps (or the service maps of ``share``); fds closed by
    ``close``."""

    def __init__(self, prog: EbpfProgram, share: Loaded | None = None) -> None:
        self.prog = prog
        self.maps: dict[str, int] = {}
        self.fd = -1
        try:
            for m in prog.maps:
                s = m.spec
                self.maps[s.name] = bpfsys.map_create(s.map_type, s.key_size, s.value_size, s.max_entries, s.flags, s.name)
                bpfsys.map_update_many(self.maps[s.name], *m.packed())
            for s in prog.service_maps:
                if share is not None and s.name in share.maps:
                    self.maps[s.name] = os.dup(share.maps[s.name])
                else:
                    self.maps[s.name] = bpfsys.map_create(s.map_type, s.key_size, s.value_size, s.max_entries, s.flags, s.name)
            self.fd = bpfsys.prog_load(prog.prog_type, prog.link(self.maps), prog.name)
        except BaseException:
            self.close()
            raise

    def run(self, frame: bytes) -> bool:
        """Does the program keep ``frame``?"""
        return bpfsys.prog_test_run(self.fd, frame)[0] == ALLOW

    def count(self, address: str) -> Count | None:
        raw = bpfsys.map_lookup(self.maps["sg_counts"], SourceKey.of(ipaddress.ip_address(address)).pack(), COUNT_VALUE.size)
        return Count.unpack(raw) if raw is not None else None

    def ban(self, network: str, value: bytes) -> None:
        net = ipaddress.ip_network(network)
        bpfsys.map_update(self.maps[f"sg_bans{net.version}"], LpmKey(net.version, net.prefixlen, int(net.network_address)).pack(), value)

    def close(self) -> None:
        for fd in [*self.maps.values(), self.fd]:
            if fd >= 0:
                os.close(fd)
        self.maps.clear()
        self.fd = -1


def frame(source: str, *, tcp_flags: int | None = 0x02, ihl: int = 5, next_header: int | None = None) -> bytes:
    """An Ethernet frame from ``source``: a TCP segment with ``tcp_flags`` (SYN by default),
    or a UDP datagram when ``tcp_flags`` is None. IPv4 options pad the header to ``ihl``."""
    a = ipaddress.ip_address(source)
    proto = 17 if tcp_flags is None else 6
    l4 = struct.pack("!HHIIBBHHH", 4444, 80, 1, 0, 0x50, tcp_flags, 512, 0, 0) if tcp_flags is not None \
        else struct.pack("!HHHH", 4444, 53, 8, 0)
    if a.version == 4:
        opts = bytes(4 * (ihl - 5))
        ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(opts) + len(l4), 0, 0, 64, proto, 0, a.packed,
                         bytes([127, 0, 0, 1])) + opts
        return bytes(12) + b"\x08\x00" + ip + l4
    nh = proto if next_header is None else next_header
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(l4), nh, 64, a.packed, ipaddress.IPv6Address("::1").packed)
    return bytes(12) + b"\x86\xdd" + ip6 + l4


def now_ns() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns


class Ring:
    """The consumer side of a ring buffer map."""

    def __init__(self, fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.size = size
        self.cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.prod = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)

    def events(self) -> list[Event]:
        page = mmap.PAGESIZE
        out = []
        (cons,) = struct.unpack_from("=Q", self.cons, 0)
        (prod,) = struct.unpack_from("=Q", self.prod, 0)
        for _ in range(self.size // 8):
            if cons >= prod:
                break
            at = page + (cons & (self.size - 1))
            (length,) = struct.unpack_from("=I", self.prod, at)
            if length & BUSY:
                break
            if not length & DISCARD:
                out.append(Event.unpack(bytes(self.prod[at + 8 : at + 8 + EVENT.size])))
            cons += (length & ~(BUSY | DISCARD)) + 8 + 7 & ~7
        struct.pack_into("=Q", self.cons, 0, cons)
        return out

    def close(self) -> None:
        self.cons.close()
        self.prod.close()
