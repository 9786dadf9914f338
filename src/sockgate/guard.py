"""Library entry points: put a compiled policy on a socket, read it back, take it off.

``guard(policy, sock, service)`` first resolves the service and compiles it completely (every
rule validated, the program sized against the kernel's limits); only then does it attach it,
through the kernel seam (``sockgate.kernel``), in one step that replaces any filter already
there atomically (the kernel swaps the program under RCU: no packet ever sees the socket
unfiltered). So a bad policy raises before the socket is touched, and guarding again with a
new policy is a reload.

``guard_of`` reads the filter back and says whose it is (``GuardInfo``, the reading ``ls`` and
``attach`` share): sockgate's programs are recognised by their marker, the service name and
the program's digest recomputed from the code read back; a marker in front of other code is
*modified*, and ``attach``/``detach`` treat it as foreign.

Kernel enforcement is Linux-only: the platform is chosen once, at import. Elsewhere these
functions raise ``UnsupportedPlatform``, and ``sockgate.check`` / the proxy still decide in user
space.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from sockgate.errors import UnsupportedPlatform, UsageError
from sockgate.kernel import BACKEND_CHOICES, BackendChoice, ChangeKind, Chosen, Compiled, GuardInfo, Slot, Step, default_kernel
from sockgate.kernel.cbpf import UNSUPPORTED
from sockgate.linux import peercred
from sockgate.linux.fd import Sockish, fileno
from sockgate.peers import Peer
from sockgate.policy.ir import Policy
from sockgate.resolve import resolve

_UNSUPPORTED: str | None = UNSUPPORTED

LIBRARY_ADVICE = (
    "guard it as root or with that capability, e.g. with `sockgate run`, which binds and guards"
    " as root and then drops privileges"
)

__all__ = ["GuardInfo", "Guarded", "chosen_backend", "compile_guard", "guard", "guard_of", "peer", "unguard"]


@dataclass(frozen=True)
class Guarded:
    """What ``guard`` attached."""

    service: str
    digest: str
    instructions: int
    backend: str = "cbpf"  # "cbpf" or "ebpf"
    why: str = ""  # why that backend: "auto: this process may load ebpf", "--backend cbpf", ...

    @classmethod
    def of(cls, program: Compiled, why: str = "") -> Guarded:
        return cls(program.service, program.digest, program.instructions, program.backend, why)

    def describe(self) -> str:
        """``backend NAME (why)``, as start-up lines say it."""
        return f"backend {self.backend} ({self.why})" if self.why else f"backend {self.backend}"


def require_kernel() -> None:
    if _UNSUPPORTED is not None:
        raise UnsupportedPlatform(_UNSUPPORTED)


def backend_choice(name: str) -> BackendChoice:
    """``name`` as a backend choice, or a UsageError listing the choices."""
    for choice in BACKEND_CHOICES:
        if name == choice:
            return choice
    raise UsageError(f"expected a backend ({', '.join(BACKEND_CHOICES)}), found {name[:24]!r}")


def compile_guard(policy: Policy, service: str, backend: str = "auto") -> Compiled:
    """The program for ``service`` from ``backend`` (auto, cbpf, ebpf: docs/ebpf.md): raises
    (PolicyError, UnsupportedInKernel, CompileError, UsageError for an unknown service,
    UnsupportedPlatform for a backend this process cannot use) without touching any socket."""
    return default_kernel().compile(resolve(policy, service), backend=backend_choice(backend))


def chosen_backend(backend: str = "auto") -> Chosen:
    """The backend ``backend`` comes to in this process, and why (``Kernel.choose``: for
    ``auto``, eBPF when this process may load it, probed once)."""
    return default_kernel().choose(backend_choice(backend))


def guard(policy: Policy, sock: Sockish, service: str, backend: str = "auto") -> Guarded:
    """Attach ``policy``'s filter for ``service`` to ``sock`` (a socket object or an fd).

    Replaces whatever filter the socket had, in one atomic step; raises ``AdapterError`` when
    the socket's filter is locked. Nothing is attached if compiling fails. ``backend``
    chooses classic BPF or eBPF (``"auto"``: eBPF when this process may load it, else
    classic; ``Guarded.backend`` and ``Guarded.why`` say which and why). When eBPF was chosen
    and loading fails, that raises: the socket is never left with a weaker filter."""
    require_kernel()
    kernel = default_kernel()
    why = chosen_backend(backend).why
    program = kernel.load(compile_guard(policy, service, backend))
    fd = fileno(sock)
    kernel.apply([Step(Slot(fd, f"fd {fd}", LIBRARY_ADVICE), program)])
    return Guarded.of(program.compiled, why)


def unguard(sock: Sockish) -> bool:
    """Remove the socket's filter (whoever put it there); False when it had none."""
    require_kernel()
    fd = fileno(sock)
    (done,) = default_kernel().apply([Step(Slot(fd, f"fd {fd}"), None)])
    return done.change is ChangeKind.DETACHED


def guard_of(sock: Sockish) -> GuardInfo:
    """Read the socket's filter back and say whose it is."""
    require_kernel()
    return default_kernel().read(fileno(sock))


def peer(conn: Sockish) -> Peer:
    """The peer of a connected socket: Unix credentials (uid, gid, groups, pid, exe) through
    SO_PEERCRED / SO_PEERGROUPS / SO_PEERPIDFD, or an IP peer's address and port."""
    fd = fileno(conn)
    if _UNSUPPORTED is not None:
        with peercred.borrowed_socket(fd) as s:
            if s.family == socket.AF_UNIX:
                raise UnsupportedPlatform(f"Unix peer credentials: {_UNSUPPORTED}")
    return peercred.peer_of(fd)

