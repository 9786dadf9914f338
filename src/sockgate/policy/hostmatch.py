"""hosts_access(5) string matching, exactly as Debian's libwrap (7.6.q) does it.

libwrap never compares structured values: it compares each pattern with two strings, the
client's address text and its host name text, where an unknown address or name is the word
``unknown`` and a name whose forward lookup does not confirm the address is the word
``paranoid``. That is why ``u*`` matches a client whose name is unknown, and why ``.1``
matches the address ``10.0.0.1``. This module keeps those sentinels and re-implements, by
hand, the C routines the matching depends on, because their quirks decide the outcome and no
library reproduces them:

* ``string_match``: wildcards (``*``/``?``, case-insensitive), ``.suffix``, ``ALL``,
  ``KNOWN``, ``prefix.``, ``[ipv6]`` numeric equality, else case-insensitive equality;
* ``host_match``: ``net/mask`` goes to ``masked_match`` (address only); other patterns match
  the address text, or the name text when the pattern is not made of digits, dots and
  slashes only (``NOT_INADDR``);
* ``dot_quad_addr``: four dot-separated runs parsed by glibc's ``inet_aton`` (octal and hex
  parts accepted), with 255.255.255.255 counting as a failure (it is ``INADDR_NONE``);
* prefix lengths: ``n.n.n.n/len`` reads ``len`` with ``sscanf("%u")`` (1-32 valid, trailing
  junk ignored); ``[net]/len`` reads it with ``atoi`` (0-128 valid).

The address text is what glibc's ``inet_ntop`` prints (RFC 5952, but IPv4-compatible
``::a.b.c.d`` in dotted form). Pure: names arrive already resolved, or None when unknown.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Protocol, Union

from sockgate.intlist import c_value

# This module imports nothing of sockgate: the policy IR selects daemons with it. The address
# alias is policy.ir's, and a host pattern is what policy.ir.HostPattern holds.
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class HostPatternLike(Protocol):
    @property
    def pattern(self) -> str: ...
    @property
    def hosts_access(self) -> bool: ...


UNKNOWN = "unknown"
PARANOID = "paranoid"

_INADDR_CHARS = frozenset("01234567890./")
_SPACE = " \t\n\v\f\r"
_U64 = (1 << 64) - 1
_STAR, _QUESTION = ord("*"), ord("?")


def fold(s: str) -> str:
    """strcasecmp's view of a string: ASCII letters folded, nothing else."""
    return s.encode("utf-8", "surrogateescape").lower().decode("utf-8", "surrogateescape")


def c_string(s: str) -> str:
    """``s`` as C sees it: up to its first NUL."""
    return s.partition("\0")[0]


# ---------------------------------------------------------------------------------------------
# The peer as libwrap sees it: two strings


def addr_text(address: IPAddress | None) -> str:
    """The client address as libwrap prints it (``inet_ntop``), or ``unknown``."""
    if address is None:
        return UNKNOWN
    if isinstance(address, ipaddress.IPv6Address):
        packed = address.packed
        words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
        # glibc prints a dotted tail for IPv4-compatible (zeros in words 0-5) and mapped forms.
        if words[:6] == [0] * 6 and words[6] != 0:
            return "::" + str(ipaddress.IPv4Address(packed[12:]))
        if words[:5] == [0] * 5 and words[5] == 0xFFFF:
            return "::ffff:" + str(ipaddress.IPv4Address(packed[12:]))
    return str(address)


def name_text(name: str | None, verified: bool = True) -> str:
    """The client host name as libwrap holds it: the name, ``unknown`` or ``paranoid``."""
    if not verified:
        return PARANOID
    return name if name else UNKNOWN


def hostname_known(name: str) -> bool:
    return fold(name) not in (UNKNOWN, PARANOID)


def not_inaddr(tok: str) -> bool:
    """libwrap ``NOT_INADDR``: the pattern has a character other than digits, dots, slashes."""
    return any(c not in _INADDR_CHARS for c in tok)


# ---------------------------------------------------------------------------------------------
# C number parsing, as the libwrap routines call it


def inet_aton(s: str) -> int | None:
    """glibc ``inet_aton``: 1-4 parts, each decimal, 0-octal or 0x-hex; None when invalid."""
    parts: list[int] = []
    i, n = 0, len(s)
    digit = False
    val = 0
    while True:
        if i >= n or s[i] not in "0123456789":
            return None
        val, base, digit = 0, 10, False
        if s[i] == "0":
            i += 1
            if i < n and s[i] in "xX":
                base, i = 16, i + 1
            else:
                base, digit = 8, True
        while i < n:
            c = s[i]
            if c in "0123456789":
                if base == 8 and c in "89":
                    return None
                val = (val * base + int(c)) & _U64
            elif base == 16 and c in "abcdefABCDEF":
                val = (val * 16 + int(c, 16)) & _U64
            else:
                break
            digit, i = True, i + 1
        if i < n and s[i] == ".":
            if len(parts) > 2 or val > 0xFF:
                return None
            parts.append(val)
            i += 1
        else:
            break
    if i < n and s[i] not in _SPACE:
        return None
    if not digit or val > (0xFFFFFFFF >> (8 * len(parts))):
        return None
    for k, p in enumerate(parts):
        val |= p << (24 - 8 * k)
    return val


def dot_quad_addr(s: str) -> int | None:
    """libwrap ``dot_quad_addr``: exactly four runs of non-dots, ``inet_aton``, not all-ones."""
    if len([run for run in s.split(".") if run]) != 4:
        return None
    v = inet_aton(s)
    return None if v is None or v == 0xFFFFFFFF else v


def _c_integer(s: str) -> tuple[int, bool] | None:
    """Leading whitespace, a sign, decimal digits (strtol/strtoul); None without digits."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)", s)
    if m is None:
        return None
    return c_value(m.group(2)), m.group(1) == "-"  # (saturated past 2^64: callers clamp)


def cidr_mask_addr(s: str) -> int | None:
    """The mask of ``n.n.n.n/len``: ``sscanf("%u")``, valid 1-32 (Debian ``cidr_mask_addr``)."""
    got = _c_integer(s)
    if got is None:
        return None
    v, neg = got
    v = min(v, _U64)
    if neg:
        v = (-v) & _U64
    bits = v & 0xFFFFFFFF
    if not 1 <= bits <= 32:
        return None
    return (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF


def v6_prefix_len(s: str) -> int | None:
    """The length of ``[net]/len``: ``atoi`` (no digits gives 0), valid 0-128."""
    got = _c_integer(s)
    if got is None:
        return 0
    v, neg = got
    v = -v if neg else v
    v = max(min(v, (1 << 63) - 1), -(1 << 63))
    v &= 0xFFFFFFFF
    if v >= 1 << 31:
        v -= 1 << 32
    return v if 0 <= v <= 128 else None


def v4_mask(mask_tok: str) -> int | None:
    m = dot_quad_addr(mask_tok)
    return m if m is not None else cidr_mask_addr(mask_tok)


def bracketed_v6(tok: str) -> ipaddress.IPv6Address | None:
    """``[x:y::z]`` as an IPv6 address, or None."""
    if len(tok) < 2 or tok[0] != "[" or tok[-1] != "]":
        return None
    return _v6(tok[1:-1])


def _v6(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# The matching routines


def wildcard_match(text: str, pattern: str) -> bool:
    """``*`` any run of bytes, ``?`` one byte; nothing else is special; case-insensitive.

    The greedy matcher that only ever backtracks to the last ``*``: O(len(text) * len(pattern))
    at worst. A regular expression (or libwrap's recursive matcher) tries every way to split
    the text between the stars, len(text) to the power of their number: ``*a*a*a*a*b`` took
    seconds per 250-byte name, and the name (or ident user) is the peer's to choose."""
    t = fold(text).encode("utf-8", "surrogateescape")
    p = fold(pattern).encode("utf-8", "surrogateescape")
    ti = pi = 0
    star, resume = -1, 0  # the last '*' seen, and where in t its run ends so far
    while ti < len(t):
        if pi < len(p) and p[pi] == _STAR:
            star, resume, pi = pi, ti, pi + 1
        elif pi < len(p) and (p[pi] == _QUESTION or p[pi] == t[ti]):
            ti, pi = ti + 1, pi + 1
        elif star >= 0:
            resume += 1
            ti, pi = resume, star + 1
        else:
            return False
    return all(c == _STAR for c in p[pi:])


def string_match(tok: str, text: str) -> bool:
    """libwrap ``string_match(tok, string)``, on C strings."""
    tok, text = c_string(tok), c_string(text)
    if fold(text).startswith("::ffff:") and dot_quad_addr(text[7:]) is not None:
        text = text[7:]
    if "*" in tok or "?" in tok:
        return wildcard_match(text, tok)
    if tok.startswith("."):
        n = len(text) - len(tok)
        return n > 0 and fold(text[n:]) == fold(tok)
    if fold(tok) == "all":
        return True
    if fold(tok) == "known":
        return fold(text) != UNKNOWN
    if tok.endswith("."):
        return fold(text[: len(tok)]) == fold(tok)
    if tok.startswith("[") and tok.endswith("]") and len(tok) >= 2:
        pat, addr = _v6(tok[1:-1]), _v6(text)
        return pat is not None and addr is not None and pat == addr
    return fold(tok) == fold(text)


def masked_match(net_tok: str, mask_tok: str, text: str) -> bool:
    """libwrap ``masked_match``: IPv4 ``(addr & mask) == net``, or IPv6 ``[net]/len``."""
    addr4 = dot_quad_addr(text)
    net4 = dot_quad_addr(net_tok)
    mask4 = v4_mask(mask_tok)
    if addr4 is not None and net4 is not None and mask4 is not None:
        return (addr4 & mask4) == net4
    net6, addr6, plen = bracketed_v6(net_tok), _v6(text), v6_prefix_len(mask_tok)
    if net6 is None or addr6 is None or plen is None:
        return False
    shift = 128 - plen
    return (int(net6) >> shift) == (int(addr6) >> shift) if shift < 128 else True


def split_at(s: str, delim: str, start: int = 0) -> int:
    """Debian's ``split_at``: the index of the first ``delim`` outside ``[...]`` at or after
    ``start``, or -1. Brackets are counted, not paired: a stray ``]`` hides later colons."""
    depth = 0
    for i in range(start, len(s)):
        c = s[i]
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif depth == 0 and c == delim:
            return i
    return -1


def host_match_text(tok: str, address: str, name: str) -> bool:
    """libwrap ``host_match`` for every pattern but KNOWN, LOCAL, ``/file`` and netgroups."""
    cut = split_at(tok, "/")
    if cut >= 0:
        return masked_match(tok[:cut], tok[cut + 1 :], address)
    return string_match(tok, address) or (not_inaddr(tok) and string_match(tok, name))


def native_name_matches(pattern: str, name: str) -> bool:
    """Native-language host patterns: ``.suffix``, ``*``/``?`` wildcards, or the exact name."""
    if pattern.startswith("."):
        return fold(name).endswith(fold(pattern))
    if "*" in pattern or "?" in pattern:
        return wildcard_match(name, pattern)
    return fold(pattern) == fold(name)


def pattern_matches(
    m: HostPatternLike, name: str | None, address: IPAddress | None, paranoid: bool = False
) -> bool:
    """Does host pattern ``m`` hold? ``name`` is the verified name (None: unknown or not
    verified); ``paranoid`` says a name was found but did not verify."""
    if m.hosts_access:
        return host_match_text(m.pattern, addr_text(address), name_text(name, not paranoid))
    return name is not None and not paranoid and native_name_matches(m.pattern, name)


def class_matches(kind: str, name: str | None, verified: bool, address: IPAddress | None) -> bool:
    """KNOWN and LOCAL as libwrap's host_match tests them; UNKNOWN and PARANOID are plain
    words there, compared with the address and name texts."""
    a, n = addr_text(address), name_text(name, verified)
    if kind == "KNOWN":
        return a != UNKNOWN and hostname_known(n)
    if kind == "LOCAL":
        return "." not in n and hostname_known(n)
    if kind in ("UNKNOWN", "PARANOID"):
        return host_match_text(kind, a, n)
    raise ValueError(kind)


def user_matches(pattern: str, user: str | None) -> bool:
    """``user@host``: the user pattern against the ident name (``unknown`` when none)."""
    return string_match(pattern, user if user else UNKNOWN)


def daemon_name_matches(pattern: str, service: str) -> bool:
    """A daemon-list pattern against the service (daemon) name."""
    return string_match(pattern, service)
