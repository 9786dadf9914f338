"""The edge that reads services(5) for the exporters (``/etc/services``: name → ports).

The parsing is pure (``sockgate.export.ports.parse_services``); this module only reads the
file. A missing or unreadable file is an empty database: lookups then fall back to nothing,
and the exporter's "no port known" error names the daemon and asks for ``--map``.
"""

from __future__ import annotations

from sockgate.export.ports import parse_services
from sockgate.policy.ir import Endpoint

SERVICES_PATH = "/etc/services"


def read_services(path: str = SERVICES_PATH) -> dict[str, tuple[Endpoint, ...]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_services(f.read())
    except OSError:
        return {}
