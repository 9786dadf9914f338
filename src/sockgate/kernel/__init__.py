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

Which backend compiles a service (``choose``, then ``compile(..., backend=)``): ``cbpf`` or
``ebpf`` as asked (an unusable one is an error naming why); ``auto`` is eBPF when this process
may load it, else classic BPF. Whether it may is probed once per process, bpf filesystem and
effective uid (``EbpfBackend.unavailable``: an LPM-trie map made and a trivial socket filter
verified, both closed, and the bpffs directories; EPERM, ENOSYS, a verifier's refusal or an unusable bpffs
send ``auto`` to classic BPF, and ``Chosen.why`` says so on the start-up line). The choice is
made before anything is compiled and never changes after: when eBPF was chosen and a later
load fails, that is an error, never a socket left with a weaker filter or none. A service the
chosen backend refuses says which other backend would take it (``--backend ebpf``, or why it
cannot here): a policy too large for classic BPF, or with rate limits, names eBPF.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Chosen:
    """The backend a ``BackendChoice`` came to, and why (the start-up line's words)."""

    name: BackendName
    why: str

    def describe(self) -> str:
        return f"backend {self.name} ({self.why})"


class Kernel:
    def __init__(self, backends: Sequence[Backend], ops: FilterOps, prefer: Sequence[str] = ("ebpf",)) -> None:
        """``backends`` in the order a filter is recognised (``read``); ``prefer``: the
        names ``auto`` tries first, the rest following in list order."""
        self.backends = tuple(backends)
        self.ops = ops
        self.prefer = tuple(prefer)

    def usable(self, name: str) -> Backend:
        """Backend ``name``, or UnsupportedPlatform saying why this process cannot use it."""
        b = transaction.named(self.backends, name)
        why = b.unavailable()
        if why is not None:
            raise UnsupportedPlatform(f"--backend {name}: {why}")
        return b

    def choose(self, backend: BackendChoice = "auto") -> Chosen:
        """The backend ``backend`` names (module docstring); UnsupportedPlatform naming why
        when ``auto`` finds none usable. Asked by name, usability is checked by ``compile``."""
        match backend:
            case "cbpf" | "ebpf":
                return Chosen(backend, f"--backend {backend}")
            case "auto":
                return self._auto()
            case _:
                assert_never(backend)

    def _auto(self) -> Chosen:
        order = sorted(self.backends, key=lambda b: self.prefer.index(b.name) if b.name in self.prefer else len(self.prefer))
        passed: list[str] = []
        for b in order:
            why = b.unavailable()
            if why is None:
                return Chosen(b.name, f"auto: {'; '.join(passed)}" if passed else f"auto: this process may load {b.name}")
            passed.append(f"{b.name} unavailable: {why}")
        raise UnsupportedPlatform("; ".join(passed) or "no kernel backend")

    def compile(self, service: ResolvedService, bans: Sequence[Banned] = (), backend: BackendChoice = "auto") -> Compiled:
        """The program for ``service`` from the backend ``backend`` names (``choose``)."""
        chosen = self.choose(backend)
        b = self.usable(chosen.name) if backend != "auto" else transaction.named(self.backends, chosen.name)
        try:
            return b.compile(service, bans)
        except CompileError as e:
            raise CompileError(f"{e}{self._others_would_take(b, service, bans)}") from None
        except UnsupportedInKernel as e:
            raise UnsupportedInKernel(f"{e}{self._others_would_take(b, service, bans, chr(10))}") from None

    def _others_would_take(self, tried: Backend, service: ResolvedService, bans: Sequence[Banned], sep: str = "; ") -> str:
        """Which other backend compiles what ``tried`` refused, and how to ask for it (or why
        this process cannot); empty when none does."""
        for b in self.backends:
            if b is tried or _try_compile(b, service, bans) is None:
                continue
            why = b.unavailable()
            if why is not None:
                return f"{sep}{b.name} would take it, but not here: {why}"
            auto = " or auto" if self._auto().name == b.name else ""
            return f"{sep}{b.name} would take it (--backend {b.name}{auto})"
        return ""

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
    "BACKEND_CHOICES", "Applied", "Attached", "Backend", "BackendChoice", "BanLike", "BackendName", "BpfFilter", "ChangeKind", "Chosen",
    "ClassicFilter",
    "Compiled", "FilterOps", "GuardInfo", "GuardState", "Kernel", "Loaded", "NoFilter", "Slot",
    "Step", "default_kernel",
]
