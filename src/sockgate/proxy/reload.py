"""The proxy's reload, all or nothing: "the running policy stays" is true when it says so.

A reload has three phases (``execute``):

1. **prepare** — compile and load the program of every service, kept and fresh, resolve the
   forward addresses, build the fresh runners without starting them. No socket is touched, so
   a failure here changes nothing.
2. **swap** — **one** ``Kernel.apply`` over the IP listeners of every kept service, each with
   its own new program. If one socket refuses, the transaction puts back what the others had
   (``kernel.transaction``); nothing else has happened yet.
3. **commit** — what cannot fail for the policy's sake and cannot be undone: the kept
   services take their new policy (admission state kept), the Unix listeners of removed
   services are handed over to fresh services that listen on the same name, the removed
   services stop accepting (their live connections go on), the fresh ones open and start. A
   fresh service that cannot open is "not started", as at start-up; the others run.

What changes between the running services and the wanted ones is computed apart, without
I/O (``plan_reload``), and the executor knows the proxy and its runners only through two
small protocols, so that a failure injected midway is tested without sockets
(tests/core/test_proxy_reload.py) and with them (tests/kernel/test_proxy_reload_tx.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence, TypeVar

from sockgate.errors import SockgateError
from sockgate.kernel import Compiled, Kernel, Loaded, Step
from sockgate.kernel.transaction import Slot
from sockgate.linux.listen import Listener
from sockgate.log import Log
from sockgate.policy.ir import Service
from sockgate.proxy.spec import ProxySpec, Upstream
from sockgate.urls import SocketURL

Key = tuple[str, tuple[str, ...]]  # ProxySpec.key: the service and its listen URLs
UnixName = tuple[bool, "str | None"]  # (abstract, path) of a Unix listen URL
FAILED = "reload failed, the running policy stays"


def unix_name(url: SocketURL) -> UnixName:
    """What a Unix URL binds: an abstract name as written, a path made absolute."""
    path = url.path if url.abstract or url.path is None else os.path.abspath(url.path)
    return url.abstract, path


@dataclass(frozen=True)
class Handover:
    """A removed service's Unix listener, given to a fresh service listening on its name."""

    to: ProxySpec
    url: SocketURL  # the fresh service's URL for it
    source: Key  # the removed service

    @property
    def name(self) -> UnixName:
        return unix_name(self.url)


@dataclass(frozen=True)
class ReloadPlan:
    keep: tuple[tuple[Key, ProxySpec], ...]  # a running service, its new spec
    fresh: tuple[ProxySpec, ...]
    removed: tuple[Key, ...]
    handovers: tuple[Handover, ...]


def plan_reload(current: Mapping[Key, Sequence[SocketURL]], wanted: Sequence[ProxySpec]) -> ReloadPlan:
    """What a reload changes. ``current``: each running service's key and the URLs of the
    listeners it holds. A service is kept when its name and listen URLs are unchanged; a Unix
    listener of a removed service is handed over to a fresh one with the same name and scheme."""
    keep = tuple((p.key, p) for p in wanted if p.key in current)
    fresh = tuple(p for p in wanted if p.key not in current)
    keys = {p.key for p in wanted}
    removed = tuple(k for k in current if k not in keys)
    spare = {unix_name(u): (k, u.scheme) for k in removed for u in current[k] if u.is_unix}
    handovers = []
    for p in fresh:
        for url in p.listen:
            found = spare.get(unix_name(url)) if url.is_unix else None
            if found is not None and found[1] == url.scheme:
                del spare[unix_name(url)]
                handovers.append(Handover(p, url, found[0]))
    return ReloadPlan(keep, fresh, removed, tuple(handovers))


class RunnerLike(Protocol):
    """What a reload needs of a ``service.Runner``."""

    @property
    def plan(self) -> ProxySpec: ...
    @property
    def listeners(self) -> Sequence[Listener]: ...
    def compile(self, service: Service | None = None) -> Compiled: ...
    def ip_slots(self) -> list[Slot]: ...
    def adopt(self, plan: ProxySpec, loaded: Loaded, target: Upstream) -> None: ...


R = TypeVar("R", bound=RunnerLike)


class ProxyState(Protocol[R]):
    """What a reload needs of the ``server.Proxy``: its services, and the I/O of the commit."""

    @property
    def runners(self) -> Mapping[Key, R]: ...
    @property
    def log(self) -> Log: ...
    def new_runner(self, spec: ProxySpec) -> R: ...
    def hand_over(self, handovers: Sequence[Handover]) -> dict[Key, dict[UnixName, Listener]]: ...
    def retire(self, key: Key) -> None: ...
    def start_fresh(self, runner: R, loaded: Loaded, taken: dict[UnixName, Listener]) -> None: ...


@dataclass(frozen=True)
class _Prepared:
    kept: tuple[tuple[ProxySpec, Loaded, Upstream], ...]  # in the plan's keep order
    fresh: tuple[tuple[ProxySpec, Loaded], ...]


def run(proxy: ProxyState[R], kernel: Kernel, wanted: Callable[[], Sequence[ProxySpec]]) -> bool:
    """Load the wanted services and reload to them; on a failure before the commit, say that
    the running policy stays (it does) and return False."""
    try:
        specs = wanted()
        execute(plan_reload({k: [lst.url for lst in r.listeners] for k, r in proxy.runners.items()}, specs), proxy, kernel)
    except SockgateError as e:
        proxy.log.error(f"{FAILED}: {e}")
        return False
    finally:
        proxy.log.flush()
    return True


def execute(plan: ReloadPlan, proxy: ProxyState[R], kernel: Kernel) -> None:
    """The three phases of the module docstring."""
    fresh = [proxy.new_runner(p) for p in plan.fresh]
    prepared = _prepare(plan, proxy, fresh, kernel)
    steps = [Step(slot, loaded) for (key, _), (_, loaded, _) in zip(plan.keep, prepared.kept) for slot in proxy.runners[key].ip_slots()]
    kernel.apply(steps)
    _commit(plan, proxy, prepared, fresh)


def _prepare(plan: ReloadPlan, proxy: ProxyState[R], fresh: Sequence[R], kernel: Kernel) -> _Prepared:
    kept = tuple(
        (p, kernel.load(proxy.runners[key].compile(p.service)), Upstream.of(p.forward)) for key, p in plan.keep
    )
    return _Prepared(kept, tuple((r.plan, kernel.load(r.compile())) for r in fresh))


def _commit(plan: ReloadPlan, proxy: ProxyState[R], prepared: _Prepared, fresh: Sequence[R]) -> None:
    for (key, _), (spec, loaded, target) in zip(plan.keep, prepared.kept):
        proxy.runners[key].adopt(spec, loaded, target)
    taken = proxy.hand_over(plan.handovers)
    try:
        for key in plan.removed:
            proxy.retire(key)
        for r, (_, loaded) in zip(fresh, prepared.fresh):
            proxy.start_fresh(r, loaded, taken.get(r.plan.key, {}))  # what it does not use stays in taken
    finally:
        for left in taken.values():  # taken over for a service that did not start
            for lst in left.values():
                lst.close()
    proxy.log.notice("policy reloaded", services=" ".join(r.plan.service.name for r in proxy.runners.values()))
