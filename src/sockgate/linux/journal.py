"""The systemd journal's native protocol: one datagram of ``FIELD=value`` lines per entry.

Hand-written because the protocol is a few lines and the library for it (python-systemd's
``systemd.journal``) is a C extension built against libsystemd, which sockgate does not
depend on: a host without it, or a venv, would lose the journal sink. Native entries, unlike
syslog lines, carry structured fields (``SOCKGATE_SOURCE=203.0.113.5``), which
``journalctl SOCKGATE_SERVICE=ssh`` and fail2ban's systemd backend can match on.

The protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL, ``sd_journal_sendv``): a datagram to
``/run/systemd/journal/socket``; each field is ``NAME=value\\n``, or, when the value holds a
newline, ``NAME\\n`` + the value's length as a little-endian u64 + the value + ``\\n``. Names
are upper-case letters, digits and ``_``, not starting with ``_`` (those are the journal's
own trusted fields), at most 64 characters. An entry too large for one datagram would need a
memfd; sockgate's entries are a few hundred bytes, and a longer value is cut at
``MAX_VALUE``.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Iterable

from sockgate.errors import AdapterError
from sockgate.linux._errors import translated

JOURNAL_SOCKET = "/run/systemd/journal/socket"
MAX_VALUE = 8192
_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")
_LE64 = struct.Struct("<Q")


def field_name(name: str) -> str:
    """``name`` as a valid journal field name (``peer-addr`` → ``PEER_ADDR``)."""
    out = re.sub(r"[^A-Z0-9_]", "_", name.upper()).lstrip("_")[:64]
    return out or "FIELD"


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    """One native-protocol entry. Raises ValueError for an invalid field name."""
    parts: list[bytes] = []
    for name, value in fields:
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a journal field name: {name!r}")
        raw = value.encode("utf-8", "backslashreplace")[:MAX_VALUE]
        if b"\n" in raw:
            parts.append(name.encode() + b"\n" + _LE64.pack(len(raw)) + raw + b"\n")
        else:
            parts.append(name.encode() + b"=" + raw + b"\n")
    return b"".join(parts)


class Journal:
    """A connected socket to journald; ``send`` one entry per call."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            with translated(f"connect to the systemd journal at {path}"):
                self._sock.connect(path)
        except AdapterError:
            self._sock.close()
            raise

    def send(self, fields: Iterable[tuple[str, str]]) -> None:
        with translated(f"write to the systemd journal at {self.path}"):
            self._sock.send(encode(fields))

    def close(self) -> None:
        self._sock.close()
