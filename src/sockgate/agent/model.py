"""The agent's shared value types: what it wants, what it sees, what it could not do.

Every part of the agent — the watcher, the planner, the applier, the status document — speaks
in these values, so each can be written and tested against the others' fakes. Pure: frozen
dataclasses and closed sets of names, no system interface (tests/core/test_agent_model.py
imports this module in a fresh interpreter and checks that).

Identity of a socket is its *cookie* (``SO_COOKIE``, ``idiag_cookie``,
``bpf_get_socket_cookie``): a 64-bit number the kernel never reuses within a boot, so a
service restarted on the same port is a new socket, never mistaken for the old one. 0 means
"not known" (the poll fallback reading the /proc tables has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Proto = Literal["tcp", "udp"]
Family = Literal[4, 6]
EventKind = Literal["bind", "listen", "release", "lost", "resync"]
GuardKind = Literal["none", "sockgate", "modified", "foreign", "ebpf"]
UnguardedKind = Literal["permission", "locked", "foreign", "modified", "gone", "no-holder", "kernel", "conflict"]

PROTOS: tuple[Proto, ...] = get_args(Proto)
MAX_PORT = 65535
COMM_LEN = 15  # TASK_COMM_LEN less its NUL: what /proc/PID/comm and bpf_get_current_comm give


@dataclass(frozen=True)
class Endpoint:
    """A protocol and an inclusive port range: ``tcp/22``, ``udp/5000-5010``."""

    proto: Proto
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.proto not in PROTOS:
            raise ValueError(f"not a protocol: {self.proto!r}")
        if not 0 < self.first <= self.last <= MAX_PORT:
            raise ValueError(f"not a port range: {self.first}-{self.last}")

    def covers(self, proto: str, port: int) -> bool:
        return proto == self.proto and self.first <= port <= self.last

    def __str__(self) -> str:
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.proto}/{ports}"


@dataclass(frozen=True)
class Selector:
    """Which sockets belong to a service: by endpoint (native policy) or by the process
    holding them (a hosts_access daemon name), plus ``mapped`` ports (``--map DAEMON=PROTO/PORT``)
    whoever holds them."""

    endpoints: tuple[Endpoint, ...] = ()
    daemon: str | None = None
    mapped: tuple[Endpoint, ...] = ()
    launched: tuple[Endpoint, ...] = ()  # ports a super-server listens on for the daemon (agent/superserver.py)

    def covers_port(self, proto: str, port: int) -> bool:
        """Whether the port alone puts a socket in this service (the daemon needs its holder)."""
        return any(e.covers(proto, port) for e in (*self.endpoints, *self.mapped))


@dataclass(frozen=True)
class Want:
    """What a service's sockets should carry: the program of this digest, by this backend."""

    service: str
    backend: Literal["cbpf", "ebpf"]
    digest: str  # of the compiled program (policy + effective bans + name answers)


@dataclass(frozen=True)
class HolderInfo:
    """One process holding a socket, and the descriptor it holds it by."""

    pid: int
    fd: int
    comm: str  # /proc/PID/comm of the group leader, at most COMM_LEN characters
    argv0: str | None  # basename of argv[0]; None when unreadable (zombie, kernel thread)
    euid: int | None = None  # effective uid; None when unreadable
    exe: str | None = None  # /proc/PID/exe's target; None when unreadable
    exe_root_owned: bool = False  # that file is root's and not group/other-writable


@dataclass(frozen=True)
class GuardState:
    """What is on a socket now, as the kernel tells (a pure mirror of the kernel seam's
    reading, so the planner imports no kernel module)."""

    state: GuardKind
    service: str | None = None
    digest: str | None = None
    backend: str | None = None
    locked: bool = False


@dataclass(frozen=True)
class Observed:
    """One socket as seen: identity, address, namespace, holders and guard."""

    cookie: int
    proto: Proto
    family: Family
    local_addr: str
    port: int
    netns: int  # the netns inode (what `ip netns identify` and `lsns` show)
    holders: tuple[HolderInfo, ...]
    guard: GuardState
    unreadable: str | None = None  # why holders or guard could not be read (EPERM, gone)

    def local_text(self) -> str:
        """``0.0.0.0:22``, ``[::]:22``: the local address as logs, status and the audit show it."""
        return f"[{self.local_addr}]:{self.port}" if self.family == 6 else f"{self.local_addr}:{self.port}"


@dataclass(frozen=True)
class SocketEvent:
    """A socket the watcher noticed, or a note about the watching itself.

    ``bind``: a UDP socket was bound; ``listen``: a TCP socket began listening; ``release``: a
    tracked socket closed; ``lost``: events were dropped (``port`` carries nothing, ``cookie``
    the number lost when known); ``resync``: the watcher cannot vouch for what it reported —
    the consumer rescans everything."""

    kind: EventKind
    cookie: int  # 0: not known
    netns_cookie: int  # 0: not known
    pid: int  # the process (thread group) id in the host's pid namespace; 0: not known
    comm: str  # as the process named itself: any characters, escape before showing it
    family: Family
    proto: Proto
    port: int
    ts_ns: int  # CLOCK_MONOTONIC

    @property
    def is_socket(self) -> bool:
        """A socket to look at (not a note about the watching)."""
        return self.kind in ("bind", "listen", "release")


def resync(ts_ns: int, lost: int = 0) -> SocketEvent:
    """The note that asks for a full rescan (after ``lost`` events were dropped)."""
    return SocketEvent("resync", lost, 0, 0, "", 4, "tcp", 0, ts_ns)


RESYNC_MIN = 1.0  # seconds: the least time between two full rescans the watcher asks for
RESYNC_MAX = 30.0  # seconds: the longest a needed rescan waits while they keep being needed


@dataclass
class ResyncPacer:
    """When a needed full rescan may go out. Any local user can overflow the watch ring (a
    ``listen()`` loop needs no privilege), and every overflow needs a rescan: without a pace
    the agent would rescan back to back. So rescans are coalesced — one pending stands for
    any number — and spaced: ``min_s`` apart at first, the spacing doubled (up to ``max_s``)
    each time one follows the last within twice the spacing, back to ``min_s`` after a quiet
    one. A pending rescan is never dropped: it goes out at most ``max_s`` after it was
    asked for (the consumer calls ``take`` again after ``due_in``), so the agent stays
    eventually consistent."""

    min_s: float = RESYNC_MIN
    max_s: float = RESYNC_MAX
    spacing: float = RESYNC_MIN
    last_ns: int | None = None
    pending: bool = False

    def ask(self) -> None:
        self.pending = True

    def due_in(self, now_ns: int) -> float | None:
        """Seconds until the pending rescan may go out (0 or less: now); None if none is."""
        if not self.pending:
            return None
        return 0.0 if self.last_ns is None else self.spacing - (now_ns - self.last_ns) / 1e9

    def take(self, now_ns: int) -> bool:
        """Whether the pending rescan goes out now (then it is no longer pending)."""
        left = self.due_in(now_ns)
        if left is None or left > 0:
            return False
        if self.last_ns is not None and (now_ns - self.last_ns) / 1e9 < 2 * self.spacing:
            self.spacing = min(self.spacing * 2, self.max_s)
        else:
            self.spacing = self.min_s
        self.last_ns, self.pending = now_ns, False
        return True


@dataclass(frozen=True)
class Unguarded:
    """A socket the agent could not guard, and why; reported, never silently skipped."""

    cookie: int
    reason: str  # one line, with the errno text and the advice
    kind: UnguardedKind
    attempts: int
    retry_at: float | None  # None: not retried until something changes (locked, foreign)
