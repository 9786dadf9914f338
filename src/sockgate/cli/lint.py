"""``sockgate lint POLICY... [--hosts-allow P --hosts-deny P] [--json]``.

Loads the policies (errors make the load fail: they are printed and the exit status is 2),
then prints the warnings of ``policy.lint.lint`` as ``file:line:col: warning: message`` with
the source line and a caret (``--json``: one object per line). Exit 0 when clean, 1 when
there are only warnings, 2 on errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from sockgate.cli.common import add_policy_args, load_from_args, print_json
from sockgate.errors import Diagnostic, PolicyError
from sockgate.policy.lint import lint
from sockgate.policy.source import printable


def add_parser(p: argparse.ArgumentParser) -> None:
    add_policy_args(p, positional=True)
    p.add_argument("--json", action="store_true", help="one JSON object per diagnostic per line")


def run(args: argparse.Namespace) -> int:
    try:
        policy = load_from_args(args)
    except PolicyError as e:
        _report(e.diagnostics, e.sources, args.json)
        return 2
    warnings = lint(policy)
    _report(warnings, dict(policy.texts), args.json)
    return 1 if warnings else 0


def _report(diags: Sequence[Diagnostic], sources: dict[str, str], as_json: bool) -> None:
    for d in diags:
        if as_json:
            print_json(_to_json(d))
        else:
            sys.stdout.write(printable(d.render(sources.get(d.span.file) if d.span else None)) + "\n")
    if not as_json and diags:
        errors = sum(1 for d in diags if d.severity == "error")
        warnings = len(diags) - errors
        print(f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}", file=sys.stderr)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _to_json(d: Diagnostic) -> dict[str, Any]:
    where: dict[str, Any] = (
        {"file": d.span.file, "line": d.span.line, "col": d.span.col} if d.span else {"file": None, "line": None, "col": None}
    )
    return {
        **where,
        "severity": d.severity,
        "message": d.message,
        "related": [{"file": s.file, "line": s.line, "col": s.col, "message": m} for s, m in d.related],
    }
