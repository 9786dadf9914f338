"""The agent's pure modules (every sockgate.agent module but the edges listed in
tests/support/layers.AGENT_EDGES) do no I/O: imported in a fresh interpreter they load no
socket, ctypes or selectors module and nothing of sockgate.linux or sockgate.kernel, and their
sources import none of those."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from support.layers import AGENT_EDGES, SRC, modules

FORBIDDEN = ("socket", "_socket", "ctypes", "_ctypes", "select", "selectors", "asyncio", "subprocess",
             "sockgate.linux", "sockgate.kernel")


def _pure() -> list[str]:
    return sorted(m for m in modules() if m.startswith("sockgate.agent") and m not in AGENT_EDGES)


def _bad(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_the_model_is_among_the_pure_modules() -> None:
    assert "sockgate.agent.model" in _pure() and "sockgate.agent.watcher" not in _pure()


def test_importing_the_pure_agent_loads_no_io_module() -> None:
    code = ("import importlib, json, sys\n"
            f"for m in {_pure()!r}:\n"
            "    importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(SRC)}, check=True)
    assert sorted(m for m in json.loads(out.stdout) if _bad(m)) == []


def test_pure_agent_sources_import_no_io_module() -> None:
    offenders = []
    paths = modules()
    for name in _pure():
        for node in ast.walk(ast.parse(paths[name].read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            else:
                continue
            offenders += [f"{name}: import {t}" for t in targets if _bad(t)]
    assert offenders == []
