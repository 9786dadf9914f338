"""Token handling, matches and limits for the native parser (``parser.py`` builds on this).

A *match* is the client side of a rule: one item or a braced list, optionally followed by
``except`` and another match (right-nested, as in hosts_access). Value errors inside a match
(an unknown set, a CIDR with host bits, an unknown user) are recorded and parsing goes on
with a placeholder, so a list reports all of its bad items; only structural errors (a missing
brace) raise ``Recover``, which makes the statement loop skip to the next keyword.

Grammar::

    match  := list [ 'except' match ]
    list   := item | '{' match { ',' match } [ ',' ] '}'
    item   := 'all' | ADDRESS | CIDR | '@' SET
            | 'host' NAME | 'user' NAME | 'group' NAME | 'uid' N | 'gid' N | 'exe' PATH
    limit_clause := 'limit' ('concurrent' N | 'rate' RATE) [ 'per' 'source' ]
                  | 'ban' DURATION
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Callable, NoReturn, Sequence, TypeVar

from sockgate.policy import literals
from sockgate.policy.accounts import Accounts
from sockgate.policy.ir import (
    AddressSet,
    AddrMatch,
    AnyOf,
    Except,
    HostPattern,
    Limits,
    Match,
    MatchAll,
    MatchNone,
    Principal,
)
from sockgate.policy.lexer import Kind, Token
from sockgate.policy.source import Span, clip, quote

T = TypeVar("T")
ErrorSink = Callable[..., None]

# Words that start a statement: a match never swallows them, so a rule missing its client
# list does not hide the statement after it.
STATEMENT_KEYWORDS = ("allow", "ban", "default", "deny", "forward", "include", "limit", "listen", "service", "set")
MAX_NESTING = 32  # keeps every recursive walk over a match far from Python's recursion limit
ITEM_KEYWORDS = ("all", "host", "user", "group", "uid", "gid", "exe")
EXPECTED_ITEM = "an address, CIDR, @set, all, host NAME, user NAME, group NAME, uid N, gid N or exe PATH"
LIMIT_FIELDS = {
    ("concurrent", True): "concurrent_per_source",
    ("concurrent", False): "concurrent_total",
    ("rate", True): "rate_per_source",
    ("rate", False): "rate_total",
}
LIMIT_NAMES = {
    "concurrent_per_source": "limit concurrent ... per source",
    "concurrent_total": "limit concurrent",
    "rate_per_source": "limit rate ... per source",
    "rate_total": "limit rate",
    "ban_seconds": "ban",
}


class Recover(Exception):
    """A structural error was reported; resynchronise at the next statement."""


class MatchParser:
    def __init__(
        self, file: str, tokens: list[Token], error: ErrorSink, sets: dict[str, AddressSet], accounts: Accounts
    ) -> None:
        self.file = file
        self.tokens = tokens
        self.pos = 0
        self.depth = 0  # braces open at ``pos``
        self.nesting = 0  # matches being parsed, one inside the other
        self.error = error
        self.sets = sets
        self.accounts = accounts

    # -- tokens ---------------------------------------------------------------------------

    def peek(self) -> Token:
        return self.tokens[self.pos]

    @property
    def last(self) -> Token:
        return self.tokens[max(0, self.pos - 1)]

    def advance(self) -> Token:
        tok = self.tokens[self.pos]
        if tok.kind is not Kind.EOF:
            self.pos += 1
        if tok.kind is Kind.LBRACE:
            self.depth += 1
        elif tok.kind is Kind.RBRACE:
            self.depth = max(0, self.depth - 1)
        return tok

    def span(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.col, max(1, len(tok.text)))

    def fail(self, tok: Token, message: str) -> NoReturn:
        if tok.kind is Kind.ERROR:
            message = f"unterminated string: {clip(tok.text)}" if tok.text.startswith('"') else f"unexpected character {quote(tok.text)}"
        self.error(self.span(tok), message)
        raise Recover()

    def expect(self, kind: Kind, what: str) -> Token:
        tok = self.peek()
        if tok.kind is not kind:
            self.fail(tok, f"expected {what}, found {tok.describe()}")
        return self.advance()

    def word(self, what: str) -> Token:
        tok = self.peek()
        if tok.kind is not Kind.WORD:
            self.fail(tok, f"expected {what}, found {tok.describe()}")
        return self.advance()

    def checked(self, tok: Token, fn: Callable[[str], T]) -> T:
        """``fn(tok.text)``, or report its ``LiteralError`` at ``tok`` and recover."""
        try:
            return fn(tok.text)
        except literals.LiteralError as e:
            self.fail(tok, str(e))

    def soft(self, tok: Token, fn: Callable[[str], T]) -> T | None:
        """``fn(tok.value)``, or report its ``LiteralError`` at ``tok`` and go on with None."""
        try:
            return fn(tok.value)
        except literals.LiteralError as e:
            self.error(self.span(tok), str(e))
            return None

    def sync(self, keywords: Sequence[str], depth: int, start: int) -> None:
        """Skip to the next ``keywords`` word at brace ``depth``, or to the ``}`` that closes
        that level; past at least one token when the failed statement at ``start`` consumed none."""
        while (tok := self.peek()).kind is not Kind.EOF:
            if self.depth == depth and self.pos > start and tok.kind is Kind.WORD and tok.text in keywords:
                return
            if self.depth == depth and tok.kind is Kind.RBRACE and depth > 0:
                return
            self.advance()

    # -- matches --------------------------------------------------------------------------

    # match := list [ 'except' match ]
    def match(self) -> Match:
        if self.nesting >= MAX_NESTING:
            self.fail(self.peek(), f"a match nests lists and excepts more than {MAX_NESTING} deep")
        self.nesting += 1
        try:
            include = self.list()
            if self.peek().kind is Kind.WORD and self.peek().text == "except":
                self.advance()
                return Except(include, self.match())
            return include
        finally:
            self.nesting -= 1

    # list := item | '{' match { ',' match } [ ',' ] '}'
    def list(self) -> Match:
        if self.peek().kind is not Kind.LBRACE:
            return self.item()
        open_tok = self.advance()
        items: list[Match] = []
        while self.peek().kind is not Kind.RBRACE:
            items.append(self.match())
            if self.peek().kind is Kind.COMMA:
                self.advance()
            elif self.peek().kind is not Kind.RBRACE:
                self.fail(self.peek(), f"expected ',' or '}}' in the list opened at line {open_tok.line}, found {self.peek().describe()}")
        self.advance()
        if not items:
            self.error(self.span(open_tok), "an empty list matches nothing; name at least one client")
        return AnyOf(tuple(items))

    # item := 'all' | ADDRESS | CIDR | '@' SET | KEYWORD VALUE   (see the module docstring)
    def item(self) -> Match:
        tok = self.peek()
        if tok.kind is not Kind.WORD:
            self.fail(tok, f"expected {EXPECTED_ITEM}, found {tok.describe()}")
        text = tok.text
        if text == "all":
            self.advance()
            return MatchAll()
        if text.startswith("@"):
            self.advance()
            return self.set_ref(tok)
        if text in ITEM_KEYWORDS:
            self.advance()
            return self.principal_or_host(tok)
        if literals.looks_like_address(text):
            self.advance()
            net = self.soft(tok, literals.network)
            return AddrMatch((net,), text) if net is not None else MatchNone()
        if text in STATEMENT_KEYWORDS:
            self.fail(tok, f"expected {EXPECTED_ITEM}, found {quote(text)}")
        self.advance()
        self.error(self.span(tok), f"expected {EXPECTED_ITEM}, found {quote(text)}")
        return MatchNone()

    # '@' SET  -- the set's networks, labelled '@SET' so messages and the printer keep the name
    def set_ref(self, tok: Token) -> Match:
        name = tok.text[1:]
        found = self.sets.get(name)
        if found is not None:
            return AddrMatch(found.nets, tok.text)
        msg = f"unknown set @{name}"
        close = difflib.get_close_matches(name, list(self.sets), n=1)
        if close:
            msg += f"; did you mean @{close[0]}?"
        elif not self.sets:
            msg += " (no sets are defined before this line; define it with 'set NAME = { ... }' first)"
        self.error(self.span(tok), msg)
        return MatchNone()

    # ('host' NAME | 'user' NAME | 'group' NAME | 'uid' N | 'gid' N | 'exe' PATH)
    def principal_or_host(self, kw: Token) -> Match:
        tok = self.peek()
        if tok.kind not in (Kind.WORD, Kind.STRING) or (tok.kind is Kind.STRING and kw.text != "exe"):
            self.fail(tok, f"expected a value after {kw.text!r}, found {tok.describe()}")
        self.advance()
        kind = kw.text
        if kind == "host":
            host = self.soft(tok, literals.host_name)
            return HostPattern(host) if host is not None else MatchNone()
        if kind in ("uid", "gid"):
            n = self.soft(tok, lambda t: literals.ident(t, kind))
            return Principal(kind, n) if n is not None else MatchNone()  # type: ignore[arg-type]
        if kind == "exe":
            path = self.soft(tok, literals.exe_path)
            return Principal("exe", path) if path is not None else MatchNone()
        what = "user" if kind == "user" else "group"
        name = self.soft(tok, lambda t: literals.account(t, what))
        if name is None:
            return MatchNone()
        ident = self.accounts.uid(name) if kind == "user" else self.accounts.gid(name)
        if ident is None:
            number = f"; for a {what} id write '{kind[0]}id {name}'" if name.isdigit() else ""
            self.error(self.span(tok), f"unknown {what} {quote(name)} (not in the account database){number}")
        return Principal(kind, name, ident)  # type: ignore[arg-type]

    # -- limits ---------------------------------------------------------------------------

    # limit_clause := 'limit' ('concurrent' N | 'rate' RATE) ['per' 'source'] | 'ban' DURATION
    def limit_clause(self, limits: Limits, spans: dict[str, Span]) -> Limits:
        kw = self.advance()
        value: object
        if kw.text == "ban":
            tok = self.word("a duration after 'ban' (30s, 10m, 2h, 1d)")
            value, key = self.soft(tok, literals.duration), "ban_seconds"
        else:
            kind = self.word("'concurrent' or 'rate' after 'limit'")
            if kind.text not in ("concurrent", "rate"):
                self.fail(kind, f"expected 'concurrent' or 'rate' after 'limit', found {quote(kind.text)}")
            tok = self.word(f"a value after 'limit {kind.text}'")
            if kind.text == "concurrent":
                value = self.soft(tok, lambda t: literals.positive(t, "a connection count"))
            else:
                value = self.soft(tok, literals.rate)
            key = LIMIT_FIELDS[(kind.text, self.per_source())]
        span = self.span(kw)
        if key in spans:
            self.error(span, f"'{LIMIT_NAMES[key]}' is given twice", ((spans[key], "first given here"),))
            return limits
        spans[key] = span
        return limits if value is None else replace(limits, **{key: value})  # type: ignore[arg-type]

    # [ 'per' 'source' ]
    def per_source(self) -> bool:
        if not (self.peek().kind is Kind.WORD and self.peek().text == "per"):
            return False
        self.advance()
        tok = self.peek()
        if tok.kind is not Kind.WORD or tok.text != "source":
            self.fail(tok, f"expected 'source' after 'per', found {tok.describe()}")
        self.advance()
        return True

