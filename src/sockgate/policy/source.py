"""Source positions and diagnostics rendering.

A ``Span`` points at the text a diagnostic is about: file, 1-based line and column, and the
length of the culprit (so a caret line can underline it). ``render_diagnostic`` produces the
``file:line:col: severity: message`` line, then the source line and ``^~~~`` under the culprit.
Pure: the source text is passed in, never read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sockgate.errors import Diagnostic


@dataclass(frozen=True, order=True)
class Span:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    length: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def render_diagnostic(diag: "Diagnostic", source_text: str | None, caret: bool = True) -> str:
    sev = "" if diag.severity == "error" else f"{diag.severity}: "
    if diag.span is None:
        head = f"{sev}{diag.message}"
    else:
        head = f"{diag.span}: {sev}{diag.message}"
    lines = [head]
    if caret and diag.span is not None and source_text is not None:
        # Lines end at "\n" only, as the lexers count them (splitlines would also break at
        # \f, \v, \x1c-\x1e, \x85, \u2028..., and the caret would land on the wrong line).
        src_lines = source_text.split("\n")
        if 1 <= diag.span.line <= len(src_lines):
            text = src_lines[diag.span.line - 1].rstrip("\r").expandtabs(1)
            lines.append("    " + text)
            lines.append("    " + " " * (diag.span.col - 1) + "^" + "~" * max(0, diag.span.length - 1))
    for span, note in diag.related:
        lines.append(f"{span}: note: {note}")
    return "\n".join(lines)


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a policy file (kept as surrogates, since files
    are read with ``surrogateescape``) written as ``\\xNN``, so any output stream can take it."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
