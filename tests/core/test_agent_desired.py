"""agent/desired: native services and enrolled daemons, each compiled by the compiler passed in;
overlapping ports refused; a compiler failing half way leaves nothing built."""

from __future__ import annotations

import pytest

from sockgate.agent.desired import build
from sockgate.agent.model import Endpoint, Selector
from sockgate.errors import CompileError, PolicyError, UsageError
from sockgate.policy import ir
from support.agentcore import FakeProgram, compiler


def _svc(name: str, *eps: tuple[str, int, int]) -> ir.Service:
    return ir.Service(name, (), ir.Action.DENY, tuple(ir.Endpoint(p, ((a, b),)) for p, a, b in eps))  # type: ignore[arg-type]


POLICY = ir.Policy(services=(_svc("ssh", ("tcp", 22, 22)), _svc("web", ("tcp", 80, 80), ("udp", 443, 443)),
                             ir.Service("sock", (), None, (ir.Endpoint("unix", (), "/run/x"),))))


def test_natives_and_daemons_each_get_a_program() -> None:
    d = build(POLICY, ["nginx", "ALL"], {"dropbear": (Endpoint("tcp", 2222, 2222),)}, compiler(), 5.0)
    assert [(s.name, s.origin) for s in d.services] == [
        ("ssh", "native"), ("web", "native"), ("nginx", "hosts_access"), ("dropbear", "hosts_access")]
    assert d.service("web") is not None and d.service("web").selector == Selector((Endpoint("tcp", 80, 80), Endpoint("udp", 443, 443)))  # type: ignore[union-attr]
    assert d.service("dropbear").selector == Selector(daemon="dropbear", mapped=(Endpoint("tcp", 2222, 2222),))  # type: ignore[union-attr]
    assert d.service("ssh").want.digest == "ssh-1" and d.policy_digest == POLICY.digest() and d.loaded_at == 5.0  # type: ignore[union-attr]


def test_watch_sets_are_ports_and_comms() -> None:
    d = build(POLICY, ["a-very-long-daemon-name"], {}, compiler(), 0.0)
    ports, comms = d.watch_sets()
    assert ports == {("tcp", 22), ("tcp", 80), ("udp", 443)} and comms == {"a-very-long-dae"}


def test_a_daemon_named_like_a_native_service_is_the_native_one() -> None:
    d = build(POLICY, ["SSH"], {}, compiler(), 0.0)
    assert [s.name for s in d.services] == ["ssh", "web"]


def test_a_compiler_failing_half_way_builds_nothing() -> None:
    calls: list[str] = []

    def compile(name: str) -> FakeProgram:
        calls.append(name)
        if name == "web":
            raise CompileError("too large")
        return FakeProgram("cbpf", name)

    with pytest.raises(CompileError):
        build(POLICY, ["nginx"], {}, compile, 0.0)
    assert calls == ["ssh", "web"]


def test_two_native_services_on_one_port_are_refused() -> None:
    p = ir.Policy(services=(_svc("a", ("tcp", 20, 30)), _svc("b", ("tcp", 25, 25))))
    with pytest.raises(PolicyError, match="a and b both select tcp/25"):
        build(p, [], {}, compiler(), 0.0)


def test_two_maps_on_one_port_are_refused_a_map_under_a_native_port_is_not() -> None:
    maps = {"x": (Endpoint("udp", 5, 9),), "y": (Endpoint("udp", 9, 9),)}
    with pytest.raises(PolicyError, match="--map x and --map y both select udp/9"):
        build(ir.Policy(), [], maps, compiler(), 0.0)
    assert len(build(POLICY, [], {"x": (Endpoint("tcp", 22, 22),)}, compiler(), 0.0).services) == 3


def test_a_map_naming_a_native_service_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--map ssh=...: ssh is a native service"):
        build(POLICY, [], {"ssh": (Endpoint("tcp", 2, 2),)}, compiler(), 0.0)
