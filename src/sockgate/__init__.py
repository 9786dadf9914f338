"""sockgate: decide who may talk to a socket, and make the kernel enforce it.

Public API::

    policy = sockgate.load("/etc/sockgate/policy.conf")
    sockgate.check(policy, "ssh", "192.0.2.7")       # -> Decision
    policy.guard(sock, "ssh")                         # attach the compiled filter (Linux)
    sockgate.guard_of(sock)                           # read it back
    sockgate.unguard(sock)
    sockgate.peer(conn)                               # Unix peer credentials as a Peer
"""

from __future__ import annotations

import importlib
from typing import Any

from sockgate.decide import Decision, decide
from sockgate.errors import (
    AdapterError,
    CompileError,
    PeerError,
    PolicyError,
    SockgateError,
    UnsupportedInKernel,
    UsageError,
)
from sockgate.loading import load, load_policy
from sockgate.peers import Peer
from sockgate.policy.ir import Action, Policy, bind_guard

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AdapterError",
    "CompileError",
    "Decision",
    "Peer",
    "PeerError",
    "Policy",
    "PolicyError",
    "SockgateError",
    "UnsupportedInKernel",
    "UsageError",
    "check",
    "decide",
    "guard_of",
    "load",
    "load_policy",
    "peer",
    "unguard",
]


def check(policy: Policy, service: str, client: str | Peer) -> Decision:
    """Decide one client (an address literal or a Peer) for ``service``; no name lookups."""
    p = client if isinstance(client, Peer) else Peer.parse(client)
    return decide(policy, service, p)


def _guard(policy: Policy, sock: Any, service: str, backend: str = "auto") -> Any:
    """``Policy.guard``: the kernel-facing module is imported when first used, so that
    ``import sockgate`` stays cheap and works on every platform."""
    from sockgate.guard import guard  # lazy on purpose: the kernel-facing module, see above

    return guard(policy, sock, service) if backend == "auto" else guard(policy, sock, service, backend=backend)


bind_guard(_guard)


def __getattr__(name: str) -> Any:
    # The kernel-facing API lives in sockgate.guard; import it only when asked for so that
    # `import sockgate` stays cheap and works on every platform.
    if name in ("unguard", "guard_of", "peer"):
        return getattr(importlib.import_module("sockgate.guard"), name)
    raise AttributeError(name)
