"""The public API's wiring: ``Policy.guard`` reaches ``sockgate.guard.guard`` through the port
the package binds, so the pure policy imports no enforcement point and ``import sockgate``
loads nothing that touches sockets."""

from __future__ import annotations

from typing import Any

import pytest

import sockgate
from sockgate import guard as guard_module
from sockgate.policy import ir
from sockgate.policy.parser import parse_policy
from support.purity import loaded_after


def test_importing_sockgate_binds_the_guard_port() -> None:
    assert ir._guard_port == [sockgate._guard]


def test_policy_guard_reaches_sockgate_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake(policy: Any, sock: Any, service: str) -> str:
        calls.append((policy, sock, service))
        return "guarded"

    monkeypatch.setattr(guard_module, "guard", fake)
    policy = parse_policy("service ssh {\n  allow 192.0.2.0/24\n  default deny\n}\n", "p.conf")
    assert policy.guard(7, "ssh") == "guarded"
    assert calls == [(policy, 7, "ssh")]


def test_a_bound_port_is_what_guard_calls() -> None:
    seen: list[str] = []
    before = list(ir._guard_port)
    try:
        ir.bind_guard(lambda policy, sock, service: seen.append(service))
        parse_policy("service web {\n  default allow\n}\n", "p.conf").guard(None, "web")
    finally:
        ir._guard_port[:] = before
    assert seen == ["web"]


def test_import_sockgate_and_the_policy_load_no_socket_module() -> None:
    loaded = loaded_after(
        "import sockgate\n"
        "from sockgate.policy.parser import parse_policy\n"
        "parse_policy('service ssh {\\n  default deny\\n}\\n', 'p.conf').service('ssh')\n"
    )
    assert sorted(loaded & {"socket", "_socket", "ctypes", "_ctypes", "sockgate.guard"}) == []
