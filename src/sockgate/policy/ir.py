"""The typed intermediate representation every part of sockgate shares.

Both front ends — the native language (``parser.py``) and hosts_access files
(``hostsaccess.py``) — produce a ``Policy``; the decision engine (``decide.py``), the BPF
compiler (``bpf/``), the exporters (``export/``) and the proxy consume it. Everything here is a
frozen dataclass: a policy is a value, compared and hashed by content, never mutated.

Shape::

    Policy
      services: Service*          native `service NAME ... { rules; default }` blocks
      rules:    Rule*             global rules selected by daemon pattern (hosts_access)
      default:  Action | None     file-wide default
      sets:     AddressSet*       named address sets (already inlined into AddrMatch)

    Rule(action, match, span, text, daemons, options, limits)

A ``Match`` is a small tree over the peer: ``MatchAll``, ``AddrMatch`` (CIDRs), ``HostPattern``
(host names and hosts_access string patterns, needs a name lookup), ``HostClass`` (KNOWN,
UNKNOWN, PARANOID, LOCAL), ``Principal`` (Unix credentials), ``UserAt`` (ident user@host),
combined with ``AnyOf`` and ``Except``. ``Policy.service(name)`` specialises a policy to one
service: its rules in order and its default, which is what the engine and compiler consume.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, Literal, Protocol, Sequence, TypeVar, Union, assert_never

from sockgate.errors import UsageError
from sockgate.policy import hostmatch
from sockgate.policy.netlist import NetList
from sockgate.policy.source import Span

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class Action(str, Enum):
    ALLOW = "allow"
    DENY = "deny"

    def __str__(self) -> str:
        return self.value


# ---------------------------------------------------------------------------------------------
# Matches over the peer (the client side of a rule)


@dataclass(frozen=True)
class MatchAll:
    """Matches every peer (`all`, hosts_access `ALL`)."""


@dataclass(frozen=True)
class MatchNone:
    """Matches no peer (an empty list)."""


@dataclass(frozen=True)
class AddrMatch:
    """Peer address inside any of ``nets``. ``label`` is how it was written (``@office``,
    ``10.0.0.0/8``, ``192.168.``) for messages and printing; it does not affect matching.
    ``nets`` is a tuple, or a ``NetList`` (a set file's networks kept as integers) equal to
    the tuple of the same networks."""

    nets: Sequence[IPNetwork]
    label: str = ""


@dataclass(frozen=True)
class HostPattern:
    """A host-name pattern: ``.example.com`` (suffix), ``host.example.com`` (exact), or a
    hosts_access string pattern with ``*``/``?`` wildcards or a trailing-dot prefix. Matched
    case-insensitively against the peer's verified host name and, for hosts_access patterns,
    against the address text as libwrap does. Needs a name lookup: never in a kernel filter."""

    pattern: str
    hosts_access: bool = False


@dataclass(frozen=True)
class HostClass:
    """hosts_access wildcards that depend on a name lookup."""

    kind: Literal["KNOWN", "UNKNOWN", "PARANOID", "LOCAL"]


PrincipalKind = Literal["user", "group", "uid", "gid", "exe", "pid"]


@dataclass(frozen=True)
class Principal:
    """A Unix peer credential test. ``user``/``group`` keep the name written and the id it
    resolved to when the policy was loaded (``ident``); ``uid``/``gid``/``pid`` are numbers;
    ``exe`` is an absolute path (``*`` wildcards allowed)."""

    kind: PrincipalKind
    value: str | int
    ident: int | None = None


@dataclass(frozen=True)
class UserAt:
    """hosts_access ``user@host``: the ident (RFC 1413) user name pattern, and a host match."""

    user: str
    host: "Match"


# AnyOf and Except are generic over the tree they sit in, so a walker over ``Match`` sees
# ``Match`` children and one over ``DaemonMatch`` sees ``DaemonMatch`` children.
_T = TypeVar("_T")


@dataclass(frozen=True)
class AnyOf(Generic[_T]):
    items: tuple[_T, ...]


@dataclass(frozen=True)
class Except(Generic[_T]):
    """``include EXCEPT exclude`` (right-nested in hosts_access: ``a EXCEPT b EXCEPT c`` is
    ``a EXCEPT (b EXCEPT c)``)."""

    include: _T
    exclude: _T


Match = Union[
    MatchAll, MatchNone, AddrMatch, HostPattern, HostClass, Principal, UserAt, "AnyOf[Match]", "Except[Match]"
]


# ---------------------------------------------------------------------------------------------
# Daemon selectors (hosts_access daemon lists; native rules live inside a service instead)


@dataclass(frozen=True)
class DaemonPattern:
    """A daemon name pattern (``sshd``, ``ALL``, wildcards) with an optional server-side host
    match (``daemon@host``: the local address the connection came in on)."""

    name: str
    server: Match | None = None


DaemonMatch = Union[DaemonPattern, "AnyOf[DaemonMatch]", "Except[DaemonMatch]", MatchAll]


class Applies(str, Enum):
    """Does a daemon list select a service, known from the service name alone?"""

    ALWAYS = "always"
    NEVER = "never"
    BY_SERVER = "by_server"  # it depends on the server side (daemon@host): decided per connection


def applies(d: DaemonMatch | None, service: str) -> Applies:
    """Whether daemon list ``d`` selects ``service``, as libwrap's ``list_match`` over
    ``string_match`` decides (``ALL``, ``KNOWN``, ``in.`` prefixes, ``.suffix``, wildcards,
    ``EXCEPT``), in three-valued logic: a ``daemon@host`` part whose name matches is
    ``BY_SERVER``, and an ``EXCEPT`` or a list over such parts stays ``BY_SERVER`` unless the
    name alone settles it. None (a rule without a daemon list) is ``ALWAYS``."""
    match d:
        case None | MatchAll():
            return Applies.ALWAYS
        case DaemonPattern(name=name, server=server):
            if not hostmatch.daemon_name_matches(name, service):
                return Applies.NEVER
            return Applies.ALWAYS if server is None else Applies.BY_SERVER
        case AnyOf(items=items):
            found = {applies(i, service) for i in items}
            return next((a for a in (Applies.ALWAYS, Applies.BY_SERVER) if a in found), Applies.NEVER)
        case Except(include=include, exclude=exclude):
            inc, exc = applies(include, service), applies(exclude, service)
            if inc is Applies.NEVER or exc is Applies.ALWAYS:
                return Applies.NEVER
            if inc is Applies.ALWAYS and exc is Applies.NEVER:
                return Applies.ALWAYS
            return Applies.BY_SERVER
        case _:
            assert_never(d)


# ---------------------------------------------------------------------------------------------
# Limits (parsed and validated in the core, enforced by the proxy)


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.count}/{_fmt_seconds(self.seconds)}"


@dataclass(frozen=True)
class Limits:
    concurrent_per_source: int | None = None
    rate_per_source: Rate | None = None
    concurrent_total: int | None = None
    rate_total: Rate | None = None
    ban_seconds: float | None = None

    def is_empty(self) -> bool:
        return self == Limits()


# ---------------------------------------------------------------------------------------------
# Rules, services, policies


@dataclass(frozen=True)
class Option:
    """A hosts_options(5) option kept as written (``spawn``, ``twist``, ``banners``, ``setenv``,
    ``severity``...). Options with side effects are reported, never executed by ``check``."""

    name: str
    value: str
    span: Span | None = None
    fails: str = ""  # why libwrap fails on it when the rule is used, so the rule denies

    @property
    def is_verdict(self) -> bool:
        """hosts_options(5) ``allow``/``deny``: already the rule's action, so any filter
        carries it out."""
        return self.name in ("allow", "deny")


@dataclass(frozen=True)
class Rule:
    action: Action
    match: Match
    span: Span
    text: str  # the rule as written, one line, for `file:line: text` output
    daemons: DaemonMatch | None = None  # hosts_access daemon list; None inside a service block
    options: tuple[Option, ...] = ()
    limits: Limits | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where a service listens, as selected in its header: ``tcp/22``, ``udp/53,5353``,
    ``tcp/8000-8099``, ``unix:/run/app.sock``."""

    proto: Literal["tcp", "udp", "unix"]
    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges; empty for unix
    path: str | None = None

    def __str__(self) -> str:
        if self.proto == "unix":
            return f"unix:{self.path}"
        return f"{self.proto}/" + ",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ports)


@dataclass(frozen=True)
class Service:
    name: str
    rules: tuple[Rule, ...]
    default: Action | None
    endpoints: tuple[Endpoint, ...] = ()
    span: Span | None = None
    default_span: Span | None = None
    limits: Limits | None = None
    listen: tuple[str, ...] = ()  # proxy: URLs to listen on
    forward: str | None = None  # proxy: URL to forward to
    policy_digest: str = ""

    @property
    def effective_default(self) -> Action:
        """The action when no rule matches (deny when nothing was said)."""
        return self.default if self.default is not None else Action.DENY

    def digest(self) -> str:
        """A content digest of what this service decides (spans and texts excluded), stable
        across runs; 16 hex digits."""
        parts = [repr((self.name, self.effective_default))]
        for r in self.rules:
            parts.append(repr((r.action, r.limits)))
            _content(parts, r.match)
            _content(parts, r.daemons)
        return _hash(parts)


@dataclass(frozen=True)
class AddressSet:
    name: str
    nets: Sequence[IPNetwork]  # a tuple, or a set file's ``NetList``
    span: Span
    path: str | None = None  # loaded from this file (`set NAME < "path"`)


@dataclass(frozen=True)
class Policy:
    services: tuple[Service, ...] = ()
    rules: tuple[Rule, ...] = ()
    default: Action | None = None
    default_span: Span | None = None
    sets: tuple[AddressSet, ...] = ()
    sources: tuple[str, ...] = ()  # every file read, includes too, in order
    kind: Literal["native", "hosts_access", "mixed"] = "native"
    # hosts_access: what applies when nothing matches (libwrap: allow)
    fallback: Action = Action.DENY
    texts: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def service_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)

    def has_service(self, name: str) -> bool:
        return (
            any(s.name == name for s in self.services)
            or bool(self.rules)
            or self.default is not None
            or self.kind == "hosts_access"
        )

    def service(self, name: str) -> Service:
        """The rules that apply to ``name`` in order, and its default.

        A declared service block wins. Otherwise global (hosts_access) rules whose daemon
        list may select ``name`` are kept (``daemon@host`` parts are decided per connection),
        followed by the file default. Raises ``KeyError`` for a service the policy does not
        know and gives no default for."""
        for s in self.services:
            if s.name == name:
                return s
        if not self.rules and self.default is None and self.kind != "hosts_access":
            raise KeyError(name)  # (empty hosts_access tables still decide: libwrap grants)
        rules = tuple(r for r in self.rules if applies(r.daemons, name) is not Applies.NEVER)
        default = self.default if self.default is not None else self.fallback
        return Service(
            name=name,
            rules=rules,
            default=default,
            default_span=self.default_span,
            policy_digest=self.digest(),
        )

    def require_service(self, name: str) -> Service:
        """``service(name)``, or a ``UsageError`` that lists the services the policy has."""
        try:
            return self.service(name)
        except KeyError:
            known = ", ".join(self.service_names()) or "none"
            raise UsageError(f"the policy has no service {name!r} (services: {known})") from None

    def digest(self) -> str:
        parts = [s.digest() for s in self.services]
        for r in self.rules:
            parts.append(repr(r.action))
            _content(parts, r.match)
            _content(parts, r.daemons)
        parts.append(repr((self.default, self.fallback)))
        return _hash(parts)

    def text_of(self, file: str) -> str | None:
        return dict(self.texts).get(file)

    def guard(self, sock: Any, service: str, backend: str = "auto") -> Any:
        """Compile ``service`` and attach it to ``sock`` (a socket object or fd); Linux only.
        ``backend``: ``"auto"``, ``"cbpf"`` or ``"ebpf"`` (docs/ebpf.md). Returns
        ``sockgate.guard.Guarded``. Delegates to the bound ``GuardPort``."""
        if backend == "auto":
            return _guard_port[0](self, sock, service)  # (a port written before backends takes three)
        return _guard_port[0](self, sock, service, backend)


class GuardPort(Protocol):
    """What ``Policy.guard`` delegates to: ``sockgate.guard.guard``. The policy is pure and
    imports no enforcement point; the package (``sockgate/__init__.py``) binds the port, and it
    runs before any submodule, so a ``Policy`` can always ``.guard``."""

    def __call__(self, policy: Policy, sock: Any, service: str, backend: str = "auto") -> Any: ...


_guard_port: list[GuardPort] = []  # one entry once the package is imported


def bind_guard(port: GuardPort) -> None:
    """Make ``Policy.guard`` call ``port`` (the last one bound wins)."""
    _guard_port[:] = [port]


def _content(parts: list[str], m: object) -> None:
    """Append to ``parts`` an unambiguous text of ``m``, a match or daemon tree (or anything
    else whose ``repr`` is its content): an address list as version, number and prefix length
    of each network — a set file has 100,000, and ``repr`` of each costs more than the rest of
    loading it — the rest as ``repr``."""
    if isinstance(m, AddrMatch):
        if isinstance(m.nets, NetList):  # from the integers, without an object per network
            nets = m.nets.content()
        else:
            nets = ",".join([f"{n.version}{int(n.network_address):x}/{n.prefixlen}" for n in m.nets])
        parts.append(f"A({m.label!r},{len(m.nets)}:{nets})")
    elif isinstance(m, AnyOf):
        parts.append(f"O({len(m.items)}:")
        for item in m.items:
            _content(parts, item)
        parts.append(")")
    elif isinstance(m, Except):
        parts.append("E(")
        _content(parts, m.include)
        _content(parts, m.exclude)
        parts.append(")")
    elif isinstance(m, UserAt):
        parts.append(f"U({m.user!r},")
        _content(parts, m.host)
        parts.append(")")
    elif isinstance(m, DaemonPattern):
        parts.append(f"D({m.name!r},")
        _content(parts, m.server)
        parts.append(")")
    else:
        parts.append(repr(m) + ",")


def _hash(parts: list[str]) -> str:
    """16 hex digits of SHA-256 over ``parts`` (a name with a lone surrogate, from an
    undecodable byte, is content like any other)."""
    return hashlib.sha256("".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _fmt_seconds(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s" if s == int(s) else f"{s}s"
