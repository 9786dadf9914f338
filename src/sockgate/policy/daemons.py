"""Daemon-list evaluation for hosts_access rules (``sshd, in.ftpd EXCEPT x : ...``).

A daemon pattern is compared with the service name by libwrap's ``string_match`` (so
``ALL``, ``KNOWN`` — every name but ``unknown`` —, ``in.`` prefixes, ``.suffix`` and
case-insensitive wildcards all work there), and a ``daemon@host`` part with the server side
of the connection, whose unknown address or name is the word ``unknown`` as on the client
side (libwrap's ``server_match``).

``may_select`` answers statically, from the service name alone, whether a rule can apply
(``daemon@host`` parts are left to per-connection evaluation); ``daemon_matches`` decides for
one connection, given the peer's server address.
"""

from __future__ import annotations

from sockgate.peers import Peer
from sockgate.policy import hostmatch
from sockgate.policy.ir import AnyOf, DaemonMatch, DaemonPattern, Except, MatchAll


def may_select(d: DaemonMatch, service: str) -> bool:
    if isinstance(d, MatchAll):
        return True
    if isinstance(d, DaemonPattern):
        return hostmatch.daemon_name_matches(d.name, service)
    if isinstance(d, AnyOf):
        return any(may_select(i, service) for i in d.items)  # type: ignore[arg-type]
    if isinstance(d, Except):
        # The exclusion may depend on the server address: only a name-only exclusion that
        # surely matches rules the rule out statically.
        if not may_select(d.include, service):  # type: ignore[arg-type]
            return False
        return not _surely_selects(d.exclude, service)  # type: ignore[arg-type]
    raise TypeError(f"not a daemon match: {d!r}")  # pragma: no cover


def _surely_selects(d: DaemonMatch, service: str) -> bool:
    if isinstance(d, MatchAll):
        return True
    if isinstance(d, DaemonPattern):
        return d.server is None and hostmatch.daemon_name_matches(d.name, service)
    if isinstance(d, AnyOf):
        return any(_surely_selects(i, service) for i in d.items)  # type: ignore[arg-type]
    if isinstance(d, Except):
        return _surely_selects(d.include, service) and not may_select(d.exclude, service)  # type: ignore[arg-type]
    return False


def daemon_matches(d: DaemonMatch, service: str, peer: Peer) -> bool:
    from sockgate.decide import matches

    if isinstance(d, MatchAll):
        return True
    if isinstance(d, DaemonPattern):
        if not hostmatch.daemon_name_matches(d.name, service):
            return False
        if d.server is None:
            return True
        server = Peer(address=peer.server_address, name=peer.server_name)
        return matches(d.server, server)
    if isinstance(d, AnyOf):
        return any(daemon_matches(i, service, peer) for i in d.items)  # type: ignore[arg-type]
    if isinstance(d, Except):
        return daemon_matches(d.include, service, peer) and not daemon_matches(  # type: ignore[arg-type]
            d.exclude, service, peer  # type: ignore[arg-type]
        )
    raise TypeError(f"not a daemon match: {d!r}")  # pragma: no cover
