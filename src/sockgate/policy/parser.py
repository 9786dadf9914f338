"""The native policy language → ``ir.Policy``: a recursive-descent parser.

Theory of operation. ``parse_policy_files`` reads each file through the injected ``read``
(and lists include directories through ``listdir``), lexes it (``lexer.py``) and parses its
statements in order into one shared ``_Context``: sets are defined before use, ``include``
parses the named file right there (relative to the including file) — once: a file included
again adds nothing, as its sets and services are already defined — and a set file read for
one set gives its addresses to any other set that names it; services and defaults collect as
they come. Values are checked by ``literals.py``; matches are built by
``matchparse.py``. Every problem becomes a ``Diagnostic`` and the parser resynchronises at
the next statement keyword, so one run reports every error it can find; if there is any,
``PolicyError`` is raised with all of them and the source texts, and nothing is returned.

Grammar (free layout; ``#`` starts a comment)::

    policy    := { statement }
    statement := 'set' NAME '=' '{' [ setitem { ',' setitem } ] '}'
               | 'set' NAME '<' STRING
               | 'service' NAME { endpoint } '{' { svc_stmt } '}'
               | 'include' STRING
               | 'default' ('allow' | 'deny')
    svc_stmt  := ('allow' | 'deny') match [ limits ]     limits on the same line as the rule
               | 'default' ('allow' | 'deny')
               | limit_clause                            service-wide limits
               | 'listen' URL | 'forward' URL

A file-wide ``default`` applies to every service that gives none.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from sockgate.errors import Diagnostic, PolicyError, UsageError
from sockgate.policy import literals
from sockgate.policy.accounts import Accounts, StaticAccounts
from sockgate.policy.coverage import Cover, cover
from sockgate.policy.ir import Action, AddressSet, Endpoint, IPNetwork, Limits, Policy, Rule, Service
from sockgate.policy.lexer import Kind, Token, tokenize
from sockgate.policy.matchparse import MatchParser, Recover
from sockgate.policy.netlist import NetList
from sockgate.policy.setfile import address_list
from sockgate.policy.source import Span, quote
from sockgate.urls import parse_url

Reader = Callable[[str], str]
Lister = Callable[[str], Sequence[str]]

TOP_KEYWORDS = ("default", "include", "service", "set")
SERVICE_KEYWORDS = ("allow", "ban", "default", "deny", "forward", "limit", "listen")
PROTOCOLS = ("tcp", "udp", "unix")
MAX_INCLUDE_DEPTH = 16


def parse_policy(
    text: str,
    file: str = "<policy>",
    *,
    read: Reader | None = None,
    accounts: Accounts | None = None,
    listdir: Lister | None = None,
) -> Policy:
    """Parse one policy given as text (tests, stdin); includes go through ``read``."""
    texts = {file: text}

    def reader(path: str) -> str:
        if path in texts:
            return texts[path]
        if read is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        return read(path)

    return parse_policy_files([file], read=reader, accounts=accounts or StaticAccounts(), listdir=listdir)


def parse_policy_files(
    paths: Sequence[str],
    *,
    read: Reader,
    accounts: Accounts,
    listdir: Lister | None = None,
) -> Policy:
    """Parse ``paths`` in order as one policy. Raises ``PolicyError`` with every error found."""
    ctx = _Context(read=read, accounts=accounts, listdir=listdir)
    for path in paths:
        ctx.parse_file(path, None)
    return ctx.finish()


@dataclass
class _Context:
    """Everything the files of one policy share while they are parsed."""

    read: Reader
    accounts: Accounts
    listdir: Lister | None
    diags: list[Diagnostic] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    sets: dict[str, AddressSet] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    default: Action | None = None
    default_span: Span | None = None
    stack: list[str] = field(default_factory=list)
    parsed: set[str] = field(default_factory=set)  # policy files, by normal path
    lists: dict[str, NetList] = field(default_factory=dict)  # set files, parsed

    def error(self, span: Span | None, message: str, related: tuple[tuple[Span, str], ...] = ()) -> None:
        self.diags.append(Diagnostic(span, message, "error", related, context=False))  # see Diagnostic

    def load(self, path: str, at: Span | None, what: str) -> str | None:
        """Read ``path``, reporting a failure at ``at``; None when it cannot be read."""
        try:
            text = self.read(path)
        except (OSError, UnicodeError) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            if isinstance(e, IsADirectoryError) and what == "policy file":
                reason += f'; to include the files in it, write include "{path.rstrip("/")}/*.conf"'
            self.error(at, f"cannot read {what} {path!r}: {reason}")
            return None
        if path not in self.texts:
            self.texts[path] = text
            self.sources.append(path)
        return text

    def parse_file(self, path: str, at: Span | None) -> None:
        keys = [normal_path(p) for p in self.stack]
        if normal_path(path) in keys:
            chain = " -> ".join([*self.stack[keys.index(normal_path(path)) :], path])
            self.error(at, f"include cycle: {chain}")
            return
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            self.error(at, f"includes nested more than {MAX_INCLUDE_DEPTH} deep")
            return
        if normal_path(path) in self.parsed:
            return
        self.parsed.add(normal_path(path))
        text = self.load(path, at, "policy file")
        if text is None:
            return
        self.stack.append(path)
        try:
            _FileParser(self, path, text).parse()
        finally:
            self.stack.pop()

    def finish(self) -> Policy:
        if self.diags:
            order = {f: i for i, f in enumerate(self.sources)}
            raise PolicyError(sorted(self.diags, key=lambda d: _diag_order(d, order)), sources=self.texts)
        services = tuple(
            s if s.default is not None else replace(s, default=self.default, default_span=self.default_span)
            for s in self.services.values()
        )
        policy = Policy(
            services=services,
            default=self.default,
            default_span=self.default_span,
            sets=tuple(self.sets.values()),
            sources=tuple(self.sources),
            kind="native",
            texts=tuple(self.texts.items()),
        )
        digest = policy.digest()
        return replace(policy, services=tuple(replace(s, policy_digest=digest) for s in services))


def _diag_order(d: Diagnostic, order: dict[str, int]) -> tuple[int, int, int]:
    """Files in the order they were read, then by position; unplaced errors first."""
    return (order.get(d.span.file, len(order)), d.span.line, d.span.col) if d.span else (-1, 0, 0)


def resolve_path(base_file: str, path: str) -> str:
    """``path`` relative to the directory of ``base_file``, with ``.``, ``..`` and doubled
    slashes folded (pure string arithmetic), so one file has one name and an include cycle
    through ``../`` is seen."""
    if path.startswith("/"):
        return normal_path(path)
    directory = base_file.rpartition("/")[0] if "/" in base_file else ""
    if base_file.startswith("/") and not directory:
        directory = "/"
    if not directory:
        return normal_path(path)
    return normal_path(f"{directory}/{path}")


def normal_path(path: str) -> str:
    """``path`` with ``.`` and empty parts dropped and ``name/..`` folded; a relative path keeps
    its leading ``..``, an absolute one cannot climb above ``/``."""
    absolute = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        elif part != ".." or not absolute:
            parts.append(part)
    joined = "/".join(parts)
    return "/" + joined if absolute else joined or "."


class _FileParser(MatchParser):
    def __init__(self, ctx: _Context, file: str, text: str) -> None:
        super().__init__(file, tokenize(text), ctx.error, ctx.sets, ctx.accounts)
        self.ctx = ctx

    # policy := { statement }
    def parse(self) -> None:
        while self.peek().kind is not Kind.EOF:
            start = self.pos
            try:
                self.statement(self.peek())
            except Recover:
                self.sync(TOP_KEYWORDS, depth=0, start=start)

    def statement(self, tok: Token) -> None:
        handlers = {
            "set": self.set_stmt,
            "service": self.service_stmt,
            "include": self.include_stmt,
            "default": self.file_default,
        }
        if tok.kind is Kind.WORD and tok.text in handlers:
            self.advance()
            handlers[tok.text](tok)
            return
        hint = " (rules go inside a service block)" if tok.text in ("allow", "deny") else ""
        self.unknown_keyword(tok, TOP_KEYWORDS, hint)

    def unknown_keyword(self, tok: Token, valid: Sequence[str], hint: str = "", where: str = "") -> None:
        if tok.kind is Kind.COMMA and where:
            hint = "; a list of clients goes in braces: allow { A, B }"
        if tok.kind is not Kind.WORD or not tok.text[:1].isalpha():
            self.fail(tok, f"expected a statement{where} ({', '.join(valid)}), found {tok.describe()}{hint}")
        close = difflib.get_close_matches(tok.text, valid, n=1)
        if close and not hint:
            hint = f"; did you mean {close[0]!r}?"
        self.fail(tok, f"unknown keyword {quote(tok.text)}{where}; expected one of: {', '.join(valid)}{hint}")

    # 'default' ('allow' | 'deny')
    def file_default(self, kw: Token) -> None:
        action = self.action_word()
        span = self.span(kw)
        if self.ctx.default_span is not None:
            self.ctx.error(span, "the file-wide default is given twice", ((self.ctx.default_span, "first given here"),))
            return
        self.ctx.default, self.ctx.default_span = action, span

    def action_word(self) -> Action:
        tok = self.advance()
        if tok.kind is Kind.WORD and tok.text in ("allow", "deny"):
            return Action(tok.text)
        self.fail(tok, f"expected 'allow' or 'deny' after 'default', found {tok.describe()}")

    # 'include' STRING
    def include_stmt(self, kw: Token) -> None:
        tok = self.expect_path("a quoted file name or pattern after 'include'")
        at = self.span(tok)
        pattern = resolve_path(self.file, tok.value)
        directory, _, base = pattern.rpartition("/")
        if not any(c in "*?[" for c in pattern):
            self.ctx.parse_file(pattern, at)
            return
        if any(c in "*?[" for c in directory):
            self.ctx.error(at, f"wildcards are allowed only in the last part of an include path, found {quote(tok.value)}")
            return
        for path in self.expand(directory, base, at):
            self.ctx.parse_file(path, at)

    def expand(self, directory: str, base: str, at: Span) -> list[str]:
        if self.ctx.listdir is None:
            self.ctx.error(at, "cannot list directories here: include a file by name, without wildcards")
            return []
        try:
            names = self.ctx.listdir(directory or ".")
        except OSError as e:
            self.ctx.error(at, f"cannot list directory {directory or '.'!r}: {e.strerror or e}")
            return []
        hidden_ok = base.startswith(".")
        chosen = sorted(n for n in names if fnmatch.fnmatchcase(n, base) and (hidden_ok or not n.startswith(".")))
        return [f"{directory}/{n}" if directory else n for n in chosen]

    def expect_path(self, what: str) -> Token:
        tok = self.advance()
        if tok.kind is Kind.STRING and tok.value:
            return tok
        self.fail(tok, f"expected {what}, found {tok.describe()}")

    # 'set' NAME ('=' '{' [setitem {',' setitem}] '}' | '<' STRING)
    def set_stmt(self, kw: Token) -> None:
        name_tok = self.word("a set name after 'set'")
        name = self.checked(name_tok, lambda t: literals.name(t, "a set name"))
        op = self.advance()
        nets: Sequence[IPNetwork]
        if op.kind is Kind.EQUALS:
            nets, path = self.set_items(), None
        elif op.kind is Kind.LT:
            path_tok = self.expect_path("a quoted file name after '<'")
            path = resolve_path(self.file, path_tok.value)
            nets = self.set_file(path, self.span(path_tok))
        else:
            self.fail(op, f"expected '=' or '<' after 'set {name}', found {op.describe()}")
        span = self.span(name_tok)
        earlier = self.ctx.sets.get(name)
        if earlier is not None:
            self.ctx.error(span, f"set @{name} is defined twice", ((earlier.span, "first defined here"),))
            return
        self.ctx.sets[name] = AddressSet(name, nets, span, path)

    # '{' [ setitem { ',' setitem } [','] ] '}'      setitem := ADDRESS | CIDR | '@' SET
    def set_items(self) -> tuple[IPNetwork, ...]:
        open_tok = self.expect(Kind.LBRACE, "'{' to open the set's addresses")
        nets: list[IPNetwork] = []
        while self.peek().kind is not Kind.RBRACE:
            tok = self.peek()
            if tok.kind is not Kind.WORD or not (tok.text.startswith("@") or literals.looks_like_address(tok.text)):
                self.fail(tok, f"expected an address, CIDR or @set in a set, found {tok.describe()}")
            self.advance()
            m = self.set_ref(tok) if tok.text.startswith("@") else None
            if m is not None:
                nets.extend(getattr(m, "nets", ()))
            elif (net := self.soft(tok, literals.network)) is not None:
                nets.append(net)
            if self.peek().kind is Kind.COMMA:
                self.advance()
            elif self.peek().kind is not Kind.RBRACE:
                what = f"',' or '}}' in the set opened at line {open_tok.line}"
                self.fail(self.peek(), f"expected {what}, found {self.peek().describe()}")
        self.advance()
        return tuple(dict.fromkeys(nets))

    def set_file(self, path: str, at: Span) -> NetList:
        if path not in self.ctx.lists:
            self.ctx.lists[path] = address_list(path, self.ctx.load(path, at, "address list") or "", self.ctx.error)
        return self.ctx.lists[path]

    # 'service' NAME { endpoint } '{' { svc_stmt } '}'
    def service_stmt(self, kw: Token) -> None:
        name_tok = self.word("a service name after 'service'")
        name = self.checked(name_tok, lambda t: literals.name(t, "a service name"))
        endpoints: list[Endpoint] = []
        while self.peek().kind is Kind.WORD:
            try:
                if (ep := self.endpoint()) is not None:
                    endpoints.append(ep)
            except Recover:
                pass
        self.expect(Kind.LBRACE, f"'{{' to open service {name}")
        body, depth = _ServiceBody(name), self.depth
        while self.peek().kind not in (Kind.RBRACE, Kind.EOF):
            if self.peek().text in ("service", "set", "include") and self.peek().kind is Kind.WORD:
                self.ctx.error(self.span(self.peek()), f"expected '}}' to close service {name} (opened at line "
                               f"{kw.line}) before this {quote(self.peek().text)}")
                self.depth = depth - 1
                self.services_add(name_tok, body, endpoints)
                return
            start = self.pos
            try:
                self.service_statement(body)
            except Recover:
                self.sync(SERVICE_KEYWORDS, depth=depth, start=start)
        self.expect(Kind.RBRACE, f"'}}' to close service {name} (opened at line {kw.line})")
        self.services_add(name_tok, body, endpoints)

    def services_add(self, name_tok: Token, body: "_ServiceBody", endpoints: list[Endpoint]) -> None:
        name, span = body.name, self.span(name_tok)
        earlier = self.ctx.services.get(name)
        if earlier is not None:
            self.ctx.error(span, f"service {name} is declared twice", ((earlier.span or span, "first declared here"),))
            return
        self.ctx.services[name] = body.build(span, tuple(endpoints), self.ctx.error)

    # endpoint := PROTO '/' PORTS {',' PORTS} | 'unix:' PATH
    # A bad protocol or port is reported and parsing goes on (None: nothing usable), so the
    # errors of the service body are found too.
    def endpoint(self) -> Endpoint | None:
        tok = self.advance()
        if tok.text.startswith("unix:"):
            path = tok.text[5:]
            if not (path.startswith("/") or (path.startswith("@") and len(path) > 1)):
                self.fail(tok, f"expected unix:/absolute/path or unix:@name, found {quote(tok.text)}")
            return Endpoint("unix", path=path)
        proto, slash, first = tok.text.partition("/")
        if not slash:
            self.fail(tok, f"expected an endpoint (tcp/PORTS, udp/PORTS, unix:/PATH) or '{{', found {quote(tok.text)}")
        known = proto in PROTOCOLS and proto != "unix"
        if not known:
            self.ctx.error(self.span(tok), f"unknown protocol {quote(proto)}; expected tcp or udp (or unix:/PATH)")
        col = tok.col + len(proto) + 1
        ports = [self.port_range(first, Span(self.file, tok.line, col, max(1, len(first))), known)]
        while self.peek().kind is Kind.COMMA:
            self.advance()
            ptok = self.word("a port or port range after ','")
            ports.append(self.port_range(ptok.text, self.span(ptok), known))
        if not known or None in ports:
            return None
        return Endpoint(proto, ports=tuple(dict.fromkeys(p for p in ports if p is not None)))  # type: ignore[arg-type]

    def port_range(self, text: str, span: Span, report: bool = True) -> tuple[int, int] | None:
        try:
            return literals.port_range(text)
        except literals.LiteralError as e:
            if report:
                self.ctx.error(span, str(e))
            return None

    # svc_stmt := rule | 'default' ('allow' | 'deny') | limit_clause | 'listen' URL | 'forward' URL
    def service_statement(self, body: "_ServiceBody") -> None:
        tok = self.peek()
        if tok.kind is Kind.WORD and tok.text in ("allow", "deny"):
            self.advance()
            self.rule(tok, body)
        elif tok.kind is Kind.WORD and tok.text == "default":
            self.advance()
            action, span = self.action_word(), self.span(tok)
            if body.default_span is not None:
                self.ctx.error(span, f"service {body.name} has two defaults", ((body.default_span, "first default here"),))
            else:
                body.default, body.default_span = action, span
        elif tok.kind is Kind.WORD and tok.text in ("limit", "ban"):
            body.limits = self.limit_clause(body.limits, body.limit_spans)
        elif tok.kind is Kind.WORD and tok.text in ("listen", "forward"):
            self.advance()
            self.url(tok, body)
        else:
            self.unknown_keyword(tok, SERVICE_KEYWORDS, where=f" in service {body.name}")

    # rule := ('allow' | 'deny') match [ limits ]
    def rule(self, kw: Token, body: "_ServiceBody") -> None:
        start, errors_before = self.pos - 1, len(self.ctx.diags)
        match = self.match()
        limits_spans: dict[str, Span] = {}
        limits = Limits()
        while self.peek().kind is Kind.WORD and self.peek().text in ("limit", "ban") and self.peek().line == self.last.line:
            limits = self.limit_clause(limits, limits_spans)
        action = Action(kw.text)
        if limits_spans and action is Action.DENY:
            first = min(limits_spans.values())
            self.ctx.error(first, "limits apply to allowed connections; a deny rule cannot have them")
        text = " ".join(t.text for t in self.tokens[start : self.pos]).replace(" ,", ",")
        rule = Rule(action, match, self.span(kw), text, limits=None if limits.is_empty() else limits)
        body.add(rule, limits_spans, self.ctx.error, checked=len(self.ctx.diags) == errors_before)

    # 'listen' URL | 'forward' URL
    def url(self, kw: Token, body: "_ServiceBody") -> None:
        tok = self.advance()
        if tok.kind not in (Kind.WORD, Kind.STRING):
            self.fail(tok, f"expected a URL after {kw.text!r} (tcp://HOST:PORT, udp://HOST:PORT, unix:/PATH, unix:@NAME), found {tok.describe()}")
        try:
            parse_url(tok.value)
        except UsageError as e:
            self.ctx.error(self.span(tok), f"bad {kw.text} URL: {e}")
            return
        if kw.text == "listen":
            body.listen.append(tok.value)
        elif body.forward is not None:
            self.ctx.error(self.span(kw), f"service {body.name} forwards twice", ((body.forward_span or self.span(kw), "first forward here"),))
        else:
            body.forward, body.forward_span = tok.value, self.span(kw)


@dataclass
class _ServiceBody:
    """A service block being parsed: rules in order, default, limits, proxy URLs."""

    name: str
    rules: list[Rule] = field(default_factory=list)
    covers: dict[Cover, Rule] = field(default_factory=dict)  # the first rule of each cover
    default: Action | None = None
    default_span: Span | None = None
    limits: Limits = field(default_factory=Limits)
    limit_spans: dict[str, Span] = field(default_factory=dict)
    rule_bans: list[tuple[Rule, Span]] = field(default_factory=list)
    listen: list[str] = field(default_factory=list)
    forward: str | None = None
    forward_span: Span | None = None

    def add(self, rule: Rule, limit_spans: dict[str, Span], error: Callable[..., None], checked: bool) -> None:
        """Append ``rule``; an exact duplicate of an earlier rule is an error. A rule with a
        bad value (``checked`` False) is kept out of the comparison: it is already reported."""
        c = cover(rule.match) if checked else None
        if c is not None and c.is_empty():
            c = None  # matches nobody: lint says so; it duplicates nothing
        earlier = self.covers.get(c) if c is not None else None
        if earlier is not None:
            where = f"{earlier.span.file}:{earlier.span.line}"
            error(
                rule.span,
                f"duplicate rule: it matches exactly the clients of the rule at {where}, "
                "which decides first, so it can never match",
                ((earlier.span, f"this rule matches the same clients: {earlier.text}"),),
            )
            return
        if c is not None:
            self.covers[c] = rule
        if "ban_seconds" in limit_spans:
            self.rule_bans.append((rule, limit_spans["ban_seconds"]))
        self.rules.append(rule)

    def build(self, span: Span, endpoints: tuple[Endpoint, ...], error: Callable[..., None]) -> Service:
        for rule, ban_span in self.rule_bans:
            if (rule.limits is None or rule.limits.rate_per_source is None) and self.limits.rate_per_source is None:
                error(ban_span, _BAN_NEEDS_RATE)
        if "ban_seconds" in self.limit_spans and self.limits.rate_per_source is None:
            error(self.limit_spans["ban_seconds"], _BAN_NEEDS_RATE)
        return Service(
            name=self.name,
            rules=tuple(self.rules),
            default=self.default,
            endpoints=endpoints,
            span=span,
            default_span=self.default_span,
            limits=None if self.limits.is_empty() else self.limits,
            listen=tuple(self.listen),
            forward=self.forward,
        )


_BAN_NEEDS_RATE = "a ban needs a per-source rate to trigger it (add 'limit rate N/minute per source')"
