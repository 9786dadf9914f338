"""The classic BPF backend: a service compiled by ``sockgate.bpf`` and attached with
``SO_ATTACH_FILTER``.

Loading a classic program makes no kernel object: it is the encoded ``struct sock_filter``
array, which the kernel checks and converts on each attach. A program read back is ours when
``bpf.classify`` finds an intact marker; any classic program can be restored from the bytes
read back, so this backend claims every classic filter (ours, modified or foreign).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Collection, Literal, Protocol, Sequence

from sockgate.bpf.marker import classify
from sockgate.bpf.program import Program, compile_resolved
from sockgate.resolve.ranges import Banned
from sockgate.kernel.backend import BanLike, Compiled, Loaded
from sockgate.kernel.reading import Attached, ClassicFilter, GuardInfo
from sockgate.policy.needs import Need
from sockgate.resolve import ResolvedService

# Chosen once, at import: elsewhere sockgate still decides in user space.
UNSUPPORTED: str | None = (
    None
    if sys.platform == "linux"
    else f"kernel enforcement needs Linux (classic BPF socket filters); on {sys.platform} sockgate"
    " still decides in user space: use sockgate.check() or `sockgate proxy`"
)


class ClassicOps(Protocol):
    """What the backend needs of the socket side: SO_ATTACH_FILTER (``kernel.sockets``)."""

    def attach_classic(self, fd: int, raw: bytes, label: str) -> None: ...


@dataclass(frozen=True)
class ClassicLoaded:
    compiled: Program
    raw: bytes  # struct sock_filter[], as SO_ATTACH_FILTER takes it


class ClassicBackend:
    def __init__(self, ops: ClassicOps) -> None:
        self.ops = ops

    @property
    def name(self) -> Literal["cbpf"]:
        return "cbpf"

    @property
    def enforces(self) -> frozenset[Need]:
        return frozenset()  # the address alone: no state, so no limit

    def unavailable(self) -> str | None:
        return UNSUPPORTED

    def compile(self, service: ResolvedService, bans: Sequence[Banned] = ()) -> Program:
        return compile_resolved(service, banned=bans)

    def load(self, program: Compiled) -> ClassicLoaded:
        if not isinstance(program, Program):
            raise TypeError(f"not a classic BPF program: {program!r}")
        return ClassicLoaded(program, program.encode())

    def attach(self, fd: int, program: Loaded, label: str) -> None:
        if not isinstance(program, ClassicLoaded):
            raise TypeError(f"not a loaded classic BPF program: {program!r}")
        self.ops.attach_classic(fd, program.raw, label)

    def recognise(self, attached: Attached) -> GuardInfo | None:
        if not isinstance(attached, ClassicFilter):
            return None
        r = classify(attached.raw)
        ours = r.state in ("sockgate", "modified")
        return GuardInfo(r.state, r.instructions, r.service, r.digest, backend="cbpf" if ours else None)

    def restore(self, fd: int, previous: Attached, label: str) -> None:
        assert isinstance(previous, ClassicFilter), previous  # only what recognise claimed
        self.ops.attach_classic(fd, previous.raw, label)

    def update_bans(self, target: Loaded | str, bans: Sequence[BanLike], ports: Collection[int] = ()) -> bool:
        """Never in place: a classic program holds its bans as compiled ranges."""
        return False
