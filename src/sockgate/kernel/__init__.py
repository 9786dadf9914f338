"""The one seam between compiled programs and sockets.

Every enforcement point — the library's ``guard``, ``run``, ``attach``/``detach``, ``ls`` and
the proxy — puts filters on sockets and reads them back through a ``Kernel``: ``compile`` a
service (pure), ``load`` the program (kernel objects made, nothing attached), ``apply`` it to
many sockets all-or-nothing (``transaction.apply``), ``read`` what a socket carries
(``GuardInfo``). A ``Kernel`` is a list of backends and the socket operations
(``FilterOps``); a new backend (eBPF) is one more ``Backend`` in the list, and tests build a
``Kernel`` over fake operations.

``default_kernel()`` is the real one, chosen once at import: classic BPF over ``linux.filter``,
then eBPF (``kernel.ebpf``) over ``linux.bpfsys``/``linux.bpffs``.

Which backend compiles a service (``compile(..., backend=)``): ``cbpf`` or ``ebpf`` as asked
(an unusable one is an error naming why); ``auto`` takes classic BPF when it can carry the
service, and the next backend only when classic refuses a service that backend compiles (more
ranges than one classic program holds; rate limits, which only eBPF enforces:
``Backend.enforces``): the pure compile is tried first, so a policy no backend takes never
touches bpf(2) or bpffs. A service too large for classic BPF, or with rate limits, says that
eBPF would take it (and, when this process cannot load eBPF, why not). No choice (None, the proxy's) is the first usable
backend, classic BPF.
"""

from __future__ import annotations

from typing import Collection, Literal, Sequence, assert_never

from sockgate.resolve.ranges import Banned
from sockgate.errors import CompileError, SockgateError, UnsupportedInKernel, UnsupportedPlatform
from sockgate.kernel import transaction
from sockgate.kernel.backend import Backend, BanLike, Compiled, FilterOps, Loaded
from sockgate.kernel.bpfops import LinuxBpf
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.ebpf import EbpfBackend
from sockgate.kernel.reading import Attached, BackendName, BpfFilter, ClassicFilter, GuardInfo, GuardState, NoFilter
from sockgate.kernel.sockets import LINUX_OPS
from sockgate.kernel.transaction import Applied, ChangeKind, Slot, Step
from sockgate.resolve import ResolvedService

BackendChoice = Literal["auto", "cbpf", "ebpf"]
BACKEND_CHOICES: tuple[BackendChoice, ...] = ("auto", "cbpf", "ebpf")


class Kernel:
    def __init__(self, backends: Sequence[Backend], ops: FilterOps) -> None:
        self.backends = tuple(backends)
        self.ops = ops

    def backend(self) -> Backend:
        """The first backend this process can use; UnsupportedPlatform naming why none."""
        reasons = []
        for b in self.backends:
            why = b.unavailable()
            if why is None:
                return b
            reasons.append(why)
        raise UnsupportedPlatform("; ".join(reasons) or "no kernel backend")

    def usable(self, name: str) -> Backend:
        """Backend ``name``, or UnsupportedPlatform saying why this process cannot use it."""
        b = transaction.named(self.backends, name)
        why = b.unavailable()
        if why is not None:
            raise UnsupportedPlatform(f"--backend {name}: {why}")
        return b

    def compile(self, service: ResolvedService, bans: Sequence[Banned] = (), backend: BackendChoice | None = None) -> Compiled:
        """The program for ``service`` from the backend ``backend`` names (module docstring);
        None: the first usable backend, for callers that offer no choice (the proxy)."""
        match backend:
            case None:
                return self.backend().compile(service, bans)
            case "auto":
                return self._compile_auto(service, bans)
            case "cbpf" | "ebpf":
                b = self.usable(backend)
                try:
                    return b.compile(service, bans)
                except CompileError as e:
                    raise CompileError(f"{e}{self._others_would_take(b, service, bans)}") from None
                except UnsupportedInKernel as e:
                    raise UnsupportedInKernel(f"{e}{self._others_would_take(b, service, bans, chr(10))}") from None
            case _:
                assert_never(backend)

    def _compile_auto(self, service: ResolvedService, bans: Sequence[Banned]) -> Compiled:
        first = self.backend()
        try:
            return first.compile(service, bans)
        except (CompileError, UnsupportedInKernel) as e:
            refused = e
        for b in self.backends:
            program = None if b is first else _try_compile(b, service, bans)
            if program is None:
                continue
            why = b.unavailable()
            if why is None:
                return program
            if isinstance(refused, CompileError):
                raise CompileError(f"{refused}; {b.name} would take it, but not here: {why}") from None
            raise UnsupportedInKernel(f"{refused}\n{b.name} would take it, but not here: {why}") from None
        raise refused

    def _others_would_take(self, tried: Backend, service: ResolvedService, bans: Sequence[Banned], sep: str = "; ") -> str:
        takers = [b.name for b in self.backends if b is not tried and _try_compile(b, service, bans) is not None]
        return f"{sep}{takers[0]} would take it (--backend {takers[0]} or auto)" if takers else ""

    def load(self, program: Compiled) -> Loaded:
        return transaction.named(self.backends, program.backend).load(program)

    def update_bans(self, target: Loaded | str, bans: Sequence[BanLike], ports: Collection[int] = (),
                    backend: BackendName = "ebpf") -> bool:
        """``bans`` made the bans of ``target`` in place (a loaded program: its own backend;
        a service name: ``backend``'s); False when that backend must recompile instead
        (``Backend.update_bans``)."""
        name = backend if isinstance(target, str) else target.compiled.backend
        return transaction.named(self.backends, name).update_bans(target, bans, ports)

    def read(self, fd: int, *, lock: bool = True) -> GuardInfo:
        """What socket ``fd`` carries, and whose it is; whether it is locked too unless
        ``lock`` is False (one system call fewer, for ``ls``, which does not show it)."""
        return transaction.read(self.backends, self.ops, fd, lock)

    def apply(self, steps: Sequence[Step]) -> tuple[Applied, ...]:
        """Every step or none (``transaction.apply``)."""
        return transaction.apply(self.backends, self.ops, steps)

    def lock(self, fd: int, label: str) -> None:
        """Lock socket ``fd``'s filter for its life (``SO_LOCK_FILTER``): the process holding
        it can no longer detach or replace it — nor can a reload."""
        self.ops.lock(fd, label)


def _try_compile(backend: Backend, service: ResolvedService, bans: Sequence[Banned]) -> Compiled | None:
    """``backend``'s (pure) program for ``service``, or None when it refuses it."""
    try:
        return backend.compile(service, bans)
    except SockgateError:
        return None


_DEFAULT = Kernel([ClassicBackend(LINUX_OPS), EbpfBackend(LinuxBpf())], LINUX_OPS)


def default_kernel() -> Kernel:
    return _DEFAULT


__all__ = [
    "BACKEND_CHOICES", "Applied", "Attached", "Backend", "BackendChoice", "BanLike", "BackendName", "BpfFilter", "ChangeKind", "ClassicFilter",
    "Compiled", "FilterOps", "GuardInfo", "GuardState", "Kernel", "Loaded", "NoFilter", "Slot",
    "Step", "default_kernel",
]
