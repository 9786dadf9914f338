"""What every exporter needs: a policy planned as services with ports and address rules.

``plan`` turns a ``Policy`` into an ``ExportPlan``: for each service, in policy order, the
protocols and port ranges it listens on and its rules as ``(action, addresses)`` — each match
already flattened to disjoint address intervals (``addrs.py``) — followed by its default.
Renderers (``nft.py``, ``pf.py``) only print a plan; they decide nothing.

Which services: native service blocks first, then the daemons hosts_access rules name
literally (``sshd: ...``), then every daemon given with ``--map`` (so ``ALL: ...`` rules reach
it). Each service is resolved (``sockgate.resolve``): what a rule needs beyond the source
address, its limits and its dropped options are read off the resolved rules. Ports come from the block's header, else ``--map``, else services(5); a service with
neither is an error naming it, because a firewall export that silently leaves a service out
guards less than the operator thinks.

What a packet filter cannot decide — host names, ident users, Unix credentials, ``daemon@host``,
connection limits, a Unix socket service with rules — fails the export with one diagnostic per
rule (``file:line:col``, the rule and why). With ``skip_userspace`` such a rule is left out
and is then *never matching*: packets fall through to the next rule, exactly as if the rule
were deleted from the policy. That can widen access (a skipped ``deny``) or narrow it (a
skipped ``allow``); each one is listed as a warning and as a comment in the output.

Two services claiming the same port: the first in policy order judges it (later rules in the
filter are not reached), and a warning says so.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Literal, Mapping, TypeVar, Union

from sockgate.errors import Diagnostic, PolicyError, UsageError
from sockgate.export.addrs import MAPPED_V6, AddrSpace, flatten
from sockgate.export.ports import PortRange, Proto, lookup, port_table
from sockgate.intlist import items
from sockgate.policy.ir import Action, AddrMatch, Endpoint, Policy, Rule, Service
from sockgate.policy.source import Span
from sockgate.resolve import ResolvedService, named_daemons, resolve_service

Firewall = Literal["nftables", "pf"]
DenyAction = Literal["drop", "reject"]  # what a firewall does with a denied packet


@dataclass(frozen=True)
class PlannedRule:
    action: Action
    addrs: AddrSpace
    rule: Rule


@dataclass(frozen=True)
class SkippedRule:
    """A rule the target cannot express, left out (``skip_userspace``): never matches."""

    rule: Rule
    reason: str


Item = Union[PlannedRule, SkippedRule]


@dataclass(frozen=True)
class PlannedService:
    name: str
    ports: tuple[tuple[Proto, tuple[PortRange, ...]], ...]
    items: tuple[Item, ...]
    default: Action
    default_where: str  # "file:line" of the default, or "" when implicit
    notes: tuple[str, ...] = ()  # comments for the output (unix endpoints, skipped limits)

    def verdict(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Action:
        """What the exported rules decide for a packet from ``address`` (first match): an
        IPv6 source in ``MAPPED_V6`` is forged and denied before any rule."""
        if address.version == 6 and address in MAPPED_V6:
            return Action.DENY
        for item in self.items:
            if isinstance(item, PlannedRule) and item.addrs.contains(address):
                return item.action
        return self.default

    def covers(self, proto: str, port: int) -> bool:
        return any(p == proto and any(lo <= port <= hi for lo, hi in rs) for p, rs in self.ports)


@dataclass(frozen=True)
class SkippedService:
    name: str
    reason: str


@dataclass(frozen=True)
class ExportPlan:
    services: tuple[PlannedService, ...]
    skipped: tuple[SkippedService, ...]
    warnings: tuple[str, ...]
    sources: tuple[str, ...]
    digest: str

    def owner(self, proto: str, port: int) -> PlannedService | None:
        """The service whose rules judge packets to ``proto``/``port`` (first in order)."""
        return next((s for s in self.services if s.covers(proto, port)), None)


@dataclass
class _Problems:
    """Inexpressible things found while planning, reported together."""

    target: Firewall
    diagnostics: list[Diagnostic]
    skip_warnings: list[str]  # shown only when the rules are skipped instead of refused
    warnings: list[str]

    def add(self, span: Span | None, text: str, reason: str, skipped: str = "treated as never matching") -> None:
        self.diagnostics.append(
            Diagnostic(
                span,
                f"{self.target} cannot express `{text}`: {reason}; enforce it with `sockgate proxy`, "
                "or pass --skip-userspace to leave it out (it then never matches)",
            )
        )
        where = f"{span.file}:{span.line}: " if span is not None else ""
        self.skip_warnings.append(f"{where}left out of the {self.target} rules: `{text}`: {reason}; {skipped}")


def plan(
    policy: Policy,
    *,
    target: Firewall,
    mapped: Mapping[str, tuple[Endpoint, ...]] | None = None,
    services_db: Mapping[str, tuple[Endpoint, ...]] | None = None,
    skip_userspace: bool = False,
) -> ExportPlan:
    """Plan ``policy`` for a packet filter. Raises ``PolicyError`` naming every rule the
    target cannot express (unless ``skip_userspace``) and ``UsageError`` for services without
    ports or a bad ``--map``."""
    mapped = dict(mapped or {})
    services_db = services_db or {}
    problems = _Problems(target, [], [], [])
    planned: list[PlannedService] = []
    skipped: list[SkippedService] = []
    unmapped: list[str] = []
    for svc in _services(policy, mapped):
        if svc.endpoints and svc.name in mapped:
            raise UsageError(printable(f"--map {svc.name}: service {svc.name} already says where it listens ({_eps(svc.endpoints)})"))
        endpoints = svc.endpoints or lookup(svc.name, mapped, services_db)
        if not endpoints:
            unmapped.append(svc.name)
            continue
        one = _plan_service(resolve_service(svc), endpoints, problems)
        if isinstance(one, SkippedService):
            skipped.append(one)
        else:
            planned.append(one)
    if unmapped:
        raise UsageError(
            printable(
                f"no port known for {', '.join(unmapped)}: say where each listens with --map DAEMON=PROTO/PORT"
                f" (e.g. --map {unmapped[0]}=tcp/PORT); only services(5) names are looked up by themselves"
            )
        )
    if problems.diagnostics and not skip_userspace:
        raise PolicyError(problems.diagnostics, sources=dict(policy.texts))
    if not planned and not skipped:
        raise UsageError("nothing to export: the policy names no service (give --map DAEMON=PROTO/PORT for hosts_access rules)")
    # printable: warnings name files, rules and services, and end up on a terminal
    warnings = [printable(w) for w in problems.skip_warnings + problems.warnings + _overlaps(planned)]
    return ExportPlan(tuple(planned), tuple(skipped), tuple(warnings), policy.sources, policy.digest())


def _services(policy: Policy, mapped: Mapping[str, tuple[Endpoint, ...]]) -> list[Service]:
    """Native blocks, then literally named daemons, then mapped daemons; each once."""
    out = list(policy.services)
    seen = {s.name for s in out}
    global_rules = bool(policy.rules) or policy.default is not None
    for name in [*named_daemons(policy), *mapped]:
        if name in seen:
            continue
        if not global_rules:
            raise UsageError(printable(f"--map {name}: the policy has no service {name} and no hosts_access rules that could apply to it"))
        seen.add(name)
        out.append(policy.service(name))
    return out


def _plan_service(svc: ResolvedService, endpoints: tuple[Endpoint, ...], problems: _Problems) -> PlannedService | SkippedService:
    ports = port_table(endpoints)
    unix = [e for e in endpoints if e.proto == "unix"]
    span = svc.service.span
    if not ports:
        reason = f"a Unix socket service ({_eps(tuple(unix))}): a packet filter has no port to guard"
        if svc.rules:
            problems.add(span, f"service {svc.name}", reason, "the service is not exported")
        return SkippedService(svc.name, reason)
    notes = [f"{_eps(tuple(unix))}: a Unix socket, not filtered here"] if unix else []
    if svc.limits is not None:
        problems.add(span, f"service {svc.name}", "has connection limits", "its rules are exported without them")
        notes.append("connection limits are not enforced here")
    items: list[Item] = []
    for r in svc.rules:
        rule = r.rule
        why = r.reason()
        if why is not None:
            problems.add(rule.span, rule.text, why)
            items.append(SkippedRule(rule, why))
        else:
            items.append(PlannedRule(rule.action, flatten(r), rule))
        if r.dropped_options:
            problems.warnings.append(
                f"{rule.span.file}:{rule.span.line}: options not carried by a packet filter: {', '.join(r.dropped_options)}"
            )
    default = svc.service
    where = f"{default.default_span.file}:{default.default_span.line}" if default.default_span is not None and default.default is not None else ""
    return PlannedService(svc.name, ports, tuple(items), svc.default, where, tuple(notes))


def _overlaps(services: list[PlannedService]) -> list[str]:
    out = []
    for i, later in enumerate(services):
        for earlier in services[:i]:
            for proto, ranges in later.ports:
                hits = [(lo, hi) for lo, hi in ranges if any(_meets(lo, hi, e) for p, rs in earlier.ports if p == proto for e in rs)]
                if hits:
                    out.append(
                        f"service {later.name} {proto}/{ranges_text(tuple(hits))} overlaps service {earlier.name}: "
                        f"{earlier.name}, first in policy order, judges those ports"
                    )
    return out


def _meets(lo: int, hi: int, other: PortRange) -> bool:
    return lo <= other[1] and other[0] <= hi


def ranges_text(ranges: tuple[PortRange, ...]) -> str:
    return ",".join(port_items(ranges))


port_items = items  # each port range as ``22`` or ``8000-8099`` (a dash of the target's own)


def _eps(endpoints: tuple[Endpoint, ...]) -> str:
    return " ".join(str(e) for e in endpoints)


class IdentifierPool:
    """Unique identifiers for the target: ``[A-Za-z0-9_]``, starting with a letter, at most
    ``maxlen`` characters; a clash gets ``_2``, ``_3``..."""

    def __init__(self, maxlen: int, prefix: str = "") -> None:
        self.maxlen = maxlen
        self.prefix = prefix
        self.used: set[str] = set()

    def make(self, wanted: str) -> str:
        base = self.prefix + re.sub(r"[^A-Za-z0-9_]", "_", wanted)
        if not base[:1].isalpha():
            base = "s_" + base
        base = base[: self.maxlen]
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base[: self.maxlen - len(str(n)) - 1]}_{n}"
        self.used.add(name)
        return name


Content = TypeVar("Content", bound=Hashable)


class NamedSets(Generic[Content]):
    """The named address sets (nftables sets, pf tables) of one output: one per distinct
    content, named after the first rule that wants it (``IdentifierPool`` keeps names unique), in the
    order they were first wanted."""

    def __init__(self, maxlen: int, prefix: str = "") -> None:
        self._names = IdentifierPool(maxlen, prefix)
        self._by_content: dict[Content, str] = {}

    def name_for(self, content: Content, wanted: str) -> str:
        if content not in self._by_content:
            self._by_content[content] = self._names.make(wanted)
        return self._by_content[content]

    def items(self) -> list[tuple[str, Content]]:
        return [(name, content) for content, name in self._by_content.items()]


def printable(text: str) -> str:
    """``text`` with every character that is not printable — control characters, NUL, line
    and paragraph separators, unpaired surrogates from undecodable file names, bidirectional
    overrides — replaced by ``?``: one line that cannot move a terminal's cursor."""
    return "".join(c if c.isprintable() else "?" for c in text)


def comment(text: str) -> str:
    """``text`` as one ``#`` comment line, the only form in which policy strings (file names,
    rule text, service names, reasons) reach the output: ``printable``, so it cannot end the
    comment and start a rule, and a trailing backslash becomes ``?`` too (pf.conf joins the
    next line, a rule, to a line ending in one, even a comment)."""
    safe = printable(text)
    stripped = safe.rstrip("\\")
    return "# " + stripped + "?" * (len(safe) - len(stripped))


def finish(lines: list[str]) -> str:
    """The output text, after checking what ``comment`` promises holds for every line: one
    line per element, nothing unprintable but tabs, no comment continued by a backslash.
    A failure is a bug in a renderer (``ValueError``), never a policy's fault."""
    for n, line in enumerate(lines, 1):
        if not line.replace("\t", " ").isprintable() or (line.lstrip().startswith("#") and line.endswith("\\")):
            raise ValueError(f"renderer bug: output line {n} would not stay one line: {line!r}")
    return "\n".join(lines) + "\n"


def rule_where(rule: Rule) -> str:
    return f"{rule.span.file}:{rule.span.line}"


def set_label(rule: Rule) -> str | None:
    """``office`` for a rule whose match is exactly ``@office``, else None."""
    m = rule.match
    if isinstance(m, AddrMatch) and m.label.startswith("@") and len(m.label) > 1:
        return m.label[1:]
    return None


def header_lines(plan: ExportPlan, fmt: str, usage: list[str]) -> list[str]:
    """The comment lines every output starts with: what made it from which policy, the
    ``usage`` lines (how to load and remove it), and each service not exported."""
    sources = ", ".join(plan.sources) or "(no file)"
    return [
        comment(f"sockgate export --format {fmt}: policy {plan.digest} from {sources}"),
        *map(comment, usage),
        *(comment(f"service {s.name} not exported: {s.reason}") for s in plan.skipped),
    ]


RuleLines = Callable[[PlannedRule, str, bool], list[str]]
FORGED_NOTE = f"IPv6 packets from IPv4-mapped sources ({MAPPED_V6}) are forged: dropped before any rule"


def service_lines(svc: PlannedService, rule_lines: RuleLines, forged: list[str], heading: str = "") -> list[str]:
    """The body every renderer writes for ``svc``: a ``# service NAME`` comment (``heading``
    appended) and its notes; the ``forged`` lines that drop IPv6 packets from IPv4-mapped
    sources (``MAPPED_V6``), ahead of every rule; then each item under a comment naming its
    source line (a skipped rule is only a comment), and last the comment saying where the
    default comes from. ``rule_lines(item, wanted, named)`` renders a rule; ``wanted`` names
    its address set (the policy set of an ``@set`` rule, ``named``, else ``SERVICE_K``). The
    default's verdict is the renderer's."""
    lines = [comment(f"service {svc.name}{heading}"), *map(comment, svc.notes), comment(FORGED_NOTE), *forged]
    for k, item in enumerate(svc.items, 1):
        where = rule_where(item.rule)
        if not isinstance(item, PlannedRule):
            lines.append(comment(f"left out, never matches: {where}: {item.rule.text}; {item.reason}"))
            continue
        lines.append(comment(f"{where}: {item.rule.text}"))
        label = set_label(item.rule)
        lines += rule_lines(item, label or f"{svc.name}_{k}", label is not None)
    said = f"{svc.default_where}: default {svc.default}" if svc.default_where else f"no rule matched: {svc.default}"
    return lines + [comment(said)]
