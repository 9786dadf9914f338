"""Where ``sockgate top`` reads from and what it asks the agent: the I/O edge of ``top``.

``Feed.snapshot`` takes one ``Snapshot``: the socket inventory ``ls`` shows (TCP and UDP:
what a filter can guard), the agent's status through its control socket (checked against the
schema before anything of it is used), and — only when no agent answers — the pinned eBPF
counters and bans, read as ``sockgate refused`` reads them. Each part that fails is kept as its
one-line reason, so the view says what is missing; nothing here raises for a part it could not
read. ``ban`` and ``unban`` are one request each through ``agent/client.call`` (what ``sockgate
ban`` and ``unban`` send), answered by the agent's one line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sockgate.agent.client import call, status
from sockgate.agent.protocol import Ban, Body, ProtocolError, Unban, UnbanOrigin, parse_network
from sockgate.bans import IPNetwork
from sockgate.errors import SockgateError, UsageError
from sockgate.refused import read_refused
from sockgate.socktable import Selection, list_sockets
from sockgate.top.model import Snapshot

REASON = "sockgate top"


class Actions(Protocol):
    """What the app asks of the host: a snapshot, a ban, an unban (one line back each)."""

    def snapshot(self) -> Snapshot: ...

    def ban(self, source: str, duration: int | None) -> str: ...

    def unban(self, source: str, origin: UnbanOrigin) -> str: ...


@dataclass(frozen=True)
class Feed:
    control: str
    bpffs_root: str
    selection: Selection = Selection(kinds=frozenset({"tcp", "udp"}))

    def snapshot(self) -> Snapshot:
        snap = Snapshot(wall=time.time())
        try:
            snap = replace(snap, sockets=tuple(list_sockets(self.selection)))
        except SockgateError as e:
            snap = replace(snap, sockets_error=str(e))
        try:
            snap = replace(snap, status=self._status())
        except SockgateError as e:
            snap = replace(snap, status_error=str(e))
        if snap.status is None:
            try:
                snap = replace(snap, refused=read_refused(self.bpffs_root))
            except SockgateError as e:
                snap = replace(snap, refused_error=str(e))
        return snap

    def _status(self) -> dict[str, Any]:
        return status(self.control)

    def ban(self, source: str, duration: int | None) -> str:
        net = _network(source)
        return self._send(Ban(net, duration, None, "manual", REASON), f"banned {net}")

    def unban(self, source: str, origin: UnbanOrigin) -> str:
        net = _network(source)
        return self._send(Unban(net, None, origin), f"unbanned {net}")

    def _send(self, body: Body, done: str) -> str:
        message = (call(self.control, body).result or {}).get("message")
        return message if isinstance(message, str) else done


def _network(source: str) -> IPNetwork:
    try:
        return parse_network(source)
    except ProtocolError as e:
        raise UsageError(e.message) from None
