"""The proxy's reload without sockets: what changes (``plan_reload``), and the three phases of
``execute`` over fake runners and a kernel over fake operations, with a failure injected at
the second attach of the swap."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

from sockgate.errors import UsageError
from sockgate.kernel import ClassicFilter, Compiled, Loaded, Slot
from sockgate.linux.listen import Listener
from sockgate.log import Log
from sockgate.policy.ir import Service
from sockgate.policy.parser import parse_policy
from sockgate.proxy.reload import FAILED, Handover, Key, ReloadPlan, UnixName, plan_reload, run
from sockgate.proxy.spec import ProxySpec, Upstream
from sockgate.resolve import resolve_service
from sockgate.urls import SocketURL, parse_url
from support.fakekernel import FakeOps, fake_kernel

FORWARD = parse_url("tcp://127.0.0.1:9")


def service(name: str, allow: str) -> Service:
    return parse_policy(f"service {name} {{\n allow {allow}\n}}\n", "p.conf").services[0]


def spec(name: str, *listen: str, allow: str = "10.0.0.0/8") -> ProxySpec:
    return ProxySpec(service(name, allow), tuple(parse_url(u) for u in listen), FORWARD)


def urls(*specs: ProxySpec) -> dict[Key, list[SocketURL]]:
    return {p.key: list(p.listen) for p in specs}


# -- plan_reload ------------------------------------------------------------------------------


def test_kept_fresh_and_removed_by_name_and_listen_urls() -> None:
    a, b, c = spec("a", "tcp://0.0.0.0:1"), spec("b", "tcp://0.0.0.0:2"), spec("c", "tcp://0.0.0.0:3")
    a2 = spec("a", "tcp://0.0.0.0:1", allow="192.0.2.0/24")  # same key, new rules: kept
    b_moved = spec("b", "tcp://0.0.0.0:20")  # another listen URL: a new service
    plan = plan_reload(urls(a, b, c), [a2, b_moved])
    assert plan == ReloadPlan(keep=((a.key, a2),), fresh=(b_moved,), removed=(b.key, c.key), handovers=())


def test_a_unix_name_moves_to_a_fresh_service_with_the_same_scheme() -> None:
    old = spec("old", "unix:/run/x.sock", "tcp://0.0.0.0:1")
    new = spec("new", "unix:/run/x.sock")
    plan = plan_reload(urls(old), [new])
    assert plan.handovers == (Handover(new, new.listen[0], old.key),)
    assert plan.handovers[0].name == (False, "/run/x.sock")


def test_a_relative_path_is_the_same_name_as_its_absolute_form() -> None:
    old = spec("old", "unix:x.sock")
    new = spec("new", f"unix:{os.path.abspath('x.sock')}")
    assert len(plan_reload(urls(old), [new]).handovers) == 1


def test_no_hand_over_across_schemes_abstractness_or_from_a_kept_service() -> None:
    old = spec("old", "unix+dgram:/run/x.sock", "unix:@y")
    kept = spec("kept", "unix:/run/z.sock")
    fresh = spec("fresh", "unix:/run/x.sock", "unix:/y", "unix:/run/z.sock")
    assert plan_reload(urls(old, kept), [kept, fresh]).handovers == ()


def test_one_name_is_handed_over_once() -> None:
    old = spec("old", "unix:@n")
    one, two = spec("one", "unix:@n"), spec("two", "unix:@n")
    assert [h.to for h in plan_reload(urls(old), [one, two]).handovers] == [one]


def test_the_listeners_held_count_not_the_urls_asked_for() -> None:
    old = spec("old", "unix:@n")
    assert plan_reload({old.key: []}, [spec("new", "unix:@n")]).handovers == ()  # (a later worker)


# -- execute ----------------------------------------------------------------------------------


@dataclass
class FakeSock:
    fd: int

    def fileno(self) -> int:
        return self.fd


@dataclass
class FakeRunner:
    plan: ProxySpec
    fds: list[int]
    events: list[tuple[str, str, int]]  # (what, service, changes tried so far)
    ops: FakeOps
    accepting: bool = True
    service: Service | None = None
    listeners: list[Listener] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.service = self.plan.service
        self.listeners = [Listener(parse_url(f"tcp://0.0.0.0:{9000 + fd}"), FakeSock(fd)) for fd in self.fds]  # type: ignore[arg-type]

    def _event(self, what: str) -> None:
        self.events.append((what, self.plan.service.name, len(self.ops.log)))

    def compile(self, svc: Service | None = None) -> Compiled:
        self._event("compile")
        return fake_kernel(self.ops).compile(resolve_service(svc or self.plan.service))

    def ip_slots(self) -> list[Slot]:
        return [Slot(fd, f"tcp://0.0.0.0:{9000 + fd}") for fd in self.fds]

    def adopt(self, plan: ProxySpec, loaded: Loaded, target: Upstream) -> None:
        self._event("adopt")
        self.plan, self.service = plan, plan.service


@dataclass
class FakeProxy:
    ops: FakeOps
    runners: dict[Key, FakeRunner] = field(default_factory=dict)
    out: io.StringIO = field(default_factory=io.StringIO)
    events: list[tuple[str, str, int]] = field(default_factory=list)
    retired: list[FakeRunner] = field(default_factory=list)
    started: list[FakeRunner] = field(default_factory=list)
    next_fd: int = 100

    def __post_init__(self) -> None:
        self.log = Log("json", self.out)

    def add(self, p: ProxySpec, *fds: int) -> FakeRunner:
        r = self.runners[p.key] = FakeRunner(p, list(fds), self.events, self.ops)
        return r

    def new_runner(self, p: ProxySpec) -> FakeRunner:
        self.next_fd += 1
        r = FakeRunner(p, [self.next_fd], self.events, self.ops)
        r.accepting = False
        r._event("new")
        return r

    def hand_over(self, handovers: list[Handover]) -> dict[Key, dict[UnixName, Listener]]:
        self.events.append(("hand_over", str(len(handovers)), len(self.ops.log)))
        return {}

    def retire(self, key: Key) -> None:
        r = self.runners.pop(key)
        r.accepting = False
        r._event("retire")
        self.retired.append(r)

    def start_fresh(self, r: FakeRunner, loaded: Loaded, taken: dict[UnixName, Listener]) -> None:
        r._event("start")
        r.accepting = True
        self.runners[r.plan.key] = r
        self.started.append(r)

    def messages(self) -> list[str]:
        self.log.flush()
        return [json.loads(line)["message"] for line in self.out.getvalue().splitlines()]


OLD = [spec(n, f"tcp://0.0.0.0:{i}", allow="10.0.0.0/8") for i, n in enumerate(("a", "b", "c"))]
NEW = [spec(n, f"tcp://0.0.0.0:{i}", allow="192.0.2.0/24") for i, n in enumerate(("a", "b", "c"))]
GONE = spec("gone", "tcp://0.0.0.0:7")
ADDED = spec("added", "tcp://0.0.0.0:8")


def running(ops: FakeOps) -> FakeProxy:
    """Three services to keep (two sockets for the first), one to remove, each socket with its
    old program on it."""
    proxy = FakeProxy(ops)
    for i, p in enumerate(OLD + [GONE]):
        r = proxy.add(p, *([10 * i, 10 * i + 1] if i == 0 else [10 * i]))
        raw = fake_kernel(ops).load(r.compile()).raw  # type: ignore[attr-defined]
        for fd in r.fds:
            ops.attached[fd] = ClassicFilter(raw)
    proxy.events.clear()
    return proxy


def test_a_failure_midway_leaves_everything_running_as_it_was() -> None:
    ops = FakeOps()
    proxy = running(ops)
    before = dict(ops.attached)
    kept = {k: r for k, r in proxy.runners.items() if k != GONE.key}
    ops.fail_at = {1}  # the swap's second attach
    assert run(proxy, fake_kernel(ops), lambda: NEW + [ADDED]) is False
    assert ops.attached == before  # the first socket's change was rolled back
    assert [op for op, _, _ in ops.log] == ["attach", "attach", "attach"]  # two tried, one restored
    assert all(r.service is p.service for r, p in zip(kept.values(), OLD))
    assert proxy.runners[GONE.key].accepting and not proxy.retired
    assert not proxy.started and ADDED.key not in proxy.runners
    assert not [e for e in proxy.events if e[0] in ("adopt", "hand_over", "retire", "start")]
    [message] = proxy.messages()
    assert message.startswith(f"{FAILED}: attach filter for a to tcp://0.0.0.0:9001: injected failure")


def test_a_locked_socket_refuses_the_reload_before_any_change() -> None:
    ops = FakeOps()
    proxy = running(ops)
    before = dict(ops.attached)
    ops.locked.add(20)  # the third service's only listener
    assert run(proxy, fake_kernel(ops), lambda: NEW) is False
    assert ops.attached == before and ops.log == []
    assert "locked" in proxy.messages()[0]


def test_a_forward_that_does_not_resolve_changes_nothing() -> None:
    ops = FakeOps()
    proxy = running(ops)
    bad = ProxySpec(OLD[1].service, OLD[1].listen, parse_url("tcp://:9"))  # a forward with no host
    assert run(proxy, fake_kernel(ops), lambda: [NEW[0], bad, NEW[2]]) is False
    assert ops.log == [] and not proxy.retired and not proxy.started
    assert all(r.service is p.service for r, p in zip(proxy.runners.values(), OLD))
    assert "needs a host" in proxy.messages()[0]


def test_a_loader_that_fails_changes_nothing() -> None:
    ops = FakeOps()
    proxy = running(ops)

    def load() -> list[ProxySpec]:
        raise UsageError("p.conf:3: unknown word")

    assert run(proxy, fake_kernel(ops), load) is False
    assert ops.log == [] and proxy.messages() == [f"{FAILED}: p.conf:3: unknown word"]


def test_a_success_runs_the_phases_in_order() -> None:
    ops = FakeOps()
    proxy = running(ops)
    assert run(proxy, fake_kernel(ops), lambda: NEW + [ADDED]) is True
    changes = len(OLD) + 1  # a's two sockets, b's, c's: one transaction
    assert len(ops.log) == changes
    phases = [(what, at) for what, _, at in proxy.events]
    prepare = [at for what, at in phases if what in ("new", "compile")]
    commit = [what for what, at in phases if what not in ("new", "compile")]
    assert prepare and all(at == 0 for at in prepare)  # nothing touched while preparing
    assert all(at == changes for what, at in phases if what not in ("new", "compile"))
    assert commit == ["adopt", "adopt", "adopt", "hand_over", "retire", "start"]
    assert all(r.service is p.service for r, p in zip((proxy.runners[p.key] for p in NEW), NEW))
    assert [r.plan for r in proxy.retired] == [GONE] and [r.plan for r in proxy.started] == [ADDED]
    k = fake_kernel(ops)
    new = [ClassicFilter(k.load(k.compile(resolve_service(p.service))).raw) for p in NEW]  # type: ignore[attr-defined]
    assert [ops.attached[fd] for fd in (0, 1, 10, 20)] == [new[0], new[0], new[1], new[2]]
    assert proxy.messages() == ["policy reloaded"]


class Closing:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_handed_over_listener_the_fresh_service_did_not_use_is_closed() -> None:
    ops = FakeOps()
    proxy = running(ops)
    left = Closing()
    proxy.hand_over = lambda handovers: {ADDED.key: {(True, "n"): left}}  # type: ignore[method-assign, assignment, return-value]
    assert run(proxy, fake_kernel(ops), lambda: OLD + [ADDED]) is True
    assert proxy.started and left.closed  # the fake start_fresh took nothing
