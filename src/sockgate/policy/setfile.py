"""A set file — one address or CIDR a line, ``#`` comments — parsed straight into integers.

Blocklists run to a million lines, and the reference path, ``literals.network`` per line,
builds an ``ipaddress`` object for each: most of the time from file to enforced went there.
The lines a blocklist is made of — a dotted quad with an optional ``/len``, or IPv6 hextets
with at most one ``::`` and an optional ``/len``, surrounded by blanks — are read here by one
regular expression and integer arithmetic into ``netlist`` keys. Every other line (comments,
blank lines, trailing comments, IPv4-mapped or embedded-IPv4 IPv6, scope ids, leading zeros,
host bits set, anything wrong) goes through the reference path unchanged, so messages and
``file:line:col`` positions are the reference's, word for word. The fast path accepts only
what the reference accepts and gives the same value (a hypothesis property in
tests/core/test_setfile.py holds the two to it).

Strictness kept: octets without leading zeros and at most 255, prefix lengths in range and
written without leading zeros (else the reference decides), hextets of one to four hex
digits, eight of them or fewer around one ``::``. Hostile input: the pattern's repetitions are
bounded (at most 39 characters of an IPv6 address), so a huge line costs one linear scan and
never backtracking; NUL bytes and undecodable bytes simply do not match and reach the
reference, which rejects them as before. Which files may be read at all (regular files only,
size caps) is the loader's business (``loading.py``); this module does no I/O.

Hand-written rather than left to ``ipaddress``: it is that module's per-object cost being
avoided, and no library parses address lists into integers without it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Callable

from sockgate.policy import literals
from sockgate.policy.netlist import V6, NetList, key_of
from sockgate.policy.source import Span, quote

MAX_LIST_ERRORS = 5  # bad lines reported one by one per set file; the rest are counted

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # as ipaddress takes it: no leading 0
_V4 = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/(3[0-2]|[12]?[0-9]))?"
_V6 = r"([0-9A-Fa-f:]{2,39})(?:/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?"
_MATCH = re.compile(rf"[ \t]*(?:{_V4}|{_V6})[ \t\r]*", re.ASCII).fullmatch  # (blanks: a subset of str.strip's)
_MAPPED = 0xFFFF  # ::ffff:0:0/96 (RFC 4291 2.5.5.2): folded to IPv4 by the reference path


def address_list(path: str, text: str, error: Callable[..., None], *, fast: bool = True) -> NetList:
    """The distinct networks of a set file, in order. A file that is not an address list at
    all (someone else's file, named by mistake) gets its first few bad lines reported and then
    one line that counts the rest, so its contents do not flood the output or a log.
    ``fast=False`` reads every line by the reference path (the tests' oracle)."""
    keys: list[int] = []
    add = keys.append
    bad = 0
    hidden: Span | None = None  # where the first bad line not reported one by one is
    for lineno, raw in enumerate(text.split("\n"), 1):  # as the lexer counts lines
        if fast and (key := fast_key(raw)) is not None:
            add(key)
            continue
        body = raw.split("#", 1)[0] if "#" in raw else raw
        word = body.strip()
        if not word:
            continue
        try:
            add(key_of(literals.network(word)))
        except literals.LiteralError as e:
            bad += 1
            msg = str(e) if literals.looks_like_address(word) else f"expected an address or CIDR, found {quote(word)}"
            span = Span(path, lineno, body.index(word) + 1, len(word))
            if bad <= MAX_LIST_ERRORS:
                error(span, msg)
            elif hidden is None:
                hidden = replace(span, length=1)
    if hidden is not None:
        error(hidden, f"{bad - MAX_LIST_ERRORS} more lines of this address list are not addresses "
              "or CIDRs (not shown)")
    return NetList.distinct(keys)


def fast_key(line: str) -> int | None:
    """The ``netlist`` key of ``line`` when it is one plain address or CIDR between blanks (see
    the module docstring); None for any other line, which the reference path reads."""
    m = _MATCH(line)
    if m is None:
        return None
    a, b, c, d, plen4, h, plen6 = m.groups()
    if a is None:
        return v6_key(h, plen6)
    value, plen = int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d), 32 if plen4 is None else int(plen4)
    if value & ((1 << (32 - plen)) - 1):
        return None  # host bits set: the reference says which network was meant
    return value << 8 | plen


def v6_key(text: str, plen_text: str | None) -> int | None:
    """The key of IPv6 ``text/plen_text`` when it is plain hextets with its host bits clear and
    not IPv4-mapped; None for anything else (the reference path decides it)."""
    head, sep, tail = text.partition("::")
    if sep:
        hi = head.split(":") if head else []
        lo = tail.split(":") if tail else []
        if len(hi) + len(lo) > 7:
            return None
        groups = hi + ["0"] * (8 - len(hi) - len(lo)) + lo
    else:
        groups = text.split(":")
        if len(groups) != 8:
            return None
    value = 0
    for g in groups:
        if not 0 < len(g) <= 4:  # empty: a lone ':' at an end, or a second '::'
            return None
        value = value << 16 | int(g, 16)
    plen = 128 if plen_text is None else int(plen_text)
    if value & ((1 << (128 - plen)) - 1) or (plen >= 96 and value >> 32 == _MAPPED):
        return None
    return V6 | value << 8 | plen
