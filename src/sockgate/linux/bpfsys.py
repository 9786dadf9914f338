"""bpf(2) and SO_ATTACH_BPF: create maps, load programs, pin them, attach them to sockets.

Thin adapter: it takes sizes, flags, encoded programs and packed keys/values (sockgate.ebpf
makes them) and returns file descriptors and bytes; it knows no policy. The ``union bpf_attr``
layouts below follow <linux/bpf.h>; the kernel accepts an attr shorter than its own union
(the rest reads as zero), so each command passes only the fields it uses.

A program the verifier refuses raises ``VerifierError`` carrying the end of the verifier's
log: the load is retried once with a log buffer, so a successful load pays nothing for it.
Since Linux 6.4 the log is kept in rotating mode, so a log longer than the buffer keeps its
end — the part that says why.

Identifying an eBPF program on a socket: ``SO_GET_FILTER`` copies back only a *classic*
program (``sk_get_filter`` in net/core/filter.c returns EACCES when the attached program has
no ``orig_prog``, i.e. was attached with SO_ATTACH_BPF), and no socket option, sock_diag
attribute or ``bpftool net`` listing names the socket filter's program id. ``filter_kind``
tells "none", "cbpf" and "ebpf" apart from that answer; which eBPF program it is must be
recorded by whoever attaches it (see docs/ebpf.md).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import socket
from typing import Iterator, Sequence, TypeVar

from sockgate.errors import AdapterError
from sockgate.linux._errors import translated
from sockgate.linux.fd import Sockish, fileno
from sockgate.linux.filter import SO_GET_FILTER, _setsockopt
from sockgate.linux.filter import detach as detach  # SO_DETACH_BPF is SO_DETACH_FILTER: one detach for both

_S = TypeVar("_S", bound=ctypes.Structure)

# <linux/bpf.h> enum bpf_cmd
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24  # Linux 5.6
BPF_MAP_UPDATE_BATCH = 26  # Linux 5.6

BPF_ANY = 0  # <linux/bpf.h> map update flags
BPF_NOEXIST = 1
BPF_F_RDONLY = 1 << 3  # <linux/bpf.h> BPF_OBJ_GET file_flags: a read-only map fd
BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8

SO_ATTACH_BPF = 50  # <asm-generic/socket.h>
SO_COOKIE = 57  # Linux 4.12: a socket's u64 id, never reused within a boot (sock_gen_cookie)
SO_NETNS_COOKIE = 71  # Linux 5.14: the cookie of the socket's network namespace
SIOCGSKNS = 0x894C  # <linux/sockios.h>: an fd of the socket's network namespace

# bpf(2) syscall numbers (arch/*/entry/syscalls, include/uapi/asm-generic/unistd.h)
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280, "i686": 357}
SYS_bpf = _SYS_BPF.get(platform.machine())

ENOTSUPP = 524  # <linux/errno.h>: the kernel-internal "operation not supported" bpf(2) leaks

LOG_SIZE = 1 << 20  # verifier log buffer for the retry after a refusal
LOG_LINES = 12  # how many of its last lines the error shows

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class VerifierError(AdapterError):
    """The kernel's verifier refused a program; ``log`` is the end of its log."""

    def __init__(self, message: str, log: str, errno: int | None = None, target: str | None = None):
        self.log = log
        super().__init__(message, errno=errno, target=target)


# --------------------------------------------------------------------- union bpf_attr parts


class _MapCreate(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


class _MapElem(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _MapBatch(ctypes.Structure):
    """``union bpf_attr``'s ``struct { /* struct used by BPF_MAP_*_BATCH commands */ } batch``
    (include/uapi/linux/bpf.h, Linux 5.6): ``in_batch``, ``out_batch``, ``keys``, ``values``,
    ``count`` (in: elements given; out: elements done), ``map_fd``, ``elem_flags``, ``flags``.
    LPM tries take ``BPF_MAP_UPDATE_BATCH`` through ``generic_map_update_batch``
    (kernel/bpf/lpm_trie.c ``trie_map_ops``): one system call for a whole trie."""

    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64), ("keys", ctypes.c_uint64),
                ("values", ctypes.c_uint64), ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ProgLoad(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32)]


class _TestRun(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32)]


class _Obj(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


class _Info(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _GetId(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class MapInfo(ctypes.Structure):
    """The head of ``struct bpf_map_info`` (<linux/bpf.h>): what a pinned map was made as."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


class ProgInfo(ctypes.Structure):
    """The head of ``struct bpf_prog_info`` (<linux/bpf.h>): enough to name a program."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * BPF_TAG_SIZE),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr); raises OSError (errno kept)."""
    if SYS_bpf is None:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown for {platform.machine()}")
    r = _libc.syscall(SYS_bpf, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


# ---------------------------------------------------------------------------------- maps


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0, name: str = "") -> int:
    """A new map; returns its fd (the caller closes it)."""
    attr = _MapCreate(map_type, key_size, value_size, max_entries, flags, 0, 0, name.encode()[: BPF_OBJ_NAME_LEN - 1])
    with translated(f"create BPF map {name or map_type} ({max_entries} entries)"):
        return _bpf(BPF_MAP_CREATE, attr)


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    with translated(f"update BPF map fd {fd}"):
        _bpf(BPF_MAP_UPDATE_ELEM, _MapElem(fd, 0, _addr(k), _addr(v), flags))


def map_update_many(fd: int, keys: Sequence[bytes], values: Sequence[bytes], flags: int = BPF_ANY) -> None:
    """Put every ``keys[i] → values[i]``: one BPF_MAP_UPDATE_BATCH (Linux 5.6) when the map
    supports it, else one update per entry. Not atomic: on failure some entries may be in."""
    if len(keys) != len(values):
        raise ValueError("as many values as keys")
    if not keys:
        return
    kb, vb = ctypes.create_string_buffer(b"".join(keys)), ctypes.create_string_buffer(b"".join(values))
    attr = _MapBatch(0, 0, _addr(kb), _addr(vb), len(keys), fd, flags, 0)
    try:
        _bpf(BPF_MAP_UPDATE_BATCH, attr)
        return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, ENOTSUPP):
            with translated(f"update {len(keys)} entries of BPF map fd {fd}"):
                raise
    for k, v in zip(keys, values):
        map_update(fd, k, v, flags)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under ``key`` (for an LPM trie: under the longest matching prefix)."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    found = _elem(BPF_MAP_LOOKUP_ELEM, _MapElem(fd, 0, _addr(k), _addr(v), 0), f"look up in BPF map fd {fd}")
    return v.raw if found else None


def map_delete(fd: int, key: bytes) -> bool:
    """Remove ``key``; False when it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    return _elem(BPF_MAP_DELETE_ELEM, _MapElem(fd, 0, _addr(k), 0, 0), f"delete from BPF map fd {fd}")


def map_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (the first key for None), or None past the last
    (BPF_MAP_GET_NEXT_KEY; a key deleted meanwhile restarts at the first, as in the kernel)."""
    k = ctypes.create_string_buffer(key, len(key)) if key is not None else None
    nk = ctypes.create_string_buffer(key_size)
    found = _elem(BPF_MAP_GET_NEXT_KEY, _MapElem(fd, 0, _addr(k), _addr(nk), 0), f"iterate BPF map fd {fd}")
    return nk.raw if found else None


def _elem(cmd: int, attr: _MapElem, what: str) -> bool:
    """One element command; False where the kernel answers ENOENT (no such key, or past the
    last), any other failure an AdapterError saying ``what`` failed."""
    try:
        _bpf(cmd, attr)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        with translated(what):
            raise
    return True


def map_items(fd: int, key_size: int, value_size: int, limit: int = 1 << 24) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a hash-like map, at most ``limit`` (a bound on a map that others
    fill while it is read): BPF_MAP_LOOKUP_BATCH (Linux 5.6; hash and LRU maps) a chunk at a
    time, else GET_NEXT_KEY and a lookup per entry (tries), where an entry deleted between
    the two calls is skipped."""
    try:
        yield from _items_batched(fd, key_size, value_size, limit)
        return
    except _NoBatch:
        pass
    seen: set[bytes] = set()  # a walk restarted by a concurrent delete yields each key once
    key: bytes | None = None
    for _ in range(limit):
        key = map_next_key(fd, key, key_size)
        if key is None:
            return
        if key in seen:
            continue
        seen.add(key)
        value = map_lookup(fd, key, value_size)
        if value is not None:
            yield key, value


class _NoBatch(Exception):
    """The map type has no batch lookup."""


BATCH = 4096


def _items_batched(fd: int, key_size: int, value_size: int, limit: int) -> Iterator[tuple[bytes, bytes]]:
    keys, values = ctypes.create_string_buffer(key_size * BATCH), ctypes.create_string_buffer(value_size * BATCH)
    tokens = [ctypes.create_string_buffer(max(key_size, 8)) for _ in range(2)]  # in_batch, out_batch
    first, done, seen = True, False, 0
    while not done and seen < limit:
        attr = _MapBatch(0 if first else _addr(tokens[0]), _addr(tokens[1]), _addr(keys), _addr(values), BATCH, fd, 0, 0)
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the last chunk (attr.count may still be > 0)
                if first and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, ENOTSUPP):
                    raise _NoBatch() from None
                with translated(f"read BPF map fd {fd}"):
                    raise
            done = True
        k, v = keys.raw, values.raw
        for i in range(min(attr.count, limit - seen)):
            yield k[i * key_size:(i + 1) * key_size], v[i * value_size:(i + 1) * value_size]
        seen += attr.count
        ctypes.memmove(tokens[0], tokens[1], len(tokens[0]))
        first = False


def _obj_info(fd: int, info: _S, kind: str) -> _S:
    """``info`` (the struct of a map's, a program's or a link's info) filled for ``fd`` by
    BPF_OBJ_GET_INFO_BY_FD."""
    with translated(f"read BPF {kind} info of fd {fd}"):
        _bpf(BPF_OBJ_GET_INFO_BY_FD, _Info(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return info


def map_info(fd: int) -> MapInfo:
    """The type, sizes, flags and name of a map (BPF_OBJ_GET_INFO_BY_FD)."""
    return _obj_info(fd, MapInfo(), "map")


def object_kind(fd: int) -> str:
    """``"map"``, ``"prog"``, ``"link"`` … for a bpf(2) fd, from its anon inode's name
    (``anon_inode:bpf-map``), else ``"other"``."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "other"
    return link.removeprefix("anon_inode:bpf-") if link.startswith("anon_inode:bpf-") else "other"


# ------------------------------------------------------------------------------ programs


def prog_load(prog_type: int, insns: bytes, name: str = "", license: str = "GPL", expected_attach_type: int = 0) -> int:
    """Load (verify) a program; returns its fd. A refusal raises ``VerifierError``.
    ``expected_attach_type`` (a cgroup program's hook) lets the verifier allow what that hook
    may read, and the kernel then attaches the program there only."""
    if not insns or len(insns) % 8:
        raise AdapterError("an eBPF program is a non-empty array of 8-byte instructions")
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    what = f"load BPF program {name or '(unnamed)'} ({len(insns) // 8} instructions)"

    def attr(log: ctypes.Array[ctypes.c_char] | None) -> _ProgLoad:
        return _ProgLoad(prog_type, len(insns) // 8, _addr(code), _addr(lic), 1 if log is not None else 0,
                         len(log) if log is not None else 0, _addr(log), 0, 0, name.encode()[: BPF_OBJ_NAME_LEN - 1],
                         0, expected_attach_type)

    try:
        return _bpf(BPF_PROG_LOAD, attr(None))
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EINVAL):
            with translated(what):
                raise
    log = ctypes.create_string_buffer(LOG_SIZE)
    try:
        return _bpf(BPF_PROG_LOAD, attr(log))  # (a refusal that does not repeat: take the fd)
    except OSError as e:
        text = log.value.decode(errors="replace")
        tail = [ln for ln in text.splitlines() if ln.strip()][-LOG_LINES:]
        raise VerifierError(f"{what}: refused by the kernel's verifier ({os.strerror(e.errno or 0)}):\n  "
                            + "\n  ".join(tail or ["(no log)"]), "\n".join(tail), errno=e.errno, target=what) from None


def prog_test_run(fd: int, frame: bytes, repeat: int = 1) -> tuple[int, int]:
    """Run a loaded program on ``frame`` (an Ethernet frame: the kernel builds an skb whose
    network header follows the 14-byte Ethernet header, net/bpf/test_run.c) ``repeat`` times;
    returns (the program's return value, mean nanoseconds per run). Nothing is attached."""
    data = ctypes.create_string_buffer(frame, len(frame))
    attr = _TestRun(fd, 0, len(frame), 0, _addr(data), 0, repeat, 0)
    with translated(f"test-run BPF program fd {fd}"):
        _bpf(BPF_PROG_TEST_RUN, attr)
    return attr.retval, attr.duration


def prog_info(fd: int) -> ProgInfo:
    """The id, tag, name and type of a loaded program."""
    return _obj_info(fd, ProgInfo(), "program")


def prog_by_id(prog_id: int) -> int | None:
    """A new fd for the loaded program ``prog_id`` (BPF_PROG_GET_FD_BY_ID, CAP_SYS_ADMIN);
    None when no such program is loaded any more."""
    try:
        return _bpf(BPF_PROG_GET_FD_BY_ID, _GetId(prog_id, 0, 0))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        with translated(f"open BPF program id {prog_id}"):
            raise


# ---------------------------------------------------------------------------- bpffs pins


def pin(fd: int, path: str) -> None:
    """Pin a map or program at ``path`` on a bpf filesystem: it lives until unlinked."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    with translated(f"pin BPF object fd {fd} at {path}"):
        _bpf(BPF_OBJ_PIN, _Obj(_addr(p), fd, 0))


def prog_map_ids(fd: int) -> list[int]:
    """The ids of the maps a loaded program uses."""
    n = int(prog_info(fd).nr_map_ids)
    ids = (ctypes.c_uint32 * max(n, 1))()
    info = ProgInfo()
    info.nr_map_ids, info.map_ids = n, ctypes.addressof(ids)
    with translated(f"read the maps of BPF program fd {fd}"):
        _bpf(BPF_OBJ_GET_INFO_BY_FD, _Info(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return [int(ids[i]) for i in range(min(n, int(info.nr_map_ids)))]


def get_pinned(path: str, flags: int = 0) -> int:
    """A new fd for the object pinned at ``path`` (``flags``: ``BPF_F_RDONLY`` for a map
    only read)."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    with translated(f"open pinned BPF object {path}"):
        return _bpf(BPF_OBJ_GET, _Obj(_addr(p), 0, flags))


# ------------------------------------------------------------------------------- sockets


def attach(s: Sockish, prog_fd: int) -> None:
    """Attach (or atomically replace, under RCU as for a classic filter) eBPF program
    ``prog_fd`` as the socket filter of ``s``; the socket holds its own reference."""
    fd = fileno(s)
    with translated(f"attach BPF program fd {prog_fd} to fd {fd}"):
        v = ctypes.c_int(prog_fd)
        _setsockopt(fd, SO_ATTACH_BPF, ctypes.byref(v), ctypes.sizeof(v))


def socket_cookie(s: Sockish) -> int:
    """The socket's cookie (SO_COOKIE): what sock_diag reports as ``idiag_cookie``."""
    return _u64_option(fileno(s), SO_COOKIE, "SO_COOKIE")


def netns_cookie(s: Sockish) -> int | None:
    """The cookie of the socket's network namespace (SO_NETNS_COOKIE); None before Linux 5.14."""
    try:
        return _u64_option(fileno(s), SO_NETNS_COOKIE, "SO_NETNS_COOKIE")
    except AdapterError as e:
        if e.errno in (errno.ENOPROTOOPT, errno.EINVAL):
            return None
        raise


def netns_inode(s: Sockish) -> int | None:
    """The nsfs inode of the socket's network namespace (``SIOCGSKNS`` hands an fd of it; the
    inode is what ``/proc/PID/ns/net`` names); None when the kernel will not say."""
    try:
        ns = fcntl.ioctl(fileno(s), SIOCGSKNS)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP):
            return None
        raise AdapterError(f"SIOCGSKNS on fd {fileno(s)}: {e.strerror}", errno=e.errno) from None
    try:
        return os.fstat(ns).st_ino
    finally:
        os.close(ns)


def _u64_option(fd: int, opt: int, name: str) -> int:
    v, n = ctypes.c_uint64(0), ctypes.c_uint32(8)
    with translated(f"read {name} of fd {fd}"):
        if _libc.getsockopt(fd, socket.SOL_SOCKET, opt, ctypes.byref(v), ctypes.byref(n)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return int(v.value)


def filter_kind(s: Sockish) -> str:
    """``"none"``, ``"cbpf"`` or ``"ebpf"``: what kind of filter the socket has. SO_GET_FILTER
    with a zero length answers the classic program's length, 0 for none, and EACCES for a
    program attached with SO_ATTACH_BPF (net/core/filter.c: ``sk_get_filter``)."""
    fd = fileno(s)
    n = ctypes.c_uint32(0)
    r = _libc.getsockopt(fd, socket.SOL_SOCKET, SO_GET_FILTER, None, ctypes.byref(n))
    if r == 0:
        return "cbpf" if n.value else "none"
    e = ctypes.get_errno()
    if e == errno.EACCES:
        return "ebpf"
    with translated(f"read the filter of fd {fd}"):
        raise OSError(e, os.strerror(e))



# ------------------------------------------------------------------- links (cgroup hooks)

BPF_LINK_CREATE = 28  # <linux/bpf.h> enum bpf_cmd, Linux 5.7 for cgroups
BPF_LINK_TYPE_CGROUP = 3  # <linux/bpf.h> enum bpf_link_type


class _LinkCreate(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


class LinkInfo(ctypes.Structure):
    """The head of ``struct bpf_link_info`` (<linux/bpf.h>) with its cgroup member."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("prog_id", ctypes.c_uint32),
                ("cgroup_id", ctypes.c_uint64), ("attach_type", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach ``prog_fd`` to ``target_fd`` (a cgroup directory) at ``attach_type`` as a
    ``bpf_link``; returns the link's fd. The program stays attached while the link lives: an
    open fd or a pin. Cgroup links are multi-attach: other programs at the same hook stay."""
    what = f"attach BPF program fd {prog_fd} to fd {target_fd} (attach type {attach_type})"
    with translated(what):
        return _bpf(BPF_LINK_CREATE, _LinkCreate(prog_fd, target_fd, attach_type, 0))


def link_info(fd: int) -> LinkInfo:
    """Type, id, program id and (for a cgroup link) cgroup id and hook of a link."""
    return _obj_info(fd, LinkInfo(), "link")


BPF_PROG_QUERY = 16  # <linux/bpf.h> enum bpf_cmd


class _Query(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32), ("query_flags", ctypes.c_uint32),
                ("attach_flags", ctypes.c_uint32), ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


def prog_query(target_fd: int, attach_type: int, limit: int = 256) -> list[int]:
    """The ids of the programs attached to ``target_fd`` (a cgroup) at ``attach_type`` — its
    own, not those inherited from its parents (``BPF_PROG_QUERY``, at most ``limit``)."""
    ids = (ctypes.c_uint32 * limit)()
    attr = _Query(target_fd, attach_type, 0, 0, ctypes.addressof(ids), limit, 0)
    with translated(f"list the BPF programs of fd {target_fd} (attach type {attach_type})"):
        _bpf(BPF_PROG_QUERY, attr)
    return [int(ids[k]) for k in range(min(attr.prog_cnt, limit))]
