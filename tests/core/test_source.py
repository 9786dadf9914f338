"""What reaches a terminal: escaped control characters, a caret that still points, cut words."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sockgate.errors import Diagnostic
from sockgate.policy.source import QUOTE_MAX, Span, escape, excerpt, printable, quote, render_diagnostic, width


def test_invisible_characters_are_escaped() -> None:
    assert escape("a\x1b[2Jb\x07\tc\x7f\u202ed\u200b\udc80") == "a\\x1b[2Jb\\x07 c\\x7f\\u202ed\\u200b\\x80"
    assert escape("allow 192.0.2.1 # é 家") == "allow 192.0.2.1 # é 家"
    assert printable("a\x1b\nb\x07") == "a\\x1b\nb\\x07"


def test_quote_cuts_long_words() -> None:
    assert quote("ssh2") == "'ssh2'"
    assert quote("x" * 30) == "'" + "x" * QUOTE_MAX + "...'"
    assert quote("\x1b[31m") == "'\\x1b[31m'"


def test_the_whole_diagnostic_is_escaped() -> None:
    d = Diagnostic(Span("p\x1b.conf", 1, 3, 2), "bad \x07", related=((Span("q.conf", 2, 1), "see \x1b"),))
    assert d.render("a\x1bbc\n") == "\n".join([
        "p\\x1b.conf:1:3: bad \\x07", "    a\\x1bbc", "         ^~", "q.conf:2:1: note: see \\x1b",
    ])


@given(st.text(max_size=40), st.integers(1, 45), st.integers(1, 30))
def test_the_caret_points_at_the_culprit_however_the_line_is_written(line: str, col: int, length: int) -> None:
    line = line.replace("\n", "")
    shown, at, wide = excerpt(line, col, length)
    assert shown.isprintable()
    culprit = line[col - 1 : col - 1 + length]
    if culprit and len(culprit) <= QUOTE_MAX and len(line[: col - 1]) <= 48:
        head = escape(line[: col - 1])
        assert at == width(head) and shown.startswith(head + escape(culprit))
        assert wide == max(1, width(escape(culprit)))


def test_render_takes_fields_and_a_diagnostic_renders_the_same() -> None:
    span, note = Span("p.conf", 2, 7, 3), (Span("p.conf", 1, 1), "the earlier rule")
    text = "allow all\ndeny  ssh2 tail\n"
    got = render_diagnostic(span, "no such service", severity="warning", related=(note,), source_text=text)
    assert got == "\n".join([
        "p.conf:2:7: warning: no such service", "    deny  ssh2 tail", "          ^~~", "p.conf:1:1: note: the earlier rule",
    ])
    assert Diagnostic(span, "no such service", "warning", (note,)).render(text) == got


def test_render_without_caret_span_or_context() -> None:
    span = Span("p.conf", 1, 3, 1)
    assert render_diagnostic(span, "bad", source_text="a b secret", caret=False) == "p.conf:1:3: bad"
    assert render_diagnostic(None, "no file", source_text="x") == "no file"
    assert render_diagnostic(span, "bad", context=False, source_text="a b secret").split("\n")[1] == "    a b..."
    assert render_diagnostic(Span("p.conf", 9, 1), "gone", source_text="one line") == "p.conf:9:1: gone"
