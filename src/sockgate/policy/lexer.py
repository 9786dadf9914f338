"""Tokens of the native policy language: one table of named token kinds.

The language is free-form (newlines mean nothing), so the lexer only splits text into
punctuation, quoted strings and *words*; a word is any run of characters that are not
white space, punctuation, a quote or ``#``. Addresses (``10.0.0.0/8``, ``2001:db8::/32``),
endpoints (``tcp/22``, ``unix:/run/x.sock``), URLs (``tcp://[::]:8443``), rates (``30/minute``)
and keywords are all words; the parser decides what a word means where it stands, which keeps
one table small and lets every value be reported with its exact position.

The lexer never fails: an unterminated string or a stray character becomes an ``ERROR`` token
the parser reports at its position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from sockgate.policy.source import quote


class Kind(str, Enum):
    WORD = "word"
    STRING = "string"
    LBRACE = "'{'"
    RBRACE = "'}'"
    COMMA = "','"
    EQUALS = "'='"
    LT = "'<'"
    ERROR = "error"
    EOF = "end of file"


# Order matters: the first alternative that matches at a position wins.
_TABLE: tuple[tuple[str, str], ...] = (
    ("SPACE", r"[ \t\r\n\f\v]+"),
    ("COMMENT", r"#[^\n]*"),
    ("STRING", r'"(?:[^"\\\n]|\\.)*"'),
    ("ERROR", r'"[^\n]*'),  # a string without its closing quote on the same line
    ("LBRACE", r"\{"),
    ("RBRACE", r"\}"),
    ("COMMA", r","),
    ("EQUALS", r"="),
    ("LT", r"<"),
    ("WORD", r'[^\s{},=<"#]+'),
    ("ERROR", r"."),
)
_MASTER = re.compile("|".join(f"(?P<{name}{i}>{rx})" for i, (name, rx) in enumerate(_TABLE)), re.DOTALL)


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str  # as written (a STRING keeps its quotes)
    line: int  # 1-based
    col: int  # 1-based
    offset: int

    @property
    def value(self) -> str:
        """A STRING's contents with ``\\"`` and ``\\\\`` unescaped; other tokens as written."""
        if self.kind is Kind.STRING:
            return re.sub(r"\\(.)", r"\1", self.text[1:-1])
        return self.text

    def describe(self) -> str:
        return "end of file" if self.kind is Kind.EOF else quote(self.text)


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with one ``EOF``; comments and space are dropped."""
    out: list[Token] = []
    line, line_start = 1, 0
    for m in _MASTER.finditer(text):
        group = m.lastgroup or "ERROR0"
        name = group.rstrip("0123456789")
        start = m.start()
        if name not in ("SPACE", "COMMENT"):
            out.append(Token(Kind[name], m.group(), line, start - line_start + 1, start))
        newlines = m.group().count("\n")
        if newlines:
            line += newlines
            line_start = m.start() + m.group().rindex("\n") + 1
    out.append(Token(Kind.EOF, "", line, len(text) - line_start + 1, len(text)))
    return out
