"""hosts.allow / hosts.deny (hosts_access(5), hosts_options(5)) → the shared IR.

libwrap reads ``hosts.allow`` then ``hosts.deny``; the first line whose daemon list and
client list both match decides (allow in hosts.allow, deny in hosts.deny, unless its options
end in ``allow``, ``deny`` or ``twist``), and when nothing matches access is granted. The
Policy built here says the same: the rules of hosts.allow then hosts.deny, in order, each
with its daemon list (``DaemonMatch``) and client list (``Match``), and ``fallback=ALLOW``.

Lines follow libwrap's reader (``wraplines``: a backslash before the newline continues the
line; NUL bytes and lines too long for its buffer are refused), a line whose first character
is ``#`` is a comment (``#`` elsewhere is an ordinary character), the fields are split at the
first two colons, list items at commas, blanks, tabs and CRs (libwrap's ``strtok`` set; every
other byte is part of a word), and ``EXCEPT`` nests to the right (``a EXCEPT b EXCEPT c`` is
``a EXCEPT (b EXCEPT c)``), at most ``MAX_NESTING`` deep as in the native language. Words are
compared as libwrap's ``strcasecmp`` compares them: ASCII letters fold, nothing else does.

Patterns become ``AddrMatch`` wherever that is exactly what libwrap decides (canonical
addresses and ``n.n.n.`` prefixes, ``net/mask`` with libwrap's ``(addr & mask) == net``, so a
net with host bits set matches nothing, ``[v6]`` and ``[v6]/len``); patterns that libwrap
compares as text with the host name or address stay ``HostPattern(hosts_access=True)`` or
``HostClass`` and are matched by ``hostmatch`` with libwrap's own string rules.

Where libwrap would log a complaint and skip a line, or fail only when the rule is used
(a missing colon, an empty list, a bad option, a bad net/mask, no final newline), or reads
something other than what the file shows (a NUL byte, an overlong line or word), this
module reports ``file:line:col: message`` and rejects the files: nothing is half-applied.
Pattern files (``/path``) are read through the injected ``read``; a missing one matches
nothing, as in libwrap. Options are kept as ``Option`` values and never executed.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import replace
from dataclasses import dataclass, field
from typing import Callable, Sequence

from sockgate.errors import Diagnostic, PolicyError
from sockgate.intlist import number
from sockgate.policy import hostmatch
from sockgate.policy.accounts import Accounts, StaticAccounts
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    DaemonMatch,
    DaemonPattern,
    Except,
    HostClass,
    HostPattern,
    IPNetwork,
    Match,
    MatchAll,
    MatchNone,
    Option,
    Policy,
    Rule,
    UserAt,
)
from sockgate.policy.matchparse import MAX_NESTING
from sockgate.policy.source import Span, quote
from sockgate.policy.wraplines import Line, logical_lines, pattern_words
from sockgate.policy.wrapoptions import run_options, scanf_int, setenv_problem

_SEP = ", \t\r\n"
_BLANK = " \t\r\n"
_CHOP = " \t\n\v\f\r"  # options.c chop_string trims isspace(), the C locale's white space
_CLASSES = {"known": "KNOWN", "unknown": "UNKNOWN", "paranoid": "PARANOID", "local": "LOCAL"}
_MAX_FILE_NESTING = 16  # /file lists naming /file lists, as deep as native includes may go
_MAX_FILE_WORDS = 1_000_000  # all /file expansions together: "/a /a /a" naming "/b /b /b"...
_MAX_MASK_NETS = 256  # non-contiguous masks expand to this many CIDRs at most


@dataclass(frozen=True)
class _Tok:
    text: str
    span: Span


@dataclass(frozen=True)
class _Expansion:
    """A parsed pattern file: its match (None after errors, already reported), how many
    words it stands for with the files it names expanded, and how deep those files go."""

    match: Match | None
    words: int
    height: int


@dataclass
class _State:
    read: Callable[[str], str]
    accounts: Accounts
    diags: list[Diagnostic] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    reading: list[str] = field(default_factory=list)  # pattern files being expanded (cycles)
    files: dict[str, _Expansion] = field(default_factory=dict)  # pattern files parsed so far
    expanded: int = 0  # words taken from pattern files, a file named n times counted n times
    deepest: int = 0  # the most pattern files open at once so far

    seen: set[Diagnostic] = field(default_factory=set)

    def error(self, span: Span, message: str) -> None:
        # context=False: the culprit and what precedes it only — a pattern file or a
        # hosts.allow named by mistake may be anything (/etc/shadow), as with the native parser
        d = Diagnostic(span, message, context=False)
        if d not in self.seen:  # a pattern file named twice has its problems once
            self.seen.add(d)
            self.diags.append(d)


def parse_hosts_access(
    allow_path: str | None, deny_path: str | None, *, read: Callable[[str], str],
    accounts: Accounts | None = None,
) -> Policy:
    """Parse a hosts.allow / hosts.deny pair (either may be None; a missing file is empty, as
    in libwrap). ``accounts`` answers for ``user``/``group`` options (none: every account is
    unknown). Raises ``PolicyError`` listing every problem found."""
    st = _State(read, accounts or StaticAccounts())
    rules: list[Rule] = []
    for path, action in ((allow_path, Action.ALLOW), (deny_path, Action.DENY)):
        if path is None:
            continue
        text = _read_table(st, path)
        if text is not None:
            rules.extend(_parse_table(st, path, text, action))
    if st.diags:
        order = {f: i for i, f in enumerate(st.texts)}
        diags = sorted(st.diags, key=lambda d: (order.get(d.span.file, -1), d.span) if d.span else (-1,))
        raise PolicyError(diags, sources=st.texts)
    return Policy(
        rules=tuple(rules),
        sources=tuple(st.sources),
        kind="hosts_access",
        fallback=Action.ALLOW,
        texts=tuple(st.texts.items()),
    )


def _read_table(st: _State, path: str) -> str | None:
    try:
        text = st.read(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        st.error(Span(path, 1, 1), f"cannot read {path}: {e.strerror or e}")
        return None
    st.sources.append(path)
    st.texts[path] = text
    return text


# ---------------------------------------------------------------------------------------------
# Lines


def _tokens(line: Line, start: int, end: int, file: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i = start
    while i < end:
        if line.text[i] in _SEP:
            i += 1
            continue
        j = i
        while j < end and line.text[j] not in _SEP:
            j += 1
        toks.append(_Tok(line.text[i:j], line.span(i, j - i, file)))
        i = j
    return toks


def _parse_table(st: _State, file: str, text: str, action: Action) -> list[Rule]:
    rules = []
    for line in logical_lines(text, file, st.error):
        t = line.text
        if t.startswith("#") or not t.strip(_BLANK):
            continue
        rule = _parse_rule(st, file, line, action)
        if rule is not None:
            rules.append(rule)
    return rules


# rule := daemon_list ':' client_list [ ':' options ]
def _parse_rule(st: _State, file: str, line: Line, action: Action) -> Rule | None:
    t = line.text
    c1 = hostmatch.split_at(t, ":")
    lead = len(t) - len(t.lstrip(_BLANK))
    where = line.span(lead, len(t.strip(_BLANK)), file)
    if c1 < 0:
        st.error(where, "missing ':' between the daemon list and the client list"
                 " (libwrap skips this line)")
        return None
    c2 = hostmatch.split_at(t, ":", c1 + 1)
    end_clients = c2 if c2 >= 0 else len(t)
    daemons = _parse_list(st, file, _tokens(line, 0, c1, file), where, "daemon", _daemon_item)
    clients = _parse_list(st, file, _tokens(line, c1 + 1, end_clients, file),
                          line.span(c1, 1, file), "client", _client_item)
    options: tuple[Option, ...] = ()
    if c2 >= 0:
        options, action = _parse_options(st, file, line, c2 + 1, action)
        options, action = _credentials(st, options, action, where)
    if daemons is None or clients is None:
        return None
    return Rule(
        action=action,
        match=clients,  # type: ignore[arg-type]
        span=Span(file, line.first, 1, max(1, sum(1 for w in line.where if w[0] == line.first))),
        text=" ".join(t.split()),
        daemons=daemons,  # type: ignore[arg-type]
        options=options,
    )


_Item = Callable[[_State, str, _Tok], "Match | DaemonMatch | None"]


# list := item+ [ 'EXCEPT' list ]        (right-nested; libwrap list_match)
def _parse_list(
    st: _State, file: str, toks: Sequence[_Tok], where: Span, what: str, item: _Item
) -> Match | DaemonMatch | None:
    """Built from the right without recursion; EXCEPT nests at most ``MAX_NESTING`` deep, as
    the native parser's matches do, so no walk over the tree nears Python's recursion limit."""
    cuts = [i for i, tk in enumerate(toks) if hostmatch.fold(tk.text) == "except"]
    if len(cuts) > MAX_NESTING:
        st.error(toks[cuts[MAX_NESTING]].span, f"a list nests EXCEPT more than {MAX_NESTING} deep")
        return None
    parts: list[Match | DaemonMatch] = []
    ok = True
    for n, (lo, hi) in enumerate(zip([-1] + cuts, cuts + [len(toks)])):
        head = toks[lo + 1 : hi]
        if not head:
            _empty_list(st, toks, cuts, n, where, what)
            return None
        items = [item(st, file, tk) for tk in head]
        ok = ok and all(i is not None for i in items)
        parts.append(items[0] if len(items) == 1 else AnyOf(tuple(items)))  # type: ignore[arg-type]
    if not ok:
        return None
    out = parts[-1]
    for include in reversed(parts[:-1]):
        out = Except(include, out)  # type: ignore[assignment]  # one builder for both trees
    return out


def _empty_list(st: _State, toks: Sequence[_Tok], cuts: list[int], n: int, where: Span, what: str) -> None:
    """Report the ``n``-th part of a list (between EXCEPTs) as empty."""
    if n == 0 or n < len(cuts):
        at = toks[cuts[n]].span if cuts else (toks[0].span if toks else where)
        st.error(at, f"expected a {what} pattern, found {'EXCEPT' if cuts else 'nothing'}")
    else:
        st.error(toks[cuts[n - 1]].span, f"expected a {what} pattern after EXCEPT, found nothing")


# daemon := name | name '@' host
def _daemon_item(st: _State, file: str, tok: _Tok) -> DaemonMatch | None:
    at = hostmatch.split_at(tok.text, "@", 1)
    if at < 0:
        return MatchAll() if hostmatch.fold(tok.text) == "all" else DaemonPattern(tok.text)
    server = _host_after(st, file, tok, at)
    return None if server is None else DaemonPattern(tok.text[:at], server)


# client := host | user '@' host
def _client_item(st: _State, file: str, tok: _Tok) -> Match | None:
    at = hostmatch.split_at(tok.text, "@", 1)
    if at < 0:
        return host_item(st, file, tok)
    m = _host_after(st, file, tok, at)
    return None if m is None else UserAt(tok.text[:at], m)


def _host_after(st: _State, file: str, tok: _Tok, at: int) -> Match | None:
    """The host pattern after the '@' at ``at`` of ``tok`` (a daemon's server, a client's host)."""
    host = _sub(tok, at + 1)
    if not host.text:
        st.error(tok.span, f"expected a host after '@' in {quote(tok.text)}")
        return None
    return host_item(st, file, host)


def _sub(tok: _Tok, start: int) -> _Tok:
    s = tok.span
    return _Tok(tok.text[start:], Span(s.file, s.line, s.col + start, max(1, len(tok.text) - start)))


# ---------------------------------------------------------------------------------------------
# Host patterns (client lists, daemon@host, user@host, pattern files)


def host_item(st: _State, file: str, tok: _Tok) -> Match | None:
    t = tok.text
    low = hostmatch.fold(t)  # libwrap's STR_EQ is strcasecmp: ASCII letters only
    if t.startswith("@"):
        st.error(tok.span, f"NIS netgroups are not supported: {quote(t)}")
        return None
    if t.startswith("/"):
        return _pattern_file(st, tok)
    if low == "all":
        return MatchAll()
    if low in _CLASSES:
        return HostClass(_CLASSES[low])  # type: ignore[arg-type]
    if hostmatch.split_at(t, "/") >= 0:
        return _net_mask(st, tok)
    if "*" in t or "?" in t:
        return HostPattern(t, hosts_access=True)
    if t.startswith("[") and t.endswith("]"):
        return _v6_exact(st, tok)
    if hostmatch.not_inaddr(t) or t.startswith("."):
        return HostPattern(t, hosts_access=True)
    return _v4_text(t)


def _v4_text(t: str) -> AddrMatch:
    """Digits and dots only: libwrap compares them with the address text, exactly or as a
    prefix; only canonical dotted decimal can ever be equal to that text."""
    label = t
    body = t[:-1] if t.endswith(".") else t
    parts = body.split(".")
    canonical = all((n := number(p, 0, 255)) is not None and str(n) == p for p in parts)
    if t.endswith("."):
        if canonical and 1 <= len(parts) <= 3:
            ip = ".".join(parts + ["0"] * (4 - len(parts)))
            return AddrMatch((ipaddress.ip_network(f"{ip}/{8 * len(parts)}"),), label)
        return AddrMatch((), label)
    if canonical and len(parts) == 4:
        return AddrMatch((ipaddress.ip_network(f"{body}/32"),), label)
    return AddrMatch((), label)


def _v6_exact(st: _State, tok: _Tok) -> Match | None:
    inner = tok.text[1:-1]
    if "%" in inner:
        st.error(tok.span, f"zone indexes are not supported in {quote(tok.text)}")
        return None
    a = hostmatch.bracketed_v6(tok.text)
    if a is None:
        st.error(tok.span, f"expected an IPv6 address inside [], found {quote(inner)}")
        return None
    return AddrMatch((ipaddress.IPv6Network(a),), tok.text)


# net/mask := n.n.n.n '/' (m.m.m.m | len)  |  '[' v6 ']' '/' len
def _net_mask(st: _State, tok: _Tok) -> Match | None:
    cut = hostmatch.split_at(tok.text, "/")
    net_tok, mask_tok = tok.text[:cut], tok.text[cut + 1 :]
    net4 = hostmatch.dot_quad_addr(net_tok)
    if net4 is not None:
        mask = hostmatch.v4_mask(mask_tok)
        if mask is None:
            st.error(tok.span, f"bad netmask {quote(mask_tok)} in {quote(tok.text)}: expected a dotted-quad"
                     " mask (not 255.255.255.255) or a prefix length 1-32")
            return None
        return _masked_v4(net4, mask, tok)
    if net_tok.startswith("[") and net_tok.endswith("]"):
        if "%" in net_tok:
            st.error(tok.span, f"zone indexes are not supported in {quote(tok.text)}")
            return None
        net6 = hostmatch.bracketed_v6(net_tok)
        plen = hostmatch.v6_prefix_len(mask_tok)
        if net6 is None:
            st.error(tok.span, f"expected an IPv6 address inside [], found {quote(net_tok[1:-1])}")
            return None
        if plen is None:
            st.error(tok.span, f"bad prefix length {quote(mask_tok)} in {quote(tok.text)}: expected 0-128")
            return None
        return AddrMatch((ipaddress.IPv6Network((net6, plen), strict=False),), tok.text)
    st.error(tok.span, f"bad net/mask {quote(tok.text)}: expected n.n.n.n/m.m.m.m, n.n.n.n/len"
             " or [ipv6]/len")
    return None


def _masked_v4(net: int, mask: int, tok: _Tok) -> Match:
    """The addresses with ``(addr & mask) == net`` — none when ``net`` has bits outside the
    mask — minus 255.255.255.255, which libwrap cannot parse as an address."""
    if net & ~mask & 0xFFFFFFFF:
        return AddrMatch((), tok.text)
    low = (mask & -mask) & 0xFFFFFFFF if mask else 1 << 32
    plen = 32 - (low.bit_length() - 1)
    free = [b for b in range(32 - plen, 32) if not mask & (1 << b)]  # holes above the run
    if len(free) > _MAX_MASK_NETS.bit_length() - 1:
        return HostPattern(tok.text, hosts_access=True)
    nets: list[IPNetwork] = []
    for k in range(1 << len(free)):
        base = net
        for i, b in enumerate(free):
            if k >> i & 1:
                base |= 1 << b
        nets.extend(_without_broadcast(ipaddress.IPv4Network((base, plen))))
    return AddrMatch(tuple(nets), tok.text)


def _without_broadcast(n: ipaddress.IPv4Network) -> list[IPNetwork]:
    allones = ipaddress.IPv4Network("255.255.255.255/32")
    if not n.supernet_of(allones):
        return [n]
    return sorted(n.address_exclude(allones))


def _pattern_file(st: _State, tok: _Tok) -> Match | None:
    """``/path``: every whitespace-separated word in the file is a host pattern. Each file is
    parsed once and its match shared where it is named again; what it stands for, counted
    each time it is named, is bounded (files naming files many times grow as a power of the
    nesting), and so is how deep files name files."""
    path = tok.text
    if "\0" in path or st.expanded > _MAX_FILE_WORDS:  # already reported
        return None
    if path in st.reading:
        st.error(tok.span, f"pattern file {path} includes itself")
        return None
    got = st.files.get(path)
    depth = len(st.reading) + (got.height if got is not None else 1)
    if depth > _MAX_FILE_NESTING:  # checked before a new file is parsed: no deep recursion
        st.error(tok.span, f"pattern files nest more than {_MAX_FILE_NESTING} deep")
        return None
    got = got or _parse_pattern_file(st, tok)
    if got is None:
        return MatchNone()  # missing: matches nothing, as in libwrap
    if got.match is None:
        return None  # its errors are reported
    st.expanded += got.words
    st.deepest = max(st.deepest, len(st.reading) + got.height)
    if st.expanded > _MAX_FILE_WORDS:
        st.error(tok.span, f"pattern files expand to more than {_MAX_FILE_WORDS:,} patterns in all"
                 " (a file named n times counts n times)")
        return None
    return got.match


def _parse_pattern_file(st: _State, tok: _Tok) -> _Expansion | None:
    """Read and parse pattern file ``tok.text`` (None when it is missing)."""
    path = tok.text
    try:
        text = st.read(path)
    except (FileNotFoundError, IsADirectoryError):
        return None
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EISDIR):
            return None
        st.error(tok.span, f"cannot read pattern file {path}: {e.strerror or e}")
        return _Expansion(None, 0, 1)
    if path not in st.texts:
        st.sources.append(path)
        st.texts[path] = text
    words = pattern_words(text, path, st.error)
    outer, start, st.deepest = st.deepest, st.expanded, len(st.reading) + 1
    st.reading.append(path)
    try:
        items = [host_item(st, path, _Tok(w, span)) for w, span in words]
    finally:
        st.reading.pop()
    got = _Expansion(_any(items), len(words) + st.expanded - start, st.deepest - len(st.reading))
    st.expanded, st.deepest = start, max(outer, st.deepest)  # the caller counts it as named
    st.files[path] = got
    return got


def _any(items: list[Match | None]) -> Match | None:
    if any(i is None for i in items):
        return None
    if not items:
        return MatchNone()
    return items[0] if len(items) == 1 else AnyOf(tuple(items))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Options (hosts_options(5)); validated as libwrap validates them when the rule is used

# name -> (needs a value, may take a value, must be last)
_OPTIONS: dict[str, tuple[bool, bool, bool]] = {
    "user": (True, True, False),
    "group": (True, True, False),
    "umask": (True, True, False),
    "linger": (True, True, False),
    "keepalive": (False, False, False),
    "spawn": (True, True, False),
    "twist": (True, True, True),
    "rfc931": (False, True, False),
    "setenv": (True, True, False),
    "nice": (False, True, False),
    "severity": (True, True, False),
    "allow": (False, False, True),
    "deny": (False, False, True),
    "banners": (True, True, False),
    "aclexec": (True, True, False),
}
_FACILITIES = {"kern", "user", "mail", "daemon", "auth", "lpr", "news", "uucp", "cron"} | {
    f"local{i}" for i in range(8)
}
_LEVELS = {"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"}


# options := option ( ':' option )*      ("\:" is a colon inside an option)
def _parse_options(
    st: _State, file: str, line: Line, start: int, action: Action
) -> tuple[tuple[Option, ...], Action]:
    fields = _option_fields(line.text, start)
    out: list[Option] = []
    for n, (fstart, ftext) in enumerate(fields):
        lead = len(ftext) - len(ftext.lstrip(_CHOP))
        span = line.span(fstart + lead, len(ftext.strip(_CHOP)), file)
        opt = _option(st, span, ftext, last=n == len(fields) - 1)
        if opt is None:
            continue
        out.append(opt)
        if opt.name in ("allow", "deny", "twist"):
            action = Action.ALLOW if opt.name == "allow" else Action.DENY
    return tuple(out), action


def _credentials(
    st: _State, options: tuple[Option, ...], action: Action, where: Span
) -> tuple[tuple[Option, ...], Action]:
    """Report the options refused at load (accounts that do not exist, ``aclexec``); a rule
    with an option that always fails when libwrap runs it denies (see ``wrapoptions``)."""
    out = run_options(options, st.accounts)
    for o, message in out.refused:
        st.error(o.span or where, message)
    if out.fails is None:
        return options, action
    return tuple(replace(o, fails=out.why) if o is out.fails else o for o in options), Action.DENY


def _option_fields(text: str, start: int) -> list[tuple[int, str]]:
    fields: list[tuple[int, str]] = []
    buf: list[str] = []
    i = fstart = start
    while i < len(text):
        c = text[i]
        if c == ":":
            fields.append((fstart, "".join(buf)))
            buf, fstart = [], i + 1
        elif c == "\\" and i + 1 < len(text) and text[i + 1] == ":":
            buf.append(":")
            i += 1
        else:
            buf.append(c)
        i += 1
    fields.append((fstart, "".join(buf)))
    return fields


def _option(st: _State, span: Span, raw: str, last: bool) -> Option | None:
    body = raw.strip(_CHOP)
    if not body:
        st.error(span, "empty option (libwrap denies every client this rule matches)")
        return None
    k = 0
    while k < len(body) and body[k] not in " \t\r\n=":
        k += 1
    key, rest = body[:k], body[k:].lstrip(" \t\r\n")
    if rest.startswith("="):
        rest = rest[1:].lstrip(" \t\r\n")
    name = hostmatch.fold(key)
    spec = _OPTIONS.get(name)
    if spec is None:
        choices = ", ".join(sorted(_OPTIONS))
        st.error(span, f"unknown option {quote(key)}: expected one of {choices}")
        return None
    needs, may, use_last = spec
    problem = None
    if needs and not rest:
        problem = f"option {quote(name)} needs a value"
    elif rest and not may:
        problem = f"option {quote(name)} takes no value, found {quote(rest)}"
    elif use_last and not last:
        problem = f"option {quote(name)} must be the last option"
    elif rest:
        problem = _bad_value(name, rest)
    if problem is not None:
        st.error(span, problem + " (libwrap denies every client this rule matches)")
        return None
    return Option(name, rest, span)


def _bad_value(name: str, value: str) -> str | None:
    if name == "umask":
        mask = scanf_int(value, 8, signed=False)  # sscanf "%o" into an unsigned
        if mask is None or mask & ~0o777:
            return f"bad umask value {quote(value)}: expected an octal mask up to 777"
    elif name in ("nice", "linger", "rfc931"):
        number = scanf_int(value, 10, signed=True)  # sscanf "%d" into an int
        if number is None:
            return f"bad {name} value {quote(value)}: expected a number"
        if name == "linger" and number < 0:
            return f"bad linger value {quote(value)}: expected a number of seconds >= 0 (as a C int)"
        if name == "rfc931" and number <= 0:
            return f"bad rfc931 timeout {quote(value)}: expected a number of seconds > 0 (as a C int)"
    elif name == "setenv":
        return setenv_problem(value)
    elif name == "severity":
        fac, dot, lev = value.partition(".")
        if not dot:
            fac, lev = "", fac
        if (dot and hostmatch.fold(fac) not in _FACILITIES) or hostmatch.fold(lev) not in _LEVELS:
            return (f"bad severity {quote(value)}: expected [facility.]level, levels "
                    + ", ".join(sorted(_LEVELS)))
    return None
