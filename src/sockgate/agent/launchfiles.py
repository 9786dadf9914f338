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
from sockgate.agent.superserver import Launch, UnitText, dropin_dirs, parse_inetd, parse_socket_unit, parse_xinetd
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
    its service unit found in the same order, both with their drop-ins. Only existing
    directories are listed (and so watched): a missing one is not a problem to report, and
    creating one changes its parent's listing, which is watched."""
    listed = [d for d in dirs if os.path.isdir(d)]
    names: dict[str, str] = {}
    for d in listed:
        for n in sorted(_listdir(reader, d)):
            names.setdefault(n, d)

    def unit_text(unit: str) -> UnitText | None:
        d = names.get(unit)
        main = None if d is None else text(os.path.join(d, unit))
        return None if main is None else [main, *_dropins(unit, listed, reader, text)]

    out: list[Launch] = []
    for n, d in sorted(names.items()):
        if n.endswith(".socket") and (t := unit_text(n)) is not None:
            out += parse_socket_unit(n, t, os.path.join(d, n), unit_text)
    return out


def _dropins(unit: str, dirs: list[str], reader: WatchingReader, text: Callable[[str], str | None]) -> list[str]:
    """The texts of ``unit``'s drop-ins in the order they apply (``superserver`` module doc:
    a name is taken from the first directory having it, the files applied by name)."""
    chosen: dict[str, str] = {}
    for d in dirs:
        for sub in dropin_dirs(unit):
            where = os.path.join(d, sub)
            if os.path.isdir(where):
                for n in _listdir(reader, where):
                    if n.endswith(".conf"):
                        chosen.setdefault(n, os.path.join(where, n))
    return [t for n in sorted(chosen) if (t := text(chosen[n])) is not None]


def _listdir(reader: WatchingReader, directory: str) -> list[str]:
    try:
        return reader.listdir(directory)
    except (OSError, SockgateError):
        return []
