"""Reading the super-servers' configurations: which daemon xinetd, inetd or a systemd
``.socket`` unit starts on which port (parsed by the pure ``agent/superserver.py``).

Every file goes through the caller's reader (``agent/files.WatchingReader``: the project's
one reader, same limits), so the agent watches them and reloads when one changes; the audit
(``sockgate/audit.py``) reads them the same way once. A missing or unreadable file is no
configuration, not an error: most hosts run none of these super-servers.
"""

from __future__ import annotations

import os
from typing import Callable

from sockgate.agent.files import WatchingReader
from sockgate.agent.superserver import Launch, parse_inetd, parse_socket_unit, parse_xinetd
from sockgate.errors import SockgateError
from sockgate.services_db import read_services


def read_launches(reader: WatchingReader, xinetd_conf: str | None, inetd_conf: str | None,
                  systemd_units: tuple[str, ...], services_file: str = "/etc/services") -> tuple[Launch, ...]:
    """The daemons the super-servers' configurations start (a missing file: none), read
    through ``reader`` (the agent's: a change of them reloads too)."""
    services = read_services(services_file)
    out: list[Launch] = []

    def text(path: str) -> str | None:
        try:
            return reader(path)
        except (OSError, SockgateError):
            return None

    def include(directory: str) -> list[tuple[str, str]]:
        try:
            names = sorted(reader.listdir(directory))
        except (OSError, SockgateError):
            return []
        paths = [os.path.join(directory, n) for n in names if "." not in n and not n.endswith("~")]
        return [(p, t) for p in paths if (t := text(p)) is not None]

    if xinetd_conf and (xinetd := text(xinetd_conf)) is not None:
        out += parse_xinetd(xinetd, xinetd_conf, services, include)
    if inetd_conf and (inetd := text(inetd_conf)) is not None:
        out += parse_inetd(inetd, inetd_conf, services)
    out += _socket_units(systemd_units, reader, text)
    return tuple(out)


def _socket_units(dirs: tuple[str, ...], reader: WatchingReader, text: Callable[[str], str | None]) -> list[Launch]:
    """The launches of every ``.socket`` unit in ``dirs`` (the first of a name wins), each with
    its service unit found in the same order. Only existing directories are listed (and so
    watched): a missing one is not a problem to report."""
    listed = [d for d in dirs if os.path.isdir(d)]
    names: dict[str, str] = {}
    for d in listed:
        try:
            found = reader.listdir(d)
        except (OSError, SockgateError):
            continue
        for n in sorted(found):
            names.setdefault(n, d)

    def service_text(unit: str) -> str | None:
        d = names.get(unit)
        return None if d is None else text(os.path.join(d, unit))

    out: list[Launch] = []
    for n, d in sorted(names.items()):
        if n.endswith(".socket") and (t := text(os.path.join(d, n))) is not None:
            out += parse_socket_unit(n, t, os.path.join(d, n), service_text)
    return out
