"""A plan into the kernel: one transaction, and the connections the gap let in ended.

``apply`` turns every ``reconcile.Change`` into one step of the kernel seam's transaction
(``Kernel.apply``: each step or none, with rollback). A socket the kernel refuses — locked
meanwhile, gone, a permission it lacks — must not keep the others unguarded, so the step the
error names is taken out, reported as ``Unguarded`` (the runtime's ``RetryBook`` retries it)
and the transaction runs again without it, at most ``MAX_EXCLUSIONS`` times; an error that
names no step fails every step of the transaction alike, each reported and retried. Nothing is
ever half-applied and nothing is left out silently.

``end_denied`` closes what a filter cannot: a filter decides packets that arrive, so a TCP
connection established before the guard landed (the service listened before the agent saw it,
or a reload or ban narrowed the policy) goes on. For each changed TCP listener, the peers
the kernel part of its policy denies — the interval tables the compilers are built from
(``resolve.ranges``), with the service's bans, so nothing the filter itself would pass is cut —
are aborted with SOCK_DESTROY (``sockdiag.destroy_tcp``).
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence

from sockgate.agent.model import Observed, Unguarded, UnguardedKind
from sockgate.agent.observe import Held
from sockgate.agent.reconcile import Change, ChangeKind, Plan
from sockgate.errors import AdapterError, SockgateError
from sockgate.kernel import Kernel
from sockgate.kernel.backend import Compiled, Loaded
from sockgate.kernel.transaction import Slot, Step
from sockgate.policy.ir import Action, IPNetwork
from sockgate.resolve.model import ResolvedService
from sockgate.resolve.ranges import Banned, first_match_tables

MAX_EXCLUSIONS = 3
ADVICE = "the agent needs CAP_NET_ADMIN to filter TCP sockets"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Destroy(Protocol):
    """``sockdiag.destroy_tcp``'s shape: end established connections on ``ports`` from
    ``prefixes`` (to ``addresses`` when given); how many ended."""

    def __call__(self, ports: Iterable[int], prefixes: Iterable[IPNetwork], *,
                 addresses: Iterable[Address] | None = None) -> int: ...


@dataclass(frozen=True)
class Outcome:
    applied: tuple[tuple[int, ChangeKind], ...]
    unguarded: tuple[Unguarded, ...]  # excluded, and why (attempts counted by the caller's book)
    failed: tuple[tuple[Change, UnguardedKind, str], ...]  # for RetryBook.failed


class Applier:
    def __init__(self, kernel: Kernel, destroy: Destroy) -> None:
        self.kernel = kernel
        self.destroy = destroy

    def load(self, programs: Mapping[str, Compiled]) -> dict[str, Loaded]:
        """Every program into the kernel (verifier, pins) before any socket is touched."""
        return {name: self.kernel.load(p) for name, p in programs.items()}

    def apply(self, plan: Plan, loaded: Mapping[str, Loaded], held: Mapping[int, Held]) -> Outcome:
        todo: list[tuple[Change, Step]] = []
        failed: list[tuple[Change, UnguardedKind, str]] = []
        for c in plan.changes:
            h = held.get(c.cookie)
            if h is None or h.dup is None:
                failed.append((c, "gone", "the socket closed before it could be changed"))
                continue
            program = None if c.want is None else loaded.get(c.want.service)
            if c.want is not None and program is None:
                failed.append((c, "kernel", f"no program loaded for {c.want.service}"))
                continue
            todo.append((c, Step(Slot(h.dup, h.label, ADVICE), program)))
        applied: list[tuple[int, ChangeKind]] = []
        for _ in range(MAX_EXCLUSIONS + 1):
            if not todo:
                break
            try:
                self.kernel.apply([s for _, s in todo])
            except SockgateError as e:
                culprit = _culprit(todo, e)
                if culprit is None or len(failed) >= MAX_EXCLUSIONS:
                    failed += [(c, _kind(e), str(e)) for c, _ in todo]
                    todo = []
                    break
                failed.append((culprit[0], _kind(e), str(e)))
                todo.remove(culprit)
                continue
            applied = [(c.cookie, c.kind) for c, _ in todo]
            todo = []
        else:
            failed += [(c, "kernel", "too many sockets refused in one transaction") for c, _ in todo]
        unguarded = tuple(Unguarded(c.cookie, reason, kind, 1, None) for c, kind, reason in failed if kind != "gone")
        return Outcome(tuple(applied), unguarded, tuple(failed))

    def end_denied(self, socks: Sequence[Observed], service: ResolvedService, bans: Sequence[Banned]) -> int:
        """End the established TCP connections to ``socks`` (one service's listeners) whose
        peer the kernel part of ``service`` with ``bans`` denies; how many were ended."""
        tcp = [s for s in socks if s.proto == "tcp"]
        if not tcp:
            return 0
        denied = denied_networks(service, bans)
        if not denied:
            return 0
        ended = 0
        for s in tcp:
            local = _local(s.local_addr)
            ended += self.destroy([s.port], denied, addresses=None if local is None else [local])
        return ended

    def end_banned(self, socks: Sequence[Observed], bans: Sequence[IPNetwork]) -> int:
        """End the established TCP connections from ``bans`` to ``socks``."""
        ended = 0
        for s in (s for s in socks if s.proto == "tcp"):
            local = _local(s.local_addr)
            ended += self.destroy([s.port], bans, addresses=None if local is None else [local])
        return ended


def denied_networks(service: ResolvedService, bans: Sequence[Banned]) -> list[IPNetwork]:
    """The source networks the kernel filter of ``service`` (its kernel part) with ``bans`` drops."""
    kernel = service.kernel_part if service.refusal() is not None else service
    tables = first_match_tables(kernel, bans)
    nets: list[IPNetwork] = []
    for table, make in ((tables.v4, ipaddress.IPv4Address), (tables.v6, ipaddress.IPv6Address)):
        for iv in table.intervals:
            if iv.action is Action.DENY:
                nets += ipaddress.summarize_address_range(make(iv.lo), make(iv.hi - 1))
    return nets


def _local(addr: str) -> Address | None:
    """The listener's address, None for a wildcard (every local address)."""
    try:
        a = ipaddress.ip_address(addr)
    except ValueError:
        return None
    return None if a.is_unspecified else a


def _culprit(todo: Sequence[tuple[Change, Step]], e: SockgateError) -> tuple[Change, Step] | None:
    where = f"{getattr(e, 'target', None) or ''} {e}"
    return next((t for t in todo if t[1].slot.label in where), None)


def _kind(e: SockgateError) -> UnguardedKind:
    code = e.errno if isinstance(e, AdapterError) else None
    if code in (errno_mod.EPERM, errno_mod.EACCES):
        return "locked" if "locked" in str(e) else "permission"
    if code in (errno_mod.EBADF, errno_mod.ENOTSOCK, errno_mod.ESRCH):
        return "gone"
    return "kernel"
