"""``compile_resolved``: a resolved service → a complete, checked ``Program``, or an error;
never a truncated program.

Passes: refuse rules that need user space (``ResolvedService.refusal``) → interval tables
(``resolve.ranges``) → code (codegen.py) → marker (marker.py) → limits. Two limits apply, both checked here so that ``attach`` can
only fail for reasons outside the program:

* at most ``BPF_MAXINSNS`` (4,096) classic instructions;
* the kernel converts the program to eBPF and charges that against ``net.core.optmem_max``
  (131,072 bytes by default). While a filter is replaced, the old and the new one are both
  charged, so a program must stay under half of it for ``reload`` to swap atomically.
  ``ebpf_estimate`` mirrors the conversion rules of ``bpf_convert_filter`` (net/core/filter.c)
  closely enough to stay on the safe side; tests/kernel/test_bpf_attach.py checks the claim.

``max_ranges`` answers "how many disjoint ranges fit" by compiling synthetic tables of the
worst shape for the family (IPv4: boundaries spread over the whole space; IPv6: CIDR
boundaries of a given prefix length) and bisecting.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

from sockgate.bpf import marker as _marker
from sockgate.resolve import ranges as _ranges
from sockgate.bpf import verify
from sockgate.bpf.codegen import generate
from sockgate.bpf.insn import (
    BPF_ABS,
    BPF_ALU,
    BPF_IND,
    BPF_JA,
    BPF_JMP,
    BPF_LD,
    BPF_LDX,
    BPF_MAXINSNS,
    BPF_RET,
    Insn,
    bpf_class,
    bpf_mode,
    bpf_op,
    encode,
)
from sockgate.errors import CompileError
from sockgate.policy.intervals import SPACE, net_range
from sockgate.policy.ir import Action, Service
from sockgate.resolve import ResolvedService, resolve_service

OPTMEM_MAX = 131072  # net.core.optmem_max default (net/core/sock.c: sysctl_optmem_max)
EBPF_BUDGET = OPTMEM_MAX // 2 - 4096  # bytes; two programs charged during a swap, plus slack
EBPF_INSN = 8  # sizeof(struct bpf_insn)


@dataclass(frozen=True)
class Program:
    """A compiled filter. ``ranges`` counts the disjoint address intervals (IPv4 + IPv6)."""

    insns: tuple[Insn, ...]
    service: str
    digest: str
    ranges: int
    ranges4: int = 0
    ranges6: int = 0

    @property
    def backend(self) -> Literal["cbpf"]:
        """The kernel backend that runs it (``sockgate.kernel``)."""
        return "cbpf"

    @property
    def instructions(self) -> int:
        return len(self.insns)

    def encode(self) -> bytes:
        return encode(self.insns)

    def __len__(self) -> int:
        return len(self.insns)

    @property
    def size_bytes(self) -> int:
        return len(self.insns) * 8

    @property
    def ebpf_bytes(self) -> int:
        return ebpf_estimate(self.insns) * EBPF_INSN


def compile_resolved(service: ResolvedService, *, banned: Sequence[_ranges.Banned] = ()) -> Program:
    """Compile ``service`` (and the ``banned`` sources, denied before any rule) to one
    program. Raises ``UnsupportedInKernel`` for rules that need user space
    (``ResolvedService.refusal``) and ``CompileError`` for a policy that does not fit."""
    refused = service.refusal()
    if refused is not None:
        raise refused
    tables = _ranges.first_match_tables(service, banned)
    body = generate(tables)
    digest = _marker.program_digest(service.name, body)
    insns = _marker.build(service.name, digest) + body
    n4, n6 = len(tables.v4), len(tables.v6)
    _check_limits(service.name, insns, n4, n6)
    bad = verify.problems(insns)
    if bad:  # a compiler bug, never the operator's fault
        raise RuntimeError(f"sockgate compiled a program the kernel would refuse: {bad[0]}")
    return Program(insns, service.name, digest, n4 + n6, n4, n6)


def compile_service(service: Service, *, banned: Sequence[_ranges.Banned] = ()) -> Program:
    """``compile_resolved`` of ``service`` resolved."""
    return compile_resolved(resolve_service(service), banned=banned)


def _check_limits(name: str, insns: tuple[Insn, ...], n4: int, n6: int) -> None:
    ebpf = ebpf_estimate(insns) * EBPF_INSN
    if len(insns) <= BPF_MAXINSNS and ebpf <= EBPF_BUDGET:
        return
    why = (
        f"{len(insns)} instructions (the kernel accepts {BPF_MAXINSNS})"
        if len(insns) > BPF_MAXINSNS
        else f"~{ebpf} bytes once converted by the kernel (limit {EBPF_BUDGET}, half of net.core.optmem_max)"
    )
    raise CompileError(
        f"service {name!r} does not fit in one BPF program: {n4} IPv4 and {n6} IPv6 ranges "
        f"need {why}. At most {max_ranges(4)} IPv4 ranges, or {max_ranges(6)} IPv6 ranges "
        f"({max_ranges(6, 64)} of /64 networks), fit in one program (a range is a run of addresses"
        " with one verdict: a list of N separate networks makes about 2N); "
        "merge networks or split the service"
    )


def ebpf_estimate(insns: Sequence[Insn]) -> int:
    """How many eBPF instructions the kernel's conversion makes of ``insns`` (an upper
    bound: helper-call loads, two-instruction conditional jumps, a move for immediates with
    the top bit set, and the prologue)."""
    n = 8
    for i in insns:
        cls = bpf_class(i.code)
        if cls in (BPF_LD, BPF_LDX) and bpf_mode(i.code) in (BPF_ABS, BPF_IND):
            n += 8 if i.signed_k < 0 else 4
        elif cls == BPF_JMP and bpf_op(i.code) != BPF_JA:
            n += (1 if i.jt == 0 or i.jf == 0 else 2) + (1 if i.k & 0x80000000 else 0)
        elif cls == BPF_RET:
            n += 2
        elif cls == BPF_ALU:
            n += 1 if i.k & 0x80000000 == 0 else 2
        else:
            n += 1
    return n


# ------------------------------------------------------------------------------ capacity

# The most expensive network length for an IPv6 list (measured over /1../128: a partial last
# word costs a range search there, where a /128 host is one `jeq`).
WORST_PREFIX = 120


def synthetic_tables(family: int, n: int, prefix: int = WORST_PREFIX) -> _ranges.Tables:
    """``n`` alternating intervals spread evenly over the space of ``family``. IPv4: any
    boundaries. IPv6: networks of length /``prefix`` (as CIDR rules make them), no two
    sharing a first word, the last word of each prefix non-zero."""
    if family == 4:
        step = (1 << 32) // (n + 1)
        bounds = [0] + [step * (i + 1) + (i % 7) for i in range(n - 1)]
    else:
        unit = 1 << (128 - prefix)
        top = (1 << prefix) - 1
        step = top // (n + 1)
        starts = [((step * (i + 1)) | 1) * unit for i in range(n // 2 + 1)]
        bounds = ([0] + [b for lo in starts for b in (lo, lo + unit)])[:n]
    acts = (Action.DENY, Action.ALLOW)
    ends = bounds[1:] + [SPACE[family]]
    ivs = tuple(_ranges.Interval(lo, hi, acts[k % 2], None) for k, (lo, hi) in enumerate(zip(bounds, ends)))
    other = _ranges.Table(10 - family, (_ranges.Interval(0, SPACE[10 - family], Action.DENY, None),))
    if family == 4:  # IPv6 allowed (a block list's default) but for ::ffff:0:0/96: the costlier shape
        lo, hi = net_range(_ranges.MAPPED)
        other = _ranges.Table(6, (_ranges.Interval(0, lo, Action.ALLOW, None), _ranges.Interval(lo, hi, Action.DENY, _ranges.FORGED),
                                  _ranges.Interval(hi, SPACE[6], Action.ALLOW, None)))
    table = _ranges.Table(family, ivs)
    v4, v6 = (table, other) if family == 4 else (other, table)
    return _ranges.Tables(v4, v6, Action.DENY, None)


# The capacity promised is for service names up to 32 bytes, with room for the layout to
# vary with the tree's shape (a few more `ja` trampolines or `ret` copies than the probe).
PROBE_NAME = "capacity-probe-with-32-byte-name"
LAYOUT_MARGIN = 32


def fits(tables: _ranges.Tables) -> bool:
    """Does a program for ``tables`` fit, with the margin ``max_ranges`` promises?"""
    insns = _marker.build(PROBE_NAME, "0" * 16) + generate(tables)
    size_ok = len(insns) <= BPF_MAXINSNS - LAYOUT_MARGIN
    return size_ok and ebpf_estimate(insns) * EBPF_INSN <= EBPF_BUDGET - LAYOUT_MARGIN * 3 * EBPF_INSN


@lru_cache(maxsize=None)
def max_ranges(family: int, prefix: int = WORST_PREFIX) -> int:
    """The largest number of disjoint ranges of ``family`` (4 or 6) that surely fit in one
    program (boundaries spread over the whole space; IPv6 boundaries on /``prefix``
    networks; service name up to 32 bytes)."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    if family == 6 and not 16 <= prefix <= 128:
        raise ValueError(f"IPv6 network length must be 16..128 (shorter ones are too few to fill a program), not {prefix}")
    # The size grows about linearly with n: extrapolate from two probes, then bisect a window.
    a, b = 256, 1024
    size_a, size_b = (_probe_size(family, n, prefix) for n in (a, b))
    guess = a + (b - a) * (BPF_MAXINSNS - size_a) // max(size_b - size_a, 1)
    lo, hi = max(1, guess - 64), guess + 64
    if not fits(synthetic_tables(family, lo, prefix)):
        lo = 1
    while hi < 4 * BPF_MAXINSNS and fits(synthetic_tables(family, hi, prefix)):
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(synthetic_tables(family, mid, prefix)):
            lo = mid
        else:
            hi = mid
    return lo


def _probe_size(family: int, n: int, prefix: int) -> int:
    """The larger of the two limits, in classic instructions, for ``n`` ranges."""
    insns = generate(synthetic_tables(family, n, prefix))
    return max(len(insns), ebpf_estimate(insns) * EBPF_INSN * BPF_MAXINSNS // EBPF_BUDGET)


def parse_banned(text: str) -> _ranges.Banned:
    """A banned source from text (an address or a CIDR). Raises ``ValueError``."""
    return ipaddress.ip_network(text.strip(), strict=False)
