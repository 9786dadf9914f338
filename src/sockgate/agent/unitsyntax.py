"""systemd's unit file syntax, read as systemd reads it (systemd.syntax(7), systemd.unit(5)):
lines, comments, continuations, section headers, booleans, unit names, the drop-in
directory names of a unit, and ``ExecStart``'s argv[0].

Why hand-written: no Python library reads unit files as systemd does, and a reading that
differs from systemd's names the wrong daemon for a listener pid 1 holds, so that daemon's
hosts_access rules guard it (``agent/superserver.py``). Each function here follows the
systemd function it names (``read_line``, ``config_parse``, ``parse_line``, ``parse_boolean``,
``extract_first_word``, ``unit_file_find_dirs``) for the inputs it answers; whatever it cannot
settle exactly raises ``Unsettled`` with the reason, and the caller makes that unit's launches
*unknown* (reported, never guessed). Pure: text in, values out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LONG_LINE_MAX = 1 << 20  # systemd's limit for one (joined) line
UNIT_NAME_MAX = 255
_EOL = {"\n": 1, "\r": 2, "\0": 4}
_WHITESPACE = " \t\n\r"
_COMMENTS = "#;"
_BOM = "\ufeff"
_UNIT_CHARS = r"[A-Za-z0-9:_.\\-]"
_UNIT_NAME = re.compile(rf"({_UNIT_CHARS}+)(?:@((?:{_UNIT_CHARS}|@)*))?\.(socket|service)")
_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})
_SIMPLE_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "s": " "}
Assignments = list[tuple[str, str, str]]  # (section, key, value) in file order
ANY_INSTANCE = "\0"  # an instance name not known here (an accepted connection's)


class Unsettled(Exception):
    """What systemd does with this input is not settled exactly here (the message says why)."""


class NotFound(Unsettled):
    """No file loads this unit name (systemd loads nothing for it either)."""


class Masked(Exception):
    """The unit is masked (systemd loads nothing for it)."""


def read_lines(text: str) -> list[str]:
    """The lines of ``text`` as systemd's ``read_line``: a line ends at a run of LF, CR and
    NUL in which no kind repeats and nothing follows a NUL (so CRLF and LF-CR are one end)."""
    lines: list[str] = []
    start, i, n = 0, 0, len(text)
    while i < n:
        if text[i] not in _EOL:
            i += 1
            continue
        lines.append(text[start:i])
        seen = 0
        while i < n and text[i] in _EOL and not seen & (_EOL[text[i]] | 4):
            seen |= _EOL[text[i]]
            i += 1
        start = i
    if start < n:
        lines.append(text[start:])
    return lines


def parse_config(text: str, where: str) -> Assignments:
    """The assignments of one unit file or drop-in, as ``config_parse`` + ``parse_line``: a
    comment line (``#``/``;`` after white space) is dropped before any continuation check, also
    inside a continuation; an odd trailing backslash continues the line (replaced by a space);
    an empty line ends a continuation. A failure systemd refuses the unit for raises."""
    out: Assignments = []
    section: str | None = None
    continuation: str | None = None
    bom = False
    for number, buf in enumerate(read_lines(text), 1):
        if _bytes(buf) > LONG_LINE_MAX:
            raise Unsettled(f"{where}:{number}: line too long")
        stripped = buf.lstrip(_WHITESPACE)
        if stripped and stripped[0] in _COMMENTS:
            continue
        line = buf
        if not bom and buf.startswith(_BOM):
            line, bom = buf[1:], True
        joined = line if continuation is None else continuation + line
        if _bytes(joined) > LONG_LINE_MAX:
            raise Unsettled(f"{where}:{number}: continued line too long")
        if _odd_backslash(joined):
            continuation = joined[:-1] + " "
            continue
        continuation = None
        section = _parse_line(joined, section, out, f"{where}:{number}")
    if continuation is not None:
        _parse_line(continuation, section, out, where)
    return out


def _bytes(s: str) -> int:
    return len(s) if len(s) * 4 <= LONG_LINE_MAX else len(s.encode("utf-8", "surrogateescape"))


def _odd_backslash(s: str) -> bool:
    n = len(s) - len(s.rstrip("\\"))
    return n % 2 == 1


def _parse_line(raw: str, section: str | None, out: Assignments, where: str) -> str | None:
    line = raw.strip(_WHITESPACE)
    if not line:
        return section
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in line):
        raise Unsettled(f"{where}: not valid UTF-8")
    if line[0] == "[":
        if line[-1] != "]":
            raise Unsettled(f"{where}: invalid section header")
        name = line[1:-1]
        if any(ord(c) < 32 or c in "\"'\\\x7f" for c in name):
            raise Unsettled(f"{where}: bad characters in a section header")
        return name
    if section is None:
        return section
    key, sep, value = line.partition("=")
    if sep and key:
        out.append((section, key.strip(_WHITESPACE), value.strip(_WHITESPACE)))
    return section


def parse_boolean(value: str) -> bool:
    """systemd's ``parse_boolean``; anything else raises."""
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise Unsettled(f"not a boolean: {value!r}")


# -- unit names ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitName:
    prefix: str
    instance: str | None  # None: no '@'; "": a template
    kind: str  # "socket" or "service"

    def __str__(self) -> str:
        return self.prefix + ("" if self.instance is None else "@" + self.instance) + "." + self.kind

    def template(self) -> UnitName:
        return UnitName(self.prefix, "", self.kind)

    def with_kind(self, kind: str) -> UnitName:
        return UnitName(self.prefix, self.instance, kind)


def unit_name(name: str) -> UnitName | None:
    """``name`` as a socket or service unit name (``unit_name_is_valid``), else None."""
    m = _UNIT_NAME.fullmatch(name)
    if m is None or len(name) > UNIT_NAME_MAX:
        return None
    return UnitName(m.group(1), m.group(2), m.group(3))


def dropin_names(name: UnitName) -> list[UnitName]:
    """The names whose ``.d`` directories one unit directory contributes for ``name``, in
    ``unit_file_find_dirs``' order: the name, its template (for an instance), then each dash
    prefix (``a-b-c`` → ``a-b-``, ``a-``; a trailing dash chopped once), each with its own
    template. The type's directory (``socket.d``) is not here: it comes after every unit
    directory's (``dropin_dirs``)."""
    out: list[UnitName] = [name]
    if name.instance:
        out += dropin_names(name.template())
    prefix, chopped = name.prefix, False
    while True:
        dash = prefix.rfind("-")
        if dash <= 0:
            return out
        if dash + 1 < len(prefix) or chopped:
            prefix = prefix[:dash + 1]
            break
        prefix, chopped = prefix[:dash], True
    return out + dropin_names(UnitName(prefix, name.instance, name.kind))


# -- ExecStart ---------------------------------------------------------------------------------


_PREFIXES = "-@:+!"


def exec_argv0(value: str) -> str:
    """argv[0] of an ``ExecStart`` value as ``config_parse_exec`` builds it: the first word
    unquoted (``extract_first_word`` with unquoting and C escapes), its ``-@:+!`` prefixes read,
    and with ``@`` the next word. A specifier, a variable, an escape not read here or an
    executable systemd refuses raises ``Unsettled``."""
    first, rest = _word(value)
    if first is None or first == ";":
        raise Unsettled(f"ExecStart={value!r}: no command")
    at = False
    flags = ""
    i = 0
    while i < len(first) and first[i] in _PREFIXES:
        c = first[i]
        if c == "@" and not at:
            at = True
        elif c == "!" and flags.count("!") < 2 and "+" not in flags:
            flags += c
        elif c in "-:+" and c not in flags and not (c == "+" and "!" in flags):
            flags += c
        else:
            break
        i += 1
    path = first[i:]
    if not path or any(ord(c) < 32 or c in "\"'\\\x7f" for c in path) or path.endswith(("/", "/.", "/..")) \
            or path in (".", "..") or ("/" in path and not path.startswith("/")):
        raise Unsettled(f"ExecStart={value!r}: an executable systemd refuses")
    argv0 = path
    if at:
        if rest.lstrip(_WHITESPACE).startswith(";"):
            raise Unsettled(f"ExecStart={value!r}: no argv[0]")
        word, _ = _word(rest)
        if word is None:
            raise Unsettled(f"ExecStart={value!r}: no argv[0]")
        argv0 = word
    if "%" in first or "%" in argv0 or "$" in argv0:
        raise Unsettled(f"ExecStart={value!r}: a specifier or variable in argv[0]")
    base = argv0.rstrip("/").rpartition("/")[2]
    if not base:
        raise Unsettled(f"ExecStart={value!r}: empty argv[0]")
    return base


def _word(s: str) -> tuple[str | None, str]:
    """``extract_first_word(s, WHITESPACE, EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE)``: the word and
    what follows it; None when there is none."""
    i, n = 0, len(s)
    while i < n and s[i] in _WHITESPACE:
        i += 1
    if i == n:
        return None, ""
    out: list[str] = []
    quote = ""
    while i < n:
        c = s[i]
        if c == "\\":
            ch, i = _escape(s, i + 1)
            out.append(ch)
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                out.append(c)
        elif c in "'\"":
            quote = c
        elif c in _WHITESPACE:
            break
        else:
            out.append(c)
        i += 1
    if quote:
        raise Unsettled("an unterminated quote in ExecStart")
    return "".join(out), s[i:]


def _escape(s: str, i: int) -> tuple[str, int]:
    """One C escape after a backslash: the simple ones and ``\\xNN`` only (printable)."""
    if i >= len(s):
        raise Unsettled("a trailing backslash in ExecStart")
    c = s[i]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 1
    if c == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", s[i + 1:i + 3]) and 0x20 < int(s[i + 1:i + 3], 16) < 0x7F:
        return chr(int(s[i + 1:i + 3], 16)), i + 3
    raise Unsettled(f"the escape \\{c} in ExecStart is not read here")


def expand_instance(value: str, instance: str | None) -> str:
    """``value`` with ``%i``, ``%I`` (the instance; no escapes in it allowed here) and ``%%``
    expanded; any other specifier raises."""
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        spec = value[i + 1:i + 2]
        if spec == "%":
            out.append("%")
        elif spec in ("i", "I") and instance and not (set(instance) & {"\\", "-"}):
            out.append(instance)
        else:
            raise Unsettled(f"the specifier %{spec} in {value!r}")
        i += 2
    return "".join(out)
