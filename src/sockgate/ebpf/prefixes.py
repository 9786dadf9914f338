"""Disjoint labelled intervals → disjoint CIDR prefixes carrying the same labels.

An LPM trie answers the longest stored prefix containing an address, not the first rule in
policy order; so first-match semantics is settled before the trie sees anything. ranges.py
already turns the ordered rules into disjoint intervals, each labelled with the action (and
rule) of the first rule holding there. Here each interval is split into the fewest aligned
blocks covering it exactly — the classic range-to-CIDR walk: from the low end, take the
largest power-of-two block that is aligned there and does not pass the high end. An interval
of a b-bit space needs at most 2(b-1) prefixes. Since the prefixes are disjoint, any lookup
hits at most one of them, and longest-prefix match equals first match.
"""

from __future__ import annotations

from sockgate.resolve.ranges import Table, rows
from sockgate.ebpf.maps import ADDR_BYTES, KEY_HEADS, PREFIX_BITS, pack_keys, pack_verdict
from sockgate.policy.ir import Action


def split(lo: int, hi: int, bits: int) -> list[tuple[int, int]]:
    """``(network, prefixlen)`` blocks covering ``lo`` .. ``hi - 1`` of a ``bits``-bit space
    exactly, in address order."""
    if not 0 <= lo <= hi <= 1 << bits:
        raise ValueError(f"not an interval of the {bits}-bit space: [{lo}, {hi})")
    out = []
    while lo < hi:
        # the alignment of lo, capped by the largest power of two that fits in what is left
        size = min(lo & -lo if lo else 1 << bits, 1 << ((hi - lo).bit_length() - 1))
        out.append((lo, bits - size.bit_length() + 1))
        lo += size
    return out


def entries(table: Table, default: Action, keep: frozenset[int] = frozenset()) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The trie entries of ``table``, packed (keys, values): every interval whose action is
    not ``default`` (a lookup that finds nothing returns the default), split into prefixes;
    and those decided by a rule in ``keep`` whatever their action (the program must know the
    rule: its rate limits apply to its matches). One packed verdict per interval, shared by
    its prefixes.

    A set file's intervals are mostly single aligned blocks (a host, a /24): those are packed
    at once, without ``split``'s loop, and each verdict is packed once per (action, rule)."""
    bits = PREFIX_BITS[table.family]
    heads, size_bytes = KEY_HEADS[table.family], ADDR_BYTES[table.family]
    keys: list[bytes] = []
    values: list[bytes] = []
    add_key, add_value = keys.append, values.append
    verdicts: dict[tuple[Action, int | None], bytes] = {}
    for lo, hi, action, rule in rows(table):
        if action is default and rule not in keep:
            continue
        verdict = verdicts.get((action, rule))
        if verdict is None:
            verdict = verdicts[action, rule] = pack_verdict(action, rule)
        size = hi - lo
        if not size & (size - 1) and not lo & (size - 1):  # one aligned block (size >= 1)
            add_key(heads[bits + 1 - size.bit_length()] + lo.to_bytes(size_bytes, "big"))
            add_value(verdict)
        else:
            more = split(lo, hi, bits)
            keys += pack_keys(table.family, more)
            values += [verdict] * len(more)
    return tuple(keys), tuple(values)
