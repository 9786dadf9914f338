"""The seam's two ports: a ``Backend`` (one way of putting a compiled policy into the
kernel: classic BPF today, eBPF next) and ``FilterOps`` (the socket side: what is attached,
detach, the socket's family and type).

A program goes through three forms. ``compile`` is pure and may refuse (UnsupportedInKernel,
CompileError) before anything exists in the kernel. ``load`` makes the kernel objects without
attaching them — for eBPF, where the verifier runs and maps are created and pinned; for
classic BPF the encoded bytes — so a program the kernel refuses fails before any socket is
touched. ``attach`` puts a loaded program on one socket, replacing what was there in one
step. The transaction (``transaction.apply``) drives many attaches and, on failure, asks the
backend that owns each previous program to ``restore`` it.

What a backend holds between ``load`` and the sockets (an eBPF program fd, map fds, bpffs
pins) lives inside its ``Loaded`` value; callers only ever pass it back.
"""

from __future__ import annotations

import ipaddress
from typing import Collection, Protocol, Sequence

from sockgate.resolve.ranges import Banned
from sockgate.kernel.reading import Attached, BackendName, GuardInfo
from sockgate.policy.needs import Need
from sockgate.resolve import ResolvedService


class BanLike(Protocol):
    """A ban as a backend takes it: a network refused until ``expires_ns`` (CLOCK_MONOTONIC
    ns, 0 never) on ``origin``'s word (the numbers of ``sockgate.bans.Origin``).
    ``sockgate.bans.BannedPrefix`` fits as it is, and so does any source's own type."""

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network: ...
    @property
    def expires_ns(self) -> int: ...
    @property
    def origin(self) -> int: ...


class Compiled(Protocol):
    """A program compiled for one service (``bpf.Program`` for classic BPF); no kernel object."""

    @property
    def backend(self) -> BackendName: ...
    @property
    def service(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def instructions(self) -> int: ...


class Loaded(Protocol):
    """A compiled program made ready for sockets by its backend's ``load``."""

    @property
    def compiled(self) -> Compiled: ...


class Backend(Protocol):
    @property
    def name(self) -> BackendName: ...

    @property
    def enforces(self) -> frozenset[Need]:
        """What its programs enforce beyond the source address (``ResolvedService.refusal``
        refuses the rest)."""

    def unavailable(self) -> str | None:
        """Why this process cannot use the backend (platform, privileges), or None."""

    def compile(self, service: ResolvedService, bans: Sequence[Banned] = ()) -> Compiled:
        """Pure: the program for ``service``, ``bans`` denied before any rule."""

    def load(self, program: Compiled) -> Loaded:
        """Kernel objects made, nothing attached; raises when the kernel refuses them."""

    def attach(self, fd: int, program: Loaded, label: str) -> None:
        """Put ``program`` on socket ``fd``, replacing its filter atomically; ``label`` names
        the socket in errors."""

    def recognise(self, attached: Attached) -> GuardInfo | None:
        """What ``attached`` is if it is this backend's kind of program (one it can
        ``restore``), else None."""

    def restore(self, fd: int, previous: Attached, label: str) -> None:
        """Put ``previous`` back on ``fd``: a program this backend's ``recognise`` claimed
        (claiming one is promising this)."""

    def update_bans(self, target: Loaded | str, bans: Sequence[BanLike], ports: Collection[int] = ()) -> bool:
        """Make ``bans`` the bans of ``target`` (a loaded program, or a service by name) in
        place, ending the newly banned sources' established TCP connections on ``ports``;
        True when done. False when this backend compiles bans into the program: the caller
        must recompile with them and apply the program to the service's sockets."""


class FilterOps(Protocol):
    """The socket side of the seam, whatever the backend: a port so that the transaction
    runs without sockets in tests. Putting a program on is each backend's own call (its
    adapter: ``cbpf.ClassicOps``), since each kind of program goes on its own way."""

    def read(self, fd: int) -> Attached:
        """What is attached."""

    def is_locked(self, fd: int) -> bool:
        """Whether the filter is locked (SO_LOCK_FILTER): it cannot be changed or removed."""

    def family(self, fd: int, label: str) -> int:
        """The socket's address family; AdapterError when ``fd`` is no open socket."""

    def is_tcp(self, fd: int) -> bool: ...

    def detach(self, fd: int, label: str) -> bool:
        """Remove the filter; False when there was none."""

    def lock(self, fd: int, label: str) -> None:
        """Lock the filter (SO_LOCK_FILTER): from then on nobody — the process holding the
        socket included — can change or remove it, for the socket's life."""
