"""The one seam between compiled programs and sockets.

Every enforcement point — the library's ``guard``, ``run``, ``attach``/``detach``, ``ls`` and
the proxy — puts filters on sockets and reads them back through a ``Kernel``: ``compile`` a
service (pure), ``load`` the program (kernel objects made, nothing attached), ``apply`` it to
many sockets all-or-nothing (``transaction.apply``), ``read`` what a socket carries
(``GuardInfo``). A ``Kernel`` is a list of backends and the socket operations
(``FilterOps``); a new backend (eBPF) is one more ``Backend`` in the list, and tests build a
``Kernel`` over fake operations.

``default_kernel()`` is the real one, chosen once at import: classic BPF over ``linux.filter``.
"""

from __future__ import annotations

from typing import Sequence

from sockgate.bpf.ranges import Banned
from sockgate.errors import UnsupportedPlatform
from sockgate.kernel import transaction
from sockgate.kernel.backend import Backend, Compiled, FilterOps, Loaded
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.reading import Attached, BackendName, BpfFilter, ClassicFilter, GuardInfo, GuardState, NoFilter
from sockgate.kernel.sockets import LINUX_OPS
from sockgate.kernel.transaction import Applied, ChangeKind, Slot, Step
from sockgate.policy.ir import Service


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

    def compile(self, service: Service, bans: Sequence[Banned] = ()) -> Compiled:
        return self.backend().compile(service, bans)

    def load(self, program: Compiled) -> Loaded:
        return transaction.named(self.backends, program.backend).load(program)

    def read(self, fd: int, *, lock: bool = True) -> GuardInfo:
        """What socket ``fd`` carries, and whose it is; whether it is locked too unless
        ``lock`` is False (one system call fewer, for ``ls``, which does not show it)."""
        return transaction.read(self.backends, self.ops, fd, lock)

    def apply(self, steps: Sequence[Step]) -> tuple[Applied, ...]:
        """Every step or none (``transaction.apply``)."""
        return transaction.apply(self.backends, self.ops, steps)


_DEFAULT = Kernel([ClassicBackend(LINUX_OPS)], LINUX_OPS)


def default_kernel() -> Kernel:
    return _DEFAULT


__all__ = [
    "Applied", "Attached", "Backend", "BackendName", "BpfFilter", "ChangeKind", "ClassicFilter",
    "Compiled", "FilterOps", "GuardInfo", "GuardState", "Kernel", "Loaded", "NoFilter", "Slot",
    "Step", "default_kernel",
]
