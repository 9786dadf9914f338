"""The marker at the head of every sockgate program: who made it, for which service, from
which policy.

Layout (instruction 0 is the only one a packet executes; the rest is data it jumps over)::

    0      ja +N                   skip the N data instructions
    1      ld #0x53474154          magic "SGAT"
    2      ld #0x0001LLLL          version (high 16 bits) and the name's length in bytes
    3      ld #digest[0:8]         the 16-hex-digit program digest as two words
    4      ld #digest[8:16]
    5..    ld #name[4i:4i+4]       the service name, UTF-8, 4 bytes a word, zero padded

Every data instruction is a valid ``ld #k`` (``BPF_LD|BPF_W|BPF_IMM``), so the kernel's
checker accepts the prefix and ``SO_GET_FILTER`` returns it unchanged. A packet pays one
``ja``. ``read`` checks every field, so another program that happens to start with a ``ja``
is reported as foreign (None).

The digest is ``program_digest``: SHA-256 over the service name and the code after the
marker. A marker is no signature — anyone who can attach a filter can write one — but as the
digest is recomputed from the program read back, a genuine marker in front of other code (an
allow-all body) is told apart (``Marker.intact`` False: *modified*), and a forger who
recomputes the digest for their code shows a digest that is not the one the service's
policy compiles to. ``classify`` is the one reading of a read-back filter that ``guard_of``,
``attach`` and ``ls`` share.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Sequence

from sockgate.bpf.insn import BPF_IMM, BPF_JA, BPF_JMP, BPF_LD, BPF_W, Insn, decode, encode

MAGIC = 0x53474154  # "SGAT"
VERSION = 1
MAX_NAME = 255  # bytes of UTF-8
_LD_IMM = BPF_LD | BPF_W | BPF_IMM


FilterState = Literal["sockgate", "modified", "foreign", "none"]


@dataclass(frozen=True)
class Marker:
    service: str
    digest: str
    version: int = VERSION
    intact: bool = True  # the code after the marker is the code its digest was made from


@dataclass(frozen=True)
class Reading:
    """A socket's filter as read back (``SO_GET_FILTER``), classified: ``sockgate`` (an intact
    sockgate program), ``modified`` (a sockgate marker in front of other code: service and
    digest are only what the marker claims), ``foreign`` or ``none``."""

    state: FilterState
    instructions: int = 0
    service: str | None = None
    digest: str | None = None


def program_digest(service: str, body: Sequence[Insn]) -> str:
    """16 hex digits of SHA-256 over the service name and ``body``, the code after the marker."""
    h = hashlib.sha256(service.encode("utf-8", "surrogatepass") + b"\0")
    h.update(encode(body))
    return h.hexdigest()[:16]


def build(service: str, digest: str) -> tuple[Insn, ...]:
    """The marker instructions for ``service`` and a 16-hex-digit ``digest``."""
    name = service.encode("utf-8", "surrogatepass")  # a hosts_access name may hold an undecodable byte
    if len(name) > MAX_NAME:
        raise ValueError(f"service name longer than {MAX_NAME} bytes: {service[:40]!r}...")
    if len(digest) != 16 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"digest must be 16 lower-case hex digits, got {digest!r}")
    words = [MAGIC, (VERSION << 16) | len(name), int(digest[:8], 16), int(digest[8:], 16)]
    padded = name + b"\0" * (-len(name) % 4)
    words += [int.from_bytes(padded[i : i + 4], "big") for i in range(0, len(padded), 4)]
    return (Insn(BPF_JMP | BPF_JA, 0, 0, len(words)),) + tuple(Insn(_LD_IMM, 0, 0, w) for w in words)


def read(insns: Sequence[Insn]) -> Marker | None:
    """The marker of a sockgate program, or None for any other program."""
    if len(insns) < 6:
        return None
    head = insns[0]
    if head != Insn(BPF_JMP | BPF_JA, 0, 0, head.k) or not 4 <= head.k < len(insns):
        return None
    data = insns[1 : 1 + head.k]
    if any(i.code != _LD_IMM or i.jt or i.jf for i in data):
        return None
    words = [i.k for i in data]
    if words[0] != MAGIC or words[1] >> 16 != VERSION:
        return None
    length = words[1] & 0xFFFF
    if len(words) != 4 + (length + 3) // 4:
        return None
    raw = b"".join(w.to_bytes(4, "big") for w in words[4:])
    if any(raw[length:]):
        return None
    try:
        name = raw[:length].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    digest = f"{words[2]:08x}{words[3]:08x}"
    return Marker(name, digest, VERSION, program_digest(name, insns[1 + head.k :]) == digest)


def classify(raw: bytes | None) -> Reading:
    """What a filter read back with ``SO_GET_FILTER`` is (None: the socket has none)."""
    if raw is None:
        return Reading("none")
    try:
        insns = decode(raw)
    except ValueError:  # never from the kernel, which returns whole instructions
        return Reading("foreign", len(raw) // 8)
    mark = read(insns)
    if mark is None:
        return Reading("foreign", len(insns))
    return Reading("sockgate" if mark.intact else "modified", len(insns), mark.service, mark.digest)
