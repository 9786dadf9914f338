"""The lexer: token kinds, positions, strings, comments; it never fails."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.policy.lexer import Kind, tokenize


def kinds_texts(text: str) -> list[tuple[Kind, str]]:
    return [(t.kind, t.text) for t in tokenize(text)]


def test_words_punctuation_and_eof() -> None:
    assert kinds_texts("set a = { 10.0.0.0/8, @b }") == [
        (Kind.WORD, "set"),
        (Kind.WORD, "a"),
        (Kind.EQUALS, "="),
        (Kind.LBRACE, "{"),
        (Kind.WORD, "10.0.0.0/8"),
        (Kind.COMMA, ","),
        (Kind.WORD, "@b"),
        (Kind.RBRACE, "}"),
        (Kind.EOF, ""),
    ]


def test_urls_endpoints_and_rates_are_single_words() -> None:
    words = [t.text for t in tokenize("tcp://[::]:8443 unix:@x tcp/8000-8099 30/minute 2001:db8::/32")][:-1]
    assert words == ["tcp://[::]:8443", "unix:@x", "tcp/8000-8099", "30/minute", "2001:db8::/32"]


def test_comments_and_positions() -> None:
    toks = tokenize("# head\n  allow all # tail\n\tdeny\n")
    assert [(t.text, t.line, t.col) for t in toks] == [("allow", 2, 3), ("all", 2, 9), ("deny", 3, 2), ("", 4, 1)]


def test_strings_unescape_and_unterminated() -> None:
    (tok, eof) = tokenize(r'"a \"b\" \\c"')
    assert tok.kind is Kind.STRING and tok.value == 'a "b" \\c' and eof.kind is Kind.EOF
    bad = tokenize('include "x.conf\nset')
    assert [(t.kind, t.text, t.line) for t in bad] == [
        (Kind.WORD, "include", 1),
        (Kind.ERROR, '"x.conf', 1),
        (Kind.WORD, "set", 2),
        (Kind.EOF, "", 2),
    ]


def test_hash_inside_a_string_is_not_a_comment() -> None:
    assert [t.value for t in tokenize('"a#b" c')][:-1] == ["a#b", "c"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_tokens_cover_the_text_and_positions_agree(text: str) -> None:
    toks = tokenize(text)
    assert toks[-1].kind is Kind.EOF
    lines = text.split("\n")
    for t in toks[:-1]:
        assert text[t.offset : t.offset + len(t.text)] == t.text
        line_start = sum(len(line) + 1 for line in lines[: t.line - 1])
        assert t.offset == line_start + t.col - 1
    # nothing but space and comments is dropped
    rest = list(text)
    for t in toks[:-1]:
        rest[t.offset : t.offset + len(t.text)] = [" "] * len(t.text)
    for chunk in "".join(rest).split("\n"):
        assert chunk.split("#", 1)[0].strip(" \t\r\f\v") == ""
