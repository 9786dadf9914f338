"""Source positions and diagnostics rendering.

A ``Span`` points at the text a diagnostic is about: file, 1-based line and column, and the
length of the culprit (so a caret line can underline it). ``render_diagnostic`` produces the
``file:line:col: severity: message`` line, then the source line and ``^~~~`` under the culprit.
Pure: the source text is passed in, never read here.

What reaches a person's terminal or a log is made safe here, once: control and other invisible
characters (ESC, BEL, bidirectional overrides, undecodable bytes) are written as escapes, so a
policy line cannot move the cursor or recolour the screen; the caret is placed by the escaped
text's display width, so it still points at the culprit. A file named by mistake (a set file
that is ``/etc/shadow``) must not be echoed: a word quoted in a message (``quote``) and the
culprit under the caret are cut at ``QUOTE_MAX`` characters, the context before the culprit at
a few dozen, and a parse error (which may sit in a file that is no policy at all) shows nothing
after its culprit: a credentials file included by mistake (``key = SECRET``) is reported at
``key`` without ``SECRET``. Warnings and errors about a policy that parsed show the rest of the
line.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

QUOTE_MAX = 24  # a word quoted from a file: a name, a port, an address; little of a secret
BEFORE_MAX = 48  # context shown before the culprit
AFTER_MAX = 48  # and after it, unless the diagnostic says to show the culprit only
ELLIPSIS = "..."


@dataclass(frozen=True, order=True)
class Span:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    length: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def render_diagnostic(
    span: Span | None,
    message: str,
    *,
    severity: str = "error",
    related: tuple[tuple[Span, str], ...] = (),
    context: bool = True,
    source_text: str | None = None,
    caret: bool = True,
) -> str:
    """A diagnostic's fields as text. It takes fields, not an ``errors.Diagnostic``, so this
    module depends on nothing and ``errors`` can build on ``Span``."""
    sev = "" if severity == "error" else f"{severity}: "
    head = f"{sev}{message}" if span is None else f"{span}: {sev}{message}"
    lines = [escape(head)]
    if caret and span is not None and source_text is not None:
        # Lines end at "\n" only, as the lexers count them (splitlines would also break at
        # \f, \v, \x1c-\x1e, \x85, \u2028..., and the caret would land on the wrong line).
        src_lines = source_text.split("\n")
        if 1 <= span.line <= len(src_lines):
            line = src_lines[span.line - 1].rstrip("\r")
            text, col, width = excerpt(line, span.col, span.length, AFTER_MAX if context else 0)
            lines.append("    " + text)
            lines.append("    " + " " * col + "^" + "~" * (width - 1))
    for at, note in related:
        lines.append(escape(f"{at}: note: {note}"))
    return "\n".join(lines)


def excerpt(line: str, col: int, length: int, after_max: int = AFTER_MAX) -> tuple[str, int, int]:
    """The part of source ``line`` shown under a message, escaped, with the display column
    (0-based) and width of the culprit at 1-based ``col``, ``length`` characters long, and
    at most ``after_max`` characters after it."""
    start = max(0, col - 1)
    before, culprit, after = line[:start], line[start : start + length], line[start + length :]
    if len(before) > BEFORE_MAX:
        before = ELLIPSIS + before[-BEFORE_MAX:]
    tail = ""
    if len(culprit) > QUOTE_MAX:
        culprit, after, tail = culprit[:QUOTE_MAX], "", ELLIPSIS
    elif len(after) > after_max:
        after, tail = after[:after_max], ELLIPSIS
    shown_before, shown_culprit = escape(before), escape(culprit)
    return shown_before + shown_culprit + escape(after) + tail, width(shown_before), max(1, width(shown_culprit))


def quote(text: str) -> str:
    """``text`` quoted for a message, as ``repr`` does (so control characters are escaped),
    cut at ``QUOTE_MAX`` characters."""
    if len(text) <= QUOTE_MAX:
        return repr(text)
    r = repr(text[:QUOTE_MAX])
    return r[:-1] + ELLIPSIS + r[-1]


def clip(text: str) -> str:
    """``text`` cut at ``QUOTE_MAX`` characters, for a message that shows it unquoted."""
    return text if len(text) <= QUOTE_MAX else text[:QUOTE_MAX] + ELLIPSIS


def escape(text: str) -> str:
    """One line of text safe for a terminal: a tab becomes a space (one column, as columns are
    counted), an undecodable byte ``\\xNN``, every other invisible character ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``; printable text is unchanged."""
    if text.isprintable():
        return text
    return "".join(_escape_char(c) for c in text)


def _escape_char(c: str) -> str:
    if c.isprintable():
        return c
    if c == "\t":
        return " "
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # a byte surrogateescape could not decode
        return f"\\x{n - 0xDC00:02x}"
    if n < 0x100:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def width(text: str) -> int:
    """Terminal columns of printable ``text``: wide East Asian characters take two, combining
    marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def printable(text: str) -> str:
    """Lines of ``text`` escaped as ``escape`` does (line breaks kept), so any output stream
    and any terminal can take them."""
    return "\n".join(escape(line) for line in text.split("\n"))
