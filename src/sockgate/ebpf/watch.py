"""How the agent learns of a new socket: two cgroup programs that report binds and listens.

Three programs hang on a cgroup (the cgroup2 root by default, so every process on the host and
in every network namespace is seen) and write one 64-byte record per event to one ring buffer
(``BPF_MAP_TYPE_RINGBUF``), which the agent polls like any descriptor:

* ``sg_wbind4`` / ``sg_wbind6`` — ``BPF_PROG_TYPE_CGROUP_SOCK`` loaded with the expected attach
  type ``BPF_CGROUP_INET4_POST_BIND`` / ``INET6_POST_BIND`` (which lets them read
  ``src_port``): a UDP socket's explicit ``bind()``, after the port is taken. A TCP bind is not
  reported here: TCP is reported when it listens. To keep a bind storm off the agent they
  report only binds the agent cares about: the port is in ``sg_wports`` (hash
  ``{u8 proto, u8 pad, u16 port}`` → ``u8``), or the process's ``comm`` is in ``sg_wcomms``
  (hash ``char[16]`` → ``u8``), or ``sg_wconf[0] == 1`` (report all; tests, ``--watch-all``).
  They always return 1: they never refuse a bind.
* ``sg_wlisten`` — ``BPF_PROG_TYPE_SOCK_OPS`` at ``BPF_CGROUP_SOCK_OPS``, acting only on
  ``BPF_SOCK_OPS_TCP_LISTEN_CB`` (every transition to LISTEN, including a ``listen()``
  without ``bind()``): every listen is reported (listens are rare, and a daemon
  enrolled by name needs them all).

Why cgroup hooks and not a poll of sock_diag, a tracepoint or the proc connector: AGENT_PLAN
§0 and docs/agent.md ("How sockets are noticed") — they see every namespace, cost nothing while
idle, and report within microseconds. Why hand-written: sockgate loads no libbpf or clang at
run time; the programs are short, built with ``ebpf/asm.Assembler``.

The record, ``struct sg_watch`` (host byte order, 64 bytes, ``WATCH_EVENT``)::

    u64 ts_ns        bpf_ktime_get_ns() (CLOCK_MONOTONIC)
    u64 cookie       bpf_get_socket_cookie(): the socket's identity for its life
    u64 netns_cookie bpf_get_netns_cookie()
    u64 pid_tgid     bpf_get_current_pid_tgid(): tgid << 32 | tid (host pid namespace); 0 unknown
    u32 family       AF_INET / AF_INET6
    u32 type_proto   sock type << 16 | IP protocol
    u32 port         the local port, host order
    u32 hook         BIND4 / BIND6 / LISTEN / RELEASE
    char comm[16]    bpf_get_current_comm(), NUL-padded

A record whose ``bpf_ringbuf_output`` fails (ring full) adds one to ``sg_wlost[0]`` (an array,
updated with an atomic add, so the reader needs no per-CPU sum); the reader compares it after
each drain and asks for a full rescan when it grew.

Pure: instructions and packed keys; loading and attaching are linux/cgroupbpf's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable

from sockgate.ebpf.asm import Assembler
from sockgate.ebpf.disasm import listing
from sockgate.ebpf.insn import (
    BPF_ADD,
    BPF_ATOMIC,
    BPF_B,
    BPF_DW,
    BPF_H,
    BPF_JEQ,
    BPF_JNE,
    BPF_LSH,
    BPF_OR,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_3,
    BPF_REG_4,
    BPF_REG_6,
    BPF_REG_7,
    BPF_REG_FP,
    BPF_STX,
    BPF_W,
    Helper,
    Insn,
    MapType,
    alu64,
    call,
    exit_,
    ld_map_fd,
    ldx,
    mov64,
    st,
    stx,
)
from sockgate.ebpf.maps import MapSpec

WATCH_EVENT = struct.Struct("=QQQQIIII16s")
PORT_KEY = struct.Struct("=BBH")  # {u8 proto, u8 pad, u16 port (host order)}
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")
COMM_SIZE = 16  # TASK_COMM_LEN

AF_INET, AF_INET6 = 2, 10  # <linux/socket.h>
SOCK_STREAM, SOCK_DGRAM = 1, 2
IPPROTO_TCP, IPPROTO_UDP = 6, 17
PROTO_NUMBERS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}
FAMILIES = {AF_INET: 4, AF_INET6: 6}

BPF_SOCK_OPS_TCP_LISTEN_CB = 11  # <linux/bpf.h> enum (tcp_call_bpf in inet_csk_listen_start)

# struct bpf_sock (<linux/bpf.h>): the fields a CGROUP_SOCK program reads
SOCK_FAMILY, SOCK_TYPE, SOCK_PROTOCOL, SOCK_SRC_PORT = 4, 8, 12, 44
# struct bpf_sock_ops
OPS_OP, OPS_FAMILY, OPS_LOCAL_PORT = 0, 20, 68

RING_BYTES = 256 * 1024  # ~4,000 records: a power of two and a multiple of the page size
PORTS_MAX = 4096
COMMS_MAX = 1024
CONF_ALL = 1  # sg_wconf[0]: report every UDP bind


class Hook(IntEnum):
    BIND4 = 4
    BIND6 = 6
    RELEASE = 98
    LISTEN = 99


_SOCK_TYPE = {"tcp": SOCK_STREAM, "udp": SOCK_DGRAM}
_HOOK_PROTO = {Hook.BIND4: "udp", Hook.BIND6: "udp", Hook.LISTEN: "tcp", Hook.RELEASE: ""}

# -- maps --------------------------------------------------------------------------------------

RING = MapSpec("sg_wring", MapType.RINGBUF, 0, 0, RING_BYTES)
PORTS = MapSpec("sg_wports", MapType.HASH, PORT_KEY.size, 1, PORTS_MAX)
COMMS = MapSpec("sg_wcomms", MapType.HASH, COMM_SIZE, 1, COMMS_MAX)
CONF = MapSpec("sg_wconf", MapType.ARRAY, U32.size, U32.size, 1)
LOST = MapSpec("sg_wlost", MapType.ARRAY, U32.size, U64.size, 1)
TRACKED_MAX = 65536
TRACKED = MapSpec("sg_wtracked", MapType.HASH, U64.size, U32.size, TRACKED_MAX)  # cookie → port
MAPS = {"ring": RING, "ports": PORTS, "comms": COMMS, "conf": CONF, "lost": LOST, "tracked": TRACKED}  # pin name → spec
PRESENT = b"\x01"  # the value of a filter-map entry
ZERO_KEY = U32.pack(0)


def ring_spec(size: int = RING_BYTES) -> MapSpec:
    return MapSpec(RING.name, MapType.RINGBUF, 0, 0, size)


def tracked_entry(cookie: int, port: int) -> tuple[bytes, bytes]:
    """The ``sg_wtracked`` key and value of a socket whose close should be reported."""
    if not 0 < cookie < 1 << 64 or not 0 < port <= 0xFFFF:
        raise ValueError(f"not a trackable socket: cookie {cookie}, port {port}")
    return U64.pack(cookie), U32.pack(port)


def port_key(proto: str, port: int) -> bytes:
    if proto not in PROTO_NUMBERS or not 0 < port <= 0xFFFF:
        raise ValueError(f"not a watchable port: {proto}/{port}")
    return PORT_KEY.pack(PROTO_NUMBERS[proto], 0, port)


def comm_key(name: str) -> bytes:
    """The ``comm`` as the kernel writes it: at most 15 bytes, NUL-padded to 16."""
    raw = name.encode(errors="surrogateescape")[: COMM_SIZE - 1]
    if not raw or b"\0" in raw:
        raise ValueError(f"not a process name: {name!r}")
    return raw.ljust(COMM_SIZE, b"\0")


@dataclass(frozen=True)
class WatchSet:
    """What the bind programs report: these ports, these process names, or everything."""

    ports: frozenset[tuple[str, int]] = frozenset()
    comms: frozenset[str] = frozenset()
    all: bool = False

    @classmethod
    def of(cls, ports: Iterable[tuple[str, int]], comms: Iterable[str], all: bool = False) -> WatchSet:
        return cls(frozenset(ports), frozenset(comms), all)

    def keys(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """The packed keys of ``sg_wports`` and ``sg_wcomms`` (raises ValueError on a bad one)."""
        return frozenset(port_key(p, n) for p, n in self.ports), frozenset(comm_key(c) for c in self.comms)


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchRecord:
    hook: Hook
    ts_ns: int
    cookie: int
    netns_cookie: int
    pid: int  # thread-group id (what ps calls the pid); 0 when the program could not tell
    tid: int
    family: int  # 4 or 6
    proto: str  # "tcp" or "udp"
    port: int
    comm: str


def decode(raw: bytes) -> WatchRecord | None:
    """A ring record, or None when it is not one: a ring is memory other privileged processes
    can write, and on weakly ordered machines a record can be read torn, so any bytes arrive."""
    if len(raw) != WATCH_EVENT.size:
        return None
    ts, cookie, netns, pid_tgid, family, type_proto, port, hook, comm = WATCH_EVENT.unpack(raw)
    if hook not in Hook._value2member_map_ or family not in FAMILIES or not 0 < port <= 0xFFFF:
        return None
    proto = PROTO_NAMES.get(type_proto & 0xFFFF)
    if proto is None or type_proto >> 16 != _SOCK_TYPE[proto] or hook != Hook.RELEASE and proto != _HOOK_PROTO[Hook(hook)]:
        return None
    name = comm.split(b"\0", 1)[0].decode(errors="replace")
    return WatchRecord(Hook(hook), ts, cookie, netns, pid_tgid >> 32, pid_tgid & 0xFFFFFFFF, FAMILIES[family], proto,
                       port, name)


# -- programs ------------------------------------------------------------------------------------

R0, R1, R2, R3, R4, R6, R7, FP = (BPF_REG_0, BPF_REG_1, BPF_REG_2, BPF_REG_3, BPF_REG_4, BPF_REG_6, BPF_REG_7,
                                  BPF_REG_FP)
REC = -WATCH_EVENT.size  # the record on the stack: fp-64 .. fp-1
COMM_AT = REC + 48
PORT_AT = REC - 8  # the port key, fp-72
ZERO_AT = REC - 16  # a u32 0, the key of sg_wconf and sg_wlost, fp-80
COOKIE_AT = REC - 8  # the sg_wtracked key (the release program has no port key), fp-72


def bind_program(ring_fd: int, ports_fd: int, comms_fd: int, conf_fd: int, lost_fd: int, family: int) -> tuple[Insn, ...]:
    """``sg_wbind4``/``sg_wbind6``: report a watched UDP bind; always return 1."""
    return _bind(ring_fd, ports_fd, comms_fd, conf_fd, lost_fd, family).program()


def _bind(ring_fd: int, ports_fd: int, comms_fd: int, conf_fd: int, lost_fd: int, family: int) -> Assembler:
    hook = {4: Hook.BIND4, 6: Hook.BIND6}[family]
    a = Assembler()
    a.emit(mov64(R6, R1), ldx(BPF_W, R0, R6, SOCK_PROTOCOL))
    a.jump(BPF_JNE, R0, "out", imm=IPPROTO_UDP)
    a.emit(ldx(BPF_W, R7, R6, SOCK_SRC_PORT))
    a.emit(mov64(R1, FP), alu64(BPF_ADD, R1, imm=COMM_AT), mov64(R2, imm=COMM_SIZE), call(Helper.get_current_comm))
    a.emit(st(BPF_W, FP, ZERO_AT, 0))
    a.emit(st(BPF_B, FP, PORT_AT, IPPROTO_UDP), st(BPF_B, FP, PORT_AT + 1, 0), stx(BPF_H, FP, PORT_AT + 2, R7))
    _lookup(a, ports_fd, PORT_AT)
    a.jump(BPF_JNE, R0, "emit", imm=0)
    _lookup(a, comms_fd, COMM_AT)
    a.jump(BPF_JNE, R0, "emit", imm=0)
    _lookup(a, conf_fd, ZERO_AT)
    a.jump(BPF_JEQ, R0, "out", imm=0)
    a.emit(ldx(BPF_W, R0, R0, 0))
    a.jump(BPF_JNE, R0, "out", imm=CONF_ALL)
    a.label("emit")
    _head(a)
    a.emit(call(Helper.get_current_pid_tgid), stx(BPF_DW, FP, REC + 24, R0))
    _sock_fields(a)
    a.emit(stx(BPF_W, FP, REC + 40, R7), st(BPF_W, FP, REC + 44, int(hook)))
    _output(a, ring_fd, lost_fd)
    return a


def listen_program(ring_fd: int, lost_fd: int, with_pid: bool = True) -> tuple[Insn, ...]:
    """``sg_wlisten``: report every TCP socket entering LISTEN. ``with_pid`` False leaves pid
    and comm empty, for kernels whose verifier refuses those helpers in sock_ops programs."""
    return _listen(ring_fd, lost_fd, with_pid).program()


def _listen(ring_fd: int, lost_fd: int, with_pid: bool) -> Assembler:
    a = Assembler()
    a.emit(mov64(R6, R1), ldx(BPF_W, R0, R6, OPS_OP))
    a.jump(BPF_JNE, R0, "out", imm=BPF_SOCK_OPS_TCP_LISTEN_CB)
    a.emit(st(BPF_W, FP, ZERO_AT, 0))
    _head(a)
    if with_pid:
        a.emit(call(Helper.get_current_pid_tgid), stx(BPF_DW, FP, REC + 24, R0))
        a.emit(mov64(R1, FP), alu64(BPF_ADD, R1, imm=COMM_AT), mov64(R2, imm=COMM_SIZE), call(Helper.get_current_comm))
    else:
        a.emit(st(BPF_DW, FP, REC + 24, 0), st(BPF_DW, FP, COMM_AT, 0), st(BPF_DW, FP, COMM_AT + 8, 0))
    a.emit(ldx(BPF_W, R0, R6, OPS_FAMILY), stx(BPF_W, FP, REC + 32, R0))
    a.emit(st(BPF_W, FP, REC + 36, SOCK_STREAM << 16 | IPPROTO_TCP))
    a.emit(ldx(BPF_W, R0, R6, OPS_LOCAL_PORT), stx(BPF_W, FP, REC + 40, R0), st(BPF_W, FP, REC + 44, int(Hook.LISTEN)))
    _output(a, ring_fd, lost_fd)
    return a


def release_program(ring_fd: int, tracked_fd: int, lost_fd: int) -> tuple[Insn, ...]:
    """``sg_wrelease``: report (once) the close of a socket whose cookie is in ``sg_wtracked``."""
    return _release(ring_fd, tracked_fd, lost_fd).program()


def _release(ring_fd: int, tracked_fd: int, lost_fd: int) -> Assembler:
    a = Assembler()
    a.emit(mov64(R6, R1), st(BPF_W, FP, ZERO_AT, 0))
    a.emit(mov64(R1, R6), call(Helper.get_socket_cookie), stx(BPF_DW, FP, COOKIE_AT, R0), stx(BPF_DW, FP, REC + 8, R0))
    _lookup(a, tracked_fd, COOKIE_AT)
    a.jump(BPF_JEQ, R0, "out", imm=0)
    a.emit(ldx(BPF_W, R7, R0, 0))
    a.emit(*ld_map_fd(R1, tracked_fd), mov64(R2, FP), alu64(BPF_ADD, R2, imm=COOKIE_AT), call(Helper.map_delete_elem))
    a.emit(call(Helper.ktime_get_ns), stx(BPF_DW, FP, REC, R0))
    a.emit(mov64(R1, R6), call(Helper.get_netns_cookie), stx(BPF_DW, FP, REC + 16, R0))
    a.emit(call(Helper.get_current_pid_tgid), stx(BPF_DW, FP, REC + 24, R0))
    a.emit(mov64(R1, FP), alu64(BPF_ADD, R1, imm=COMM_AT), mov64(R2, imm=COMM_SIZE), call(Helper.get_current_comm))
    _sock_fields(a)
    a.emit(stx(BPF_W, FP, REC + 40, R7), st(BPF_W, FP, REC + 44, int(Hook.RELEASE)))
    _output(a, ring_fd, lost_fd)
    return a


def listings(fds: tuple[int, int, int, int, int] = (3, 4, 5, 6, 7)) -> dict[str, str]:
    """Readable listings of the programs (``sockgate.ebpf.disasm`` notation), for docs and tests;
    ``fds`` stand for the ring, ports, comms, conf and lost maps (the release listing shows the
    comms fd for sg_wtracked)."""
    ring, ports, comms, conf, lost = fds
    out = {}
    programs = (("sg_wbind4", _bind(ring, ports, comms, conf, lost, 4)), ("sg_wlisten", _listen(ring, lost, True)),
                ("sg_wrelease", _release(ring, comms, lost)))
    for name, asm in programs:
        done = asm.assemble()
        out[name] = listing(done.insns, done.labels)
    return out


def _sock_fields(a: Assembler) -> None:
    """family and type << 16 | protocol from ``struct bpf_sock`` (R6) into the record."""
    a.emit(ldx(BPF_W, R0, R6, SOCK_FAMILY), stx(BPF_W, FP, REC + 32, R0))
    a.emit(ldx(BPF_W, R0, R6, SOCK_TYPE), alu64(BPF_LSH, R0, imm=16), ldx(BPF_W, R1, R6, SOCK_PROTOCOL),
           alu64(BPF_OR, R0, R1), stx(BPF_W, FP, REC + 36, R0))


def _head(a: Assembler) -> None:
    """ts, cookie and netns cookie into the record (R6 holds the context)."""
    a.emit(call(Helper.ktime_get_ns), stx(BPF_DW, FP, REC, R0))
    a.emit(mov64(R1, R6), call(Helper.get_socket_cookie), stx(BPF_DW, FP, REC + 8, R0))
    a.emit(mov64(R1, R6), call(Helper.get_netns_cookie), stx(BPF_DW, FP, REC + 16, R0))


def _lookup(a: Assembler, map_fd: int, key_at: int) -> None:
    a.emit(*ld_map_fd(R1, map_fd), mov64(R2, FP), alu64(BPF_ADD, R2, imm=key_at), call(Helper.map_lookup_elem))


def _output(a: Assembler, ring_fd: int, lost_fd: int) -> None:
    """bpf_ringbuf_output(ring, record, 64, 0); on failure sg_wlost[0] += 1; then return 1."""
    a.emit(*ld_map_fd(R1, ring_fd), mov64(R2, FP), alu64(BPF_ADD, R2, imm=REC), mov64(R3, imm=WATCH_EVENT.size),
           mov64(R4, imm=0), call(Helper.ringbuf_output))
    a.jump(BPF_JEQ, R0, "out", imm=0)
    _lookup(a, lost_fd, ZERO_AT)
    a.jump(BPF_JEQ, R0, "out", imm=0)
    a.emit(mov64(R1, imm=1), Insn(BPF_STX | BPF_DW | BPF_ATOMIC, R0, R1, 0, BPF_ADD))
    a.label("out")
    a.emit(mov64(R0, imm=1), exit_())
