"""The agent's pure modules (every sockgate.agent module but the edges listed in
tests/support/layers.AGENT_EDGES) do no I/O: imported in a fresh interpreter they load no
socket, ctypes or selectors module and nothing of sockgate.linux or sockgate.kernel, and their
sources import none of those."""

from __future__ import annotations

from support.layers import AGENT_EDGES, modules
from support.purity import imported, loaded_by, under

FORBIDDEN = ("socket", "_socket", "ctypes", "_ctypes", "select", "selectors", "asyncio", "subprocess",
             "sockgate.linux", "sockgate.kernel")


def _pure() -> list[str]:
    return sorted(m for m in modules() if m.startswith("sockgate.agent") and m not in AGENT_EDGES)


def test_the_model_is_among_the_pure_modules() -> None:
    assert "sockgate.agent.model" in _pure() and "sockgate.agent.watcher" not in _pure()


def test_importing_the_pure_agent_loads_no_io_module() -> None:
    assert under(loaded_by(_pure()), FORBIDDEN) == []


def test_pure_agent_sources_import_no_io_module() -> None:
    offenders = []
    paths = modules()
    for name in _pure():
        offenders += [f"{name}: import {t}" for t in under(imported(paths[name]), FORBIDDEN)]
    assert offenders == []
