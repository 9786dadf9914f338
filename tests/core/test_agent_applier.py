"""agent/applier without a kernel: one transaction per plan, a refused socket taken out and the
rest applied, an error naming no socket failing every step alike, and end_denied asking to end
exactly the peers the kernel part of the policy (with its bans) denies."""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pytest

from sockgate.agent.applier import Applier, denied_networks
from sockgate.agent.model import Endpoint, GuardState, Want
from sockgate.agent.observe import Held
from sockgate.agent.reconcile import Change, Plan, RetryBook
from sockgate.cli.agent import parse_maps
from sockgate.errors import AdapterError, UsageError
from sockgate.kernel.transaction import Step
from sockgate.policy.parser import parse_policy
from sockgate.resolve import resolve
from support.agentcore import sock

NONE = GuardState("none")
WANT = Want("web", "cbpf", "d1")


@dataclass
class FakeKernel:
    refuse: set[str] = field(default_factory=set)  # labels the kernel refuses
    unnamed: bool = False  # an error that names no socket
    calls: list[list[str]] = field(default_factory=list)

    def apply(self, steps: Sequence[Step]) -> tuple[Any, ...]:
        labels = [s.slot.label for s in steps]
        self.calls.append(labels)
        if self.unnamed:
            raise AdapterError("bpf: out of memory", errno=errno.ENOMEM)
        for label in labels:
            if label in self.refuse:
                raise AdapterError(f"attach filter for web to {label}: the socket's filter is locked",
                                   errno=errno.EPERM, target=f"attach filter for web to {label}")
        return ()

    def load(self, program: object) -> object:
        return program


@dataclass
class Destroyed:
    calls: list[tuple[list[int], list[Any], list[Any] | None]] = field(default_factory=list)

    def __call__(self, ports: Iterable[int], prefixes: Iterable[Any], *, addresses: Iterable[Any] | None = None) -> int:
        self.calls.append((list(ports), list(prefixes), None if addresses is None else list(addresses)))
        return 1


def held(*cookies: int) -> dict[int, Held]:
    return {c: Held(sock(c, 80), None if c < 0 else 100 + c, f"tcp 0.0.0.0:80 (cookie {c})") for c in cookies}


def plan(*cookies: int) -> Plan:
    return Plan(tuple(Change(c, WANT, NONE) for c in cookies), (), (), RetryBook())


def applier(kernel: FakeKernel, destroy: Destroyed | None = None) -> Applier:
    return Applier(kernel, destroy or Destroyed())  # type: ignore[arg-type]


def test_a_refused_socket_is_taken_out_and_the_rest_applied_in_one_more_transaction() -> None:
    k = FakeKernel(refuse={"tcp 0.0.0.0:80 (cookie 2)"})
    out = applier(k).apply(plan(1, 2, 3), {"web": object()}, held(1, 2, 3))  # type: ignore[dict-item]
    assert [c for c, _ in out.applied] == [1, 3]
    assert [(c.cookie, kind) for c, kind, _ in out.failed] == [(2, "locked")]
    assert [u.cookie for u in out.unguarded] == [2]
    assert len(k.calls) == 2 and "tcp 0.0.0.0:80 (cookie 2)" not in k.calls[1]


def test_an_error_naming_no_socket_fails_every_step_and_applies_nothing() -> None:
    out = applier(FakeKernel(unnamed=True)).apply(plan(1, 2), {"web": object()}, held(1, 2))  # type: ignore[dict-item]
    assert out.applied == ()
    assert sorted((c.cookie, kind) for c, kind, _ in out.failed) == [(1, "kernel"), (2, "kernel")]


def test_more_refusals_than_the_bound_fail_the_rest_too() -> None:
    k = FakeKernel(refuse={f"tcp 0.0.0.0:80 (cookie {c})" for c in (1, 2, 3, 4)})
    out = applier(k).apply(plan(1, 2, 3, 4, 5), {"web": object()}, held(1, 2, 3, 4, 5))  # type: ignore[dict-item]
    assert out.applied == ()
    assert sorted(c.cookie for c, _, _ in out.failed) == [1, 2, 3, 4, 5]


def test_a_socket_that_closed_is_gone_not_unguarded() -> None:
    out = applier(FakeKernel()).apply(plan(-1, 2), {"web": object()}, held(-1, 2))  # type: ignore[dict-item]
    assert [c for c, _ in out.applied] == [2]
    assert [(c.cookie, kind) for c, kind, _ in out.failed] == [(-1, "gone")]
    assert out.unguarded == ()


POLICY = "service web tcp/80 {\n    allow 127.0.0.1\n    allow 10.0.0.0/8\n    default deny\n}\n"


def test_the_denied_networks_are_what_the_filter_drops_with_the_bans() -> None:
    web = resolve(parse_policy(POLICY), "web")
    nets = denied_networks(web, [ipaddress.ip_network("10.1.0.0/16")])

    def denied(a: str) -> bool:
        addr = ipaddress.ip_address(a)
        return any(addr in n for n in nets if n.version == addr.version)

    assert not denied("127.0.0.1") and not denied("10.2.3.4")
    assert denied("127.0.0.2") and denied("10.1.2.3") and denied("192.0.2.1") and denied("2001:db8::1")


def test_end_denied_asks_per_listener_by_port_and_address_tcp_only() -> None:
    d = Destroyed()
    web = resolve(parse_policy(POLICY), "web")
    socks = [sock(1, 80), sock(2, 80, proto="udp")]
    specific = sock(3, 81)
    specific = type(specific)(**{**specific.__dict__, "local_addr": "127.0.0.1"})
    assert applier(FakeKernel(), d).end_denied([*socks, specific], web, []) == 2
    assert [(ports, addrs) for ports, _, addrs in d.calls] == [([80], None), ([81], [ipaddress.ip_address("127.0.0.1")])]


def test_maps_parse_and_a_bad_one_is_one_usage_line() -> None:
    assert parse_maps(["sshd=tcp/22", "sshd=tcp/2222", "ntpd=udp/123-124"]) == {
        "sshd": (Endpoint("tcp", 22, 22), Endpoint("tcp", 2222, 2222)), "ntpd": (Endpoint("udp", 123, 124),)}
    for bad in ("sshd", "sshd=22", "sshd=sctp/22", "=tcp/22", "sshd=tcp/0", "sshd=tcp/x"):
        with pytest.raises(UsageError, match="expected DAEMON=PROTO/PORT"):
            parse_maps([bad])
