"""Reading the super-servers' configurations: which daemon xinetd, inetd or a systemd
``.socket`` unit starts on which port (parsed by the pure ``agent/superserver.py``).

Every file goes through the caller's reader (``agent/files.WatchingReader``: the project's
one reader, same limits), so the agent watches them and reloads when one changes; the audit
(``sockgate/audit.py``) reads them the same way once — each load with a read budget of its
own, not the policy's. A missing or unreadable xinetd or inetd file is no configuration, not
an error: most hosts run none of these super-servers. systemd's units are read as systemd
loads them (``agent/systemdunits.py``): one that exists but cannot be read or settled gives
launches of an unknown daemon with the reason, which status shows at the listener.
"""

from __future__ import annotations

import os

from sockgate.agent.files import WatchingReader
from sockgate.agent.superserver import Launch, parse_inetd, parse_xinetd, socket_launches, unknown_launches
from sockgate.agent.systemdunits import UnitLoader
from sockgate.agent.unitsyntax import Masked, NotFound, Unsettled, unit_name
from sockgate.errors import SockgateError
from sockgate.services_db import read_services


def read_launches(reader: WatchingReader, xinetd_conf: str | None, inetd_conf: str | None,
                  systemd_units: tuple[str, ...], services_file: str = "/etc/services") -> tuple[Launch, ...]:
    """The daemons the super-servers' configurations start (a missing file: none), read
    through ``reader`` (the agent's: a change of them reloads too)."""
    services = read_services(services_file)
    reader = reader.apart()  # a budget of their own: the policy's files cannot crowd them out
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
    out += _socket_units(systemd_units, reader)
    return tuple(out)


def _socket_units(dirs: tuple[str, ...], reader: WatchingReader) -> list[Launch]:
    """The launches of every socket unit in ``dirs`` (systemd's search path) as systemd loads
    it (``agent/systemdunits.py``): one per loaded unit (an alias is its target), a masked
    one none, an unsettled one unknown launches saying why."""
    try:
        units = UnitLoader(dirs, reader)
        names = units.sockets()
    except Unsettled as e:
        return unknown_launches(", ".join(dirs), f"systemd units: {e}")
    out: list[Launch] = []
    done: set[str] = set()
    for n in names:
        u = unit_name(n)
        assert u is not None
        try:
            loaded = units.load(u)
        except (Masked, NotFound):  # systemd listens for neither (a stale link in a .wants/ is no unit)
            continue
        except Unsettled as e:
            out += unknown_launches(n, f"systemd unit {n}: {e}")
            continue
        if str(loaded.name) in done:
            continue
        done.add(str(loaded.name))
        out += socket_launches(loaded.name, loaded.settings, loaded.path, lambda s: units.load(s).settings)
    return out
