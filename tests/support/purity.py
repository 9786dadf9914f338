"""What a module loads and imports, for the tests that prove a part of sockgate does no I/O:
the modules a fresh interpreter holds after running some code, and the absolute imports a
source file writes. One place for the subprocess and the AST walk the purity tests share
(test_pure_core, test_agent_pure, test_bpf_pure, test_api, test_log, test_export_nft)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterable

SRC = Path(__file__).resolve().parents[2] / "src"


def loaded_after(code: str) -> set[str]:
    """Every module in ``sys.modules`` of a fresh interpreter (this tree's ``src`` on its path,
    nothing else) once ``code`` has run."""
    script = f"{code}\nimport json as _json, sys as _sys\nprint(_json.dumps(sorted(_sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(SRC)}, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def loaded_by(modules: Iterable[str]) -> set[str]:
    """``loaded_after`` importing each of ``modules``."""
    return loaded_after(f"import importlib\nfor _m in {sorted(modules)!r}:\n    importlib.import_module(_m)")


def imported(path: Path) -> list[str]:
    """The absolute imports ``path`` writes, wherever (top level, in functions): for ``import
    a.b`` ``a.b``, for ``from a.b import c`` ``a.b``; relative imports are left out."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def under(names: Iterable[str], prefixes: Iterable[str]) -> list[str]:
    """The ``names`` equal to one of ``prefixes`` or inside it (``a.b`` is inside ``a``), sorted."""
    ps = tuple(prefixes)
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in ps))
