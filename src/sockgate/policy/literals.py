"""Values written in a native policy: addresses, ports, numbers, durations, rates, names.

Each function takes the text of one word and returns a value, or raises ``LiteralError`` with
a message that says what was expected and what was found (the parser adds the position).
Hand-written rather than left to ``ipaddress`` alone because its messages do not say what to
do ("10.0.0.1/8 has host bits set" is what an operator needs, with the network they meant),
and because IPv4-mapped IPv6 networks are folded to IPv4 here: a peer on a dual-stack socket
arrives as IPv4, so ``::ffff:192.0.2.0/120`` must mean ``192.0.2.0/24`` to ever match.
"""

from __future__ import annotations

import ipaddress
import re

from sockgate.intlist import MAX_ID, number
from sockgate.policy.ir import IPNetwork, Rate
from sockgate.policy.source import quote

MAX_PORT = 65535
MAX_COUNT = 2**31 - 1  # connection counts: what a C int holds, far beyond any real limit
MAX_SECONDS = 3650 * 86400  # durations: ten years
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_HOSTNAME = re.compile(
    r"\.?[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*",
    re.ASCII,
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*", re.ASCII)
_ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", re.ASCII)
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # as ipaddress takes it: no leading 0
_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/([0-9]{{1,2}}))?", re.ASCII)
_ADDRESS_LIKE = re.compile(r"[0-9A-Fa-f:.]+(/[^/]*)?")


class LiteralError(ValueError):
    """``message`` explains the problem; the parser attaches the word's position."""


def looks_like_address(text: str) -> bool:
    """Is this word meant as an address or CIDR (so it gets address messages)? A decimal
    digit or a colon says so: ``ffff::ffff`` has no digit, and no host name or keyword has
    a colon."""
    return _ADDRESS_LIKE.fullmatch(text) is not None and any(c.isdigit() or c == ":" for c in text)


def network(text: str) -> IPNetwork:
    """``192.0.2.1``, ``192.0.2.0/24``, ``2001:db8::/32``; host bits must be clear."""
    if (m := _V4.fullmatch(text)) is not None:  # the common case, twice as fast
        a, b, c, d, bits = m.groups()
        n, prefix = (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d), 32 if bits is None else int(bits)
        if prefix == 32:  # a host: from the integer alone, 2.5 times faster than from (n, 32)
            return ipaddress.IPv4Network(n)
        if prefix < 32 and not n & ((1 << (32 - prefix)) - 1):
            return ipaddress.IPv4Network((n, prefix))
    addr_text, slash, prefix_text = text.partition("/")
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        raise LiteralError(f"expected an IPv4 or IPv6 address, found {quote(addr_text)}") from None
    width: int = addr.max_prefixlen
    if not slash:
        prefix = width
    elif not _DIGITS.fullmatch(prefix_text):
        raise LiteralError(f"expected a prefix length 0-{width} after '/', found {quote(prefix_text)}")
    else:
        got = number(prefix_text, 0, width)
        if got is None:
            raise LiteralError(f"prefix length /{_digits(prefix_text)} is too long for IPv{addr.version} (at most /{width})")
        prefix = got
    # Built from the integer: a network built from the address object would parse its text
    # again (set files of 100,000 lines go through here).
    n = int(addr)
    cls = ipaddress.IPv4Network if addr.version == 4 else ipaddress.IPv6Network
    if n & ((1 << (width - prefix)) - 1):
        raise LiteralError(f"{text} has host bits set; did you mean {cls((n, prefix), strict=False)}?")
    return unmap(cls((n, prefix)))


def unmap(net: IPNetwork) -> IPNetwork:
    """Fold an IPv4-mapped IPv6 network (``::ffff:a.b.c.d/len``, len >= 96) to IPv4."""
    # on the integer: subnet_of builds a broadcast address per call (a third of an IPv6 parse)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        n = int(net.network_address)
        if n >> 32 == 0xFFFF:
            return ipaddress.IPv4Network((n & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _digits(text: str) -> str:
    """Digits as a message shows them: without leading zeros, a long run cut short."""
    d = text.lstrip("0") or "0"
    return d if len(d) <= 24 else d[:20] + "..."


def port_range(text: str) -> tuple[int, int]:
    """``22`` or ``8000-8099``: ports 1-65535, a non-empty range."""
    lo_text, dash, hi_text = text.partition("-")
    if not _DIGITS.fullmatch(lo_text) or (dash and not _DIGITS.fullmatch(hi_text)):
        raise LiteralError(f"expected a port or port range, found {quote(text)}")
    lo = _port(lo_text)
    hi = _port(hi_text) if dash else lo
    if hi < lo:
        raise LiteralError(f"port range {lo}-{hi} is empty (the first port must not exceed the last)")
    return lo, hi


def _port(digits: str) -> int:
    n = number(digits, 1, MAX_PORT)
    if n is None:
        raise LiteralError(f"port {_digits(digits)} is out of range (1-{MAX_PORT})")
    return n


def positive(text: str, what: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise LiteralError(f"expected {what} (a positive whole number), found {quote(text)}")
    n = number(text, 1, MAX_COUNT)
    if n is None:
        bound = "at least 1" if not text.strip("0") else f"at most {MAX_COUNT}"
        raise LiteralError(f"{what} must be {bound}, found {quote(text)}")
    return n


def ident(text: str, what: str) -> int:
    """A uid or gid: 0 to 2^32-2 (2^32-1 is the kernel's "no id")."""
    n = number(text, 0, MAX_ID)
    if n is None:
        raise LiteralError(f"expected a numeric {what} (0-{MAX_ID}), found {quote(text)}")
    return n


def duration(text: str) -> int:
    """``30s``, ``10m``, ``2h``, ``1d``: a positive number of seconds."""
    m = re.fullmatch(r"([0-9]+)([a-z]*)", text, re.ASCII)
    if m is None or m.group(2) not in DURATION_UNITS:
        raise LiteralError(f"expected a duration like 30s, 10m, 2h or 1d, found {quote(text)}")
    if not m.group(1).strip("0"):
        raise LiteralError(f"a duration must be positive, found {quote(text)}")
    n = number(m.group(1), 1, MAX_SECONDS)
    seconds = MAX_SECONDS + 1 if n is None else n * DURATION_UNITS[m.group(2)]
    if seconds > MAX_SECONDS:
        raise LiteralError(f"a duration must be at most {MAX_SECONDS // 86400}d, found {quote(text)}")
    return seconds


def rate(text: str) -> Rate:
    """``30/minute`` (per second, minute, hour, day) or ``30/10s`` (per duration)."""
    count_text, slash, per = text.partition("/")
    if not slash:
        raise LiteralError(f"expected a rate like 30/minute, found {quote(text)}")
    count = positive(count_text, "a connection count")
    if per in RATE_UNITS:
        return Rate(count, RATE_UNITS[per])
    try:
        return Rate(count, duration(per))
    except LiteralError:
        units = ", ".join(RATE_UNITS)
        raise LiteralError(f"expected a rate unit ({units}) or a duration after '/', found {quote(per)}") from None


def format_rate(r: Rate) -> str:
    for unit, size in RATE_UNITS.items():
        if r.seconds == size:
            return f"{r.count}/{unit}"
    return f"{r.count}/{format_duration(r.seconds)}"


def format_duration(seconds: float) -> str:
    for unit, size in reversed(DURATION_UNITS.items()):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def host_name(text: str) -> str:
    """``www.example.com`` (one host) or ``.example.com`` (every host in the domain)."""
    if not _HOSTNAME.fullmatch(text) or len(text) > 254 or text.lower() == "all":
        raise LiteralError(f"expected a host name (www.example.com) or a domain (.example.com), found {quote(text)}")
    return text


def is_exact_host_name(text: str) -> bool:
    """Whether ``text`` names one host in DNS syntax (``www.example.com``: labels of letters,
    digits, ``_`` and ``-``, no leading dot, no wildcard, at most 253 characters)."""
    return not text.startswith(".") and len(text) <= 253 and _HOSTNAME.fullmatch(text) is not None


def name(text: str, what: str) -> str:
    """A set or service name: a letter or ``_``, then letters, digits, ``_``, ``.``, ``-``."""
    if not _NAME.fullmatch(text):
        raise LiteralError(f"expected {what} (letters, digits, '_', '.', '-'), found {quote(text)}")
    return text


def account(text: str, what: str) -> str:
    if not _ACCOUNT.fullmatch(text):
        raise LiteralError(f"expected a {what} name, found {quote(text)}")
    return text


def exe_path(text: str) -> str:
    """An absolute executable path; ``*`` matches any run of characters."""
    if not text.startswith("/"):
        raise LiteralError(f"expected an absolute executable path (/usr/bin/prog), found {quote(text)}")
    if "\0" in text:
        raise LiteralError("an executable path cannot contain a NUL byte")
    return text
