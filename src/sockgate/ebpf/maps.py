"""The eBPF maps of a sockgate filter: layouts as typed values, packed as the kernel reads them.

An address rule table is a ``BPF_MAP_TYPE_LPM_TRIE`` per family (Linux 4.11,
kernel/bpf/lpm_trie.c). Its key is ``struct bpf_lpm_trie_key`` (<linux/bpf.h>): a host-order
``__u32 prefixlen`` followed by the address bytes in network order (4 for IPv4, 16 for IPv6),
and a lookup with a full-length key answers the longest stored prefix containing it. The
value is ``struct sg_verdict { __u32 action; __s32 rule; }``: the action the program returns
and the index of the rule that decided (``ranges.BANNED``/``ranges.FORGED`` for those lists),
kept for counters and ``explain``. The kernel requires ``BPF_F_NO_PREALLOC`` for LPM tries.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Iterable

from sockgate.ebpf.insn import BPF_F_NO_PREALLOC, BPF_OBJ_NAME_LEN, MapType
from sockgate.policy.ir import Action

ADDR_BYTES = {4: 4, 6: 16}
PREFIX_BITS = {4: 32, 6: 128}
ACTION_CODE = {Action.DENY: 0, Action.ALLOW: 1}
CODE_ACTION = {v: k for k, v in ACTION_CODE.items()}
DEFAULT_RULE = -3  # the rule index stored for addresses no rule matched

_PREFIXLEN = struct.Struct("=I")
_VERDICT = struct.Struct("=Ii")


@dataclass(frozen=True)
class LpmKey:
    """A prefix of one family: ``addr`` is the network address as an integer."""

    family: int
    prefixlen: int
    addr: int

    def __post_init__(self) -> None:
        bits = PREFIX_BITS[self.family]
        if not 0 <= self.prefixlen <= bits or not 0 <= self.addr < 1 << bits:
            raise ValueError(f"not an IPv{self.family} prefix: {self.addr:#x}/{self.prefixlen}")
        if self.addr & ((1 << (bits - self.prefixlen)) - 1):
            raise ValueError(f"host bits set in {self.network}")

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        cls = ipaddress.IPv4Network if self.family == 4 else ipaddress.IPv6Network
        return cls((self.addr, self.prefixlen))  # (ip_network would read a small int as IPv4)

    def pack(self) -> bytes:
        return pack_keys(self.family, ((self.addr, self.prefixlen),))[0]

    @classmethod
    def unpack(cls, family: int, raw: bytes) -> LpmKey:
        (plen,) = _PREFIXLEN.unpack_from(raw)
        return cls(family, plen, int.from_bytes(raw[_PREFIXLEN.size :], "big"))

    @classmethod
    def host(cls, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> LpmKey:
        """The full-length key a lookup for ``address`` uses."""
        return cls(address.version, PREFIX_BITS[address.version], int(address))


@dataclass(frozen=True)
class Verdict:
    """A map value: what the program returns for a prefix, and which rule said so."""

    action: Action
    rule: int | None

    def pack(self) -> bytes:
        return pack_verdict(self.action, self.rule)

    @classmethod
    def unpack(cls, raw: bytes) -> Verdict:
        code, rule = _VERDICT.unpack(raw)
        return cls(CODE_ACTION[code], None if rule == DEFAULT_RULE else rule)


VERDICT_SIZE = _VERDICT.size
# the packed ``prefixlen`` head of every key, by family and length
KEY_HEADS = {fam: [_PREFIXLEN.pack(n) for n in range(bits + 1)] for fam, bits in PREFIX_BITS.items()}


def pack_keys(family: int, blocks: Iterable[tuple[int, int]]) -> list[bytes]:
    """The packed ``LpmKey`` of each ``(network, prefixlen)`` block, in bulk: no ``LpmKey`` per
    entry on the path of a million prefixes (the blocks come from ``prefixes.split``, aligned
    by construction; ``LpmKey`` checks one it is given)."""
    heads, size = KEY_HEADS[family], ADDR_BYTES[family]
    return [heads[plen] + net.to_bytes(size, "big") for net, plen in blocks]


def pack_verdict(action: Action, rule: int | None) -> bytes:
    """The packed ``Verdict(action, rule)``."""
    return _VERDICT.pack(ACTION_CODE[action], DEFAULT_RULE if rule is None else rule)


@dataclass(frozen=True)
class MapSpec:
    """What ``BPF_MAP_CREATE`` needs; ``name`` fits ``BPF_OBJ_NAME_LEN`` with its NUL."""

    name: str
    map_type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0

    def __post_init__(self) -> None:
        if len(self.name.encode()) >= BPF_OBJ_NAME_LEN or not self.name.replace("_", "").isalnum():
            raise ValueError(f"map name {self.name!r}: at most {BPF_OBJ_NAME_LEN - 1} letters, digits or _")
        if self.max_entries < 1:
            raise ValueError("a map holds at least one entry")


def lpm_spec(family: int, capacity: int) -> MapSpec:
    """The address table of ``family`` holding up to ``capacity`` prefixes."""
    return MapSpec(f"sg_lpm{family}", MapType.LPM_TRIE, _PREFIXLEN.size + ADDR_BYTES[family],
                   VERDICT_SIZE, max(1, capacity), BPF_F_NO_PREALLOC)


@dataclass(frozen=True)
class MapContents:
    """An address trie to create and the entries to put in it, packed once: ``keys[i]`` →
    ``values[i]``, as ``BPF_MAP_UPDATE_BATCH`` takes them."""

    spec: MapSpec
    keys: tuple[bytes, ...]
    values: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values):
            raise ValueError("as many values as keys")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def entries(self) -> tuple[tuple[LpmKey, Verdict], ...]:
        """The entries as typed values (tests, listings; decoded on demand)."""
        family = 4 if self.spec.key_size == _PREFIXLEN.size + ADDR_BYTES[4] else 6
        return tuple((LpmKey.unpack(family, k), Verdict.unpack(v)) for k, v in zip(self.keys, self.values))

    def packed(self) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        return self.keys, self.values
