"""A socket's filter as read back, and the one record that says whose it is.

Reading is two steps. The socket side says what is attached (``Attached``: nothing, a classic
program with its bytes, or an eBPF program, which ``SO_GET_FILTER`` refuses to return); then
each backend is asked whether the program is one of its own (``Backend.recognise``). The
answer is a ``GuardInfo``, the one record ``guard_of``, ``attach``/``detach`` and ``ls`` share,
so a filter is never classified two ways. What no backend claims is *foreign* (an eBPF
program of somebody else: "foreign (eBPF program)"), and the caller that could not read at
all says *unknown* with the reason.

``describe`` is the sentence attach and detach print; ``text`` and ``to_json`` are the ls
cell and JSON object, worded as before the two records were one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Union, assert_never

BackendName = Literal["cbpf", "ebpf"]


@dataclass(frozen=True)
class NoFilter:
    """The socket has no filter."""


@dataclass(frozen=True)
class ClassicFilter:
    """A classic program (``SO_ATTACH_FILTER``), read back as ``struct sock_filter`` bytes."""

    raw: bytes


@dataclass(frozen=True)
class BpfFilter:
    """An eBPF program (``SO_ATTACH_BPF``): ``SO_GET_FILTER`` answers EACCES, so only its
    presence is known here; ``prog_id`` when the socket side could learn it, and the socket's
    ``cookie`` (``SO_COOKIE``), under which the eBPF backend records what it attached."""

    prog_id: int | None = None
    cookie: int | None = None


Attached = Union[NoFilter, ClassicFilter, BpfFilter]

GuardState = Literal["sockgate", "modified", "foreign", "none", "unknown"]


@dataclass(frozen=True)
class GuardInfo:
    """A socket's filter: sockgate's (service + digest), modified (a sockgate marker in front
    of other code: service and digest are only claimed), foreign, none, or unknown (could not
    be read: ``reason`` says why). ``backend`` names the backend of a filter it recognised;
    ``refused`` is what an eBPF guard counted (None where nothing counts)."""

    state: GuardState
    instructions: int = 0
    service: str | None = None
    digest: str | None = None
    locked: bool = False
    reason: str | None = None
    backend: BackendName | None = None
    refused: int | None = None

    def describe(self) -> str:
        lock = ", locked" if self.locked else ""
        if self.state == "sockgate":
            via = ", eBPF" if self.backend == "ebpf" else ""
            return f"sockgate service {self.service} (digest {self.digest}, {self.instructions} instructions{via}{lock})"
        if self.state == "modified":
            return (
                f"a modified sockgate filter (its marker claims service {self.service}, digest"
                f" {self.digest}, but the code differs; {self.instructions} instructions{lock})"
            )
        if self.state == "foreign":
            size = f"{self.instructions} instructions" if self.reason is None else self.reason
            return f"a foreign filter ({size}{lock})"
        if self.state == "unknown":
            return f"an unknown filter ({self.reason})"
        return f"no filter{lock}"

    @property
    def _size(self) -> int | None:
        """The instruction count, where one was read (not for none, unknown or eBPF)."""
        known = self.state in ("sockgate", "modified", "foreign") and self.reason is None
        return self.instructions if known else None

    @property
    def text(self) -> str:
        """The ``ls`` cell."""
        if self.state == "sockgate" and self.backend == "ebpf":
            counted = "" if self.refused is None else f", {self.refused} refused"
            return f"sockgate {self.service} {self.digest} (ebpf{counted})"
        if self.state == "sockgate":
            return f"sockgate {self.service} {self.digest}"
        if self.state == "modified":
            return f"modified (marker claims {self.service} {self.digest}; {self.instructions} insns)"
        if self.state == "foreign":
            return f"foreign filter ({self.instructions} insns)" if self.reason is None else f"foreign filter ({self.reason})"
        if self.state == "none":
            return "none"
        return f"unknown ({self.reason})"

    def to_json(self) -> dict[str, Any]:
        """The ``ls --json`` object; ``backend`` for a filter a backend recognised as
        sockgate's, ``refused`` where it counts refusals (eBPF)."""
        out: dict[str, Any] = {
            "status": self.state,
            "service": self.service,
            "digest": self.digest,
            "insns": self._size,
            "reason": self.reason,
            "text": self.text,
        }
        if self.backend is not None:
            out["backend"] = self.backend
        if self.refused is not None:
            out["refused"] = self.refused
        return out


def unclaimed(attached: Attached) -> GuardInfo:
    """What a filter no backend recognised is: none, or foreign."""
    match attached:
        case NoFilter():
            return GuardInfo("none")
        case ClassicFilter(raw):
            return GuardInfo("foreign", len(raw) // 8)
        case BpfFilter():
            return GuardInfo("foreign", reason="eBPF program")
        case _:
            assert_never(attached)
