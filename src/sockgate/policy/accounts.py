"""The account database as the policy core sees it: an injected lookup, no I/O here.

The edge (``sockgate.loading``) supplies the system's passwd/group database; tests supply a
dictionary. ``user``/``group`` rules are resolved to ids once, at load time, so a policy that
names an unknown user or group is rejected with its position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Accounts(Protocol):
    def uid(self, name: str) -> int | None: ...

    def gid(self, name: str) -> int | None: ...


@dataclass(frozen=True)
class StaticAccounts:
    """An account database from dictionaries (tests, and platforms without one)."""

    users: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)

    def uid(self, name: str) -> int | None:
        return self.users.get(name)

    def gid(self, name: str) -> int | None:
        return self.groups.get(name)
