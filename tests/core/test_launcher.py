"""``run``'s reload over the kernel seam, with fake sockets: a failure on the second of three
listeners leaves the previous program on all of them, and says so."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from sockgate.kernel import ClassicFilter
from sockgate.launcher import Gate, RunConfig
from sockgate.linux.listen import Listener
from sockgate.policy.ir import Policy
from sockgate.policy.parser import parse_policy
from sockgate.urls import parse_url
from support.fakekernel import FakeOps, fake_kernel

OLD = parse_policy("service web {\n allow 10.0.0.0/8\n default deny\n}\n")
NEW = parse_policy("service web {\n allow 10.1.0.0/16\n default deny\n}\n")


@dataclass
class FakeSock:
    fd: int
    family: int = socket.AF_INET
    type: int = socket.SOCK_STREAM

    def fileno(self) -> int:
        return self.fd

    def getsockname(self) -> tuple[str, int]:
        return ("0.0.0.0", 8000 + self.fd)


def gate(ops: FakeOps, said: list[str], load: Policy) -> Gate:
    cfg = RunConfig(lambda: load, "web", (), ("true",), say=said.append)
    g = Gate(cfg, OLD, fake_kernel(ops))
    g.listeners = [Listener(parse_url(f"tcp://0.0.0.0:{8000 + fd}"), FakeSock(fd)) for fd in range(3)]  # type: ignore[arg-type]
    for lst in g.listeners:
        g.guard_socket(lst.sock)  # type: ignore[arg-type]
    return g


def test_a_failed_reload_leaves_the_previous_program_on_every_listener() -> None:
    ops, said = FakeOps(), []
    g = gate(ops, said, NEW)
    before = dict(ops.attached)
    assert len(set(before.values())) == 1 and isinstance(before[0], ClassicFilter)
    ops.fail_at = {len(ops.log) + 1}  # the second listener's attach
    assert g.reload() is False
    assert ops.attached == before
    assert said == ["reload failed, the previous policy stays in force: attach filter for web to tcp://0.0.0.0:8001: injected failure"]
    assert g.policy is OLD and "service web" in g.describe()


def test_a_reload_swaps_every_listener() -> None:
    ops, said = FakeOps(), []
    g = gate(ops, said, NEW)
    old = g.describe()
    assert g.reload() is True
    assert g.policy is NEW and g.describe() != old
    assert said == [f"reloaded: {g.describe()}, on 3 socket(s)"]
    assert len({ops.attached[fd] for fd in range(3)}) == 1
