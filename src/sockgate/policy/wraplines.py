"""hosts.allow / hosts.deny lines and ``/file`` pattern words, cut as libwrap cuts them.

libwrap (Debian 7.6.q) reads a table with ``xgets`` (misc.c): ``fgets`` into ``table_match``'s
2,048-byte ``sv_list`` (hosts_access.c ``BUFLEN``), a backslash right before a newline joining
the next physical line. Three things in a file make that reader do what nobody wrote:

* a NUL byte: the C string ends there, so the rest of its physical line is dropped and the
  next line is run into it (``ALL: ALL`` + NUL ends in whatever follows, and at the end of
  hosts.deny turns into "no newline": deny everyone);
* a logical line of 2,048 bytes or more, or a last line without its newline: Debian's
  ``table_match`` logs "missing newline or line too long" and stops reading the table — in
  hosts.allow no later rule allows, in hosts.deny every client that gets there is denied.

Pattern files (``/path`` in a list) are read with ``fscanf("%s")`` into an 8,192-byte
buffer (``BUFSIZ``): a word is a run of bytes that are not C white space, NUL included (and
cut there when compared), and a longer word overflows the buffer.

Emulating any of this would load a policy no reader of the file can see, so each one is
reported at its ``file:line:col`` and the files are refused; every other byte — CR, tab,
bytes >= 0x80 — is an ordinary character, split on (or not) later exactly as libwrap's
``strtok`` and ``fscanf`` split. Sizes are counted in the file's bytes: the text arrives
decoded as UTF-8 with ``surrogateescape`` and is encoded back the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sockgate.policy.source import Span

LINE_BUFFER = 2048  # hosts_access.c BUFLEN: a logical line and its newline fit in 2,047 bytes
WORD_BUFFER = 8192  # hostfile_match's char tok[BUFSIZ] (glibc BUFSIZ): words up to 8,191 bytes
WORD_SPACE = " \t\r\v\f"  # C isspace() in the "C" locale, but "\n", which ends the line first

ErrorSink = Callable[[Span, str], None]


@dataclass
class Line:
    """One logical line: its text and, per character, the physical (line, col) it came from."""

    text: str
    where: list[tuple[int, int]]
    first: int

    def span(self, start: int, length: int, file: str) -> Span:
        if not self.where:
            return Span(file, self.first, 1, 1)
        if start >= len(self.where):  # just past the end of the line
            line, col = self.where[-1]
            return Span(file, line, col + 1 + start - len(self.where), 1)
        line, col = self.where[start]
        return Span(file, line, col, max(1, length))


def nbytes(text: str) -> int:
    """The length of ``text`` in the file it was read from."""
    return len(text.encode("utf-8", "surrogateescape"))


def _cut_at(text: str, room: int) -> int:
    """The index of the first character of ``text`` that does not fit in ``room`` bytes."""
    used = 0
    for i, c in enumerate(text):
        used += nbytes(c)
        if used > room:
            return i
    return len(text)


def _nul(raw: str, file: str, lineno: int, error: ErrorSink, what: str) -> None:
    at = raw.find("\0")
    if at >= 0:
        error(Span(file, lineno, at + 1), f"NUL byte in {what}")


def logical_lines(text: str, file: str, error: ErrorSink) -> list[Line]:
    """Physical lines joined at backslash-newline, with libwrap's reader's traps reported."""
    out: list[Line] = []
    chars: list[str] = []
    where: list[tuple[int, int]] = []
    first = used = 1  # ``used``: bytes of sv_list taken, counting fgets's closing NUL
    physical = text.split("\n")
    for idx, raw in enumerate(physical):
        lineno, last = idx + 1, idx == len(physical) - 1
        if last and raw == "" and not chars:
            break
        if not chars:
            first, used = lineno, 1
        _nul(raw, file, lineno, error, "the line (libwrap ends the line there and runs the next line into it)")
        if not last and used + nbytes(raw) + 1 > LINE_BUFFER:
            col = _cut_at(raw + "\n", LINE_BUFFER - used) + 1
            if used <= LINE_BUFFER:  # once per logical line
                error(Span(file, lineno, col), f"line longer than libwrap's {LINE_BUFFER - 1}-byte"
                      " line buffer (libwrap rejects this line and stops reading the file)")
            used = LINE_BUFFER + 1
        continued = not last and raw.endswith("\\")
        body = raw[:-1] if continued else raw
        used += nbytes(body)
        chars.extend(body)
        where.extend((lineno, col + 1) for col in range(len(body)))
        if last:
            error(Span(file, lineno, len(raw) + 1), "missing newline at end of file"
                  " (libwrap rejects this line and stops reading the file)")
            break
        if not continued:
            out.append(Line("".join(chars), where, first))
            chars, where = [], []
    return out


def pattern_words(text: str, file: str, error: ErrorSink) -> list[tuple[str, Span]]:
    """The words of a ``/file`` pattern list, each with its place."""
    out: list[tuple[str, Span]] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        _nul(raw, file, lineno, error, "a pattern file (libwrap compares the word only up to it)")
        i = 0
        while i < len(raw):
            if raw[i] in WORD_SPACE:
                i += 1
                continue
            j = i
            while j < len(raw) and raw[j] not in WORD_SPACE:
                j += 1
            word = raw[i:j]
            if nbytes(word) >= WORD_BUFFER:
                error(Span(file, lineno, i + 1, len(word)), f"word longer than libwrap's"
                      f" {WORD_BUFFER - 1}-byte buffer for pattern file words")
            else:
                out.append((word, Span(file, lineno, i + 1, len(word))))
            i = j
    return out
