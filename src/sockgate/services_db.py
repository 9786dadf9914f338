"""The edge that reads services(5) for the exporters (``/etc/services``: name → ports).

The parsing is pure (``sockgate.export.ports.parse_services``); this module only reads the
file. The system database is optional: when /etc/services is missing (a minimal container)
it is an empty database, lookups fall back to nothing, and the exporter's "no port known"
error names the daemon and asks for ``--map``. A file the operator named
(``--services-file``) must be readable: a typo in its path would otherwise look like a
database without the service.
"""

from __future__ import annotations

from sockgate.errors import AdapterError
from sockgate.export.ports import parse_services
from sockgate.policy.ir import Endpoint

SERVICES_PATH = "/etc/services"


def read_services(path: str = SERVICES_PATH, *, required: bool = False) -> dict[str, tuple[Endpoint, ...]]:
    """services(5) at ``path``; an unreadable file is empty unless ``required``."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_services(f.read())
    except OSError as e:
        if required:
            raise AdapterError(f"cannot read services file {path}: {e.strerror}", errno=e.errno, target=path) from None
        return {}
