"""The printer: canonical text that parses back to an equal policy (positions aside)."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sockgate.errors import PolicyError
from sockgate.policy.accounts import StaticAccounts
from sockgate.policy.ir import Policy
from sockgate.policy.parser import parse_policy
from sockgate.policy.printer import format_policy
from sockgate.policy.source import Span

ACCOUNTS = StaticAccounts(users={"alice": 1000, "bob": 1001}, groups={"docker": 999, "adm": 4})
SET_NAMES = ["office", "lab", "blocked"]
SET_FILE = "lists/set.txt"
SET_FILE_TEXT = "# a list\n192.0.2.128/25\n2001:db8:9::/48  # v6\n"


def strip(obj: Any) -> Any:
    """A projection of IR values without positions, rule texts and source file names."""
    if isinstance(obj, Span):
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            if f.name in ("text", "sources", "texts", "span", "default_span"):
                continue
            out[f.name] = strip(getattr(obj, f.name))
        return (type(obj).__name__, out)
    if isinstance(obj, tuple):
        return tuple(strip(x) for x in obj)
    return obj


def parse(text: str, file: str = "p.conf") -> Policy:
    files = {SET_FILE: SET_FILE_TEXT}
    return parse_policy(text, file, read=files.__getitem__, accounts=ACCOUNTS)


# -- generated policies ----------------------------------------------------------------------

v4 = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)
v6 = st.builds(
    lambda a, p: ipaddress.IPv6Network(((0x20010DB8 << 96) | a, p), strict=False),
    st.integers(0, 2**96 - 1),
    st.integers(32, 128),
)
mapped = v4.map(lambda n: f"::ffff:{n.network_address}/{96 + n.prefixlen}")


def net_text(n: ipaddress.IPv4Network | ipaddress.IPv6Network, bare: bool) -> str:
    return str(n.network_address) if bare and n.prefixlen == n.max_prefixlen else str(n)


addr_item = st.one_of(
    st.builds(net_text, st.one_of(v4, v6), st.booleans()),
    mapped,
)
other_item = st.one_of(
    st.just("all"),
    st.sampled_from(["host .example.com", "host www.example.org", "host a-b.example.net"]),
    st.sampled_from(["user alice", "user bob", "group docker", "group adm"]),
    st.builds(lambda k, n: f"{k} {n}", st.sampled_from(["uid", "gid"]), st.integers(0, 70000)),
    st.sampled_from(["exe /usr/bin/*", 'exe "/opt/my app/bin"', "exe /usr/sbin/sshd"]),
)


@st.composite
def match_text(draw: st.DrawFn, sets: list[str], depth: int = 0) -> str:
    items = st.one_of(addr_item, addr_item, other_item, *([st.sampled_from([f"@{s}" for s in sets])] if sets else []))
    if depth < 2 and draw(st.booleans()):
        parts = draw(st.lists(st.one_of(items, match_text(sets, depth + 1)) if depth < 1 else items, min_size=1, max_size=3))
        head = "{ " + ", ".join(parts) + " }"
    else:
        head = draw(items)
    if depth < 2 and draw(st.integers(0, 3)) == 0:
        return f"{head} except {draw(match_text(sets, depth + 1))}"
    return head


limits_text = st.tuples(
    st.sampled_from(["", "limit concurrent 10 per source", "limit concurrent 1 per source"]),
    st.sampled_from(["", "limit rate 30/minute per source", "limit rate 2/day per source"]),
    st.sampled_from(["", "limit concurrent 500"]),
    st.sampled_from(["", "limit rate 5/10s", "limit rate 100/hour", "limit rate 7/90s"]),
).map(lambda parts: [p for p in parts if p])


@st.composite
def policy_text(draw: st.DrawFn) -> str:
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append(f"default {draw(st.sampled_from(['allow', 'deny']))}")
    sets = draw(st.lists(st.sampled_from(SET_NAMES), unique=True, max_size=3))
    for i, name in enumerate(sets):
        if i == 0 and draw(st.booleans()):
            lines.append(f'set {name} < "{SET_FILE}"')
            continue
        members = draw(st.lists(st.one_of(addr_item, st.sampled_from([f"@{s}" for s in sets[:i]] or ["10.0.0.0/8"])), max_size=4))
        lines.append(f"set {name} = {{ {', '.join(members)} }}")
    for s in range(draw(st.integers(0, 3))):
        endpoints = draw(st.lists(st.sampled_from(["tcp/22", "udp/53", "tcp/80,443", "tcp/8000-8099", "unix:/run/a.sock", "unix:@abs"]), unique=True, max_size=2))
        lines.append(f"service svc{s} {' '.join(endpoints)} {{")
        for _ in range(draw(st.integers(0, 5))):
            action = draw(st.sampled_from(["allow", "deny"]))
            lim = draw(limits_text) if action == "allow" else []
            if any("per source" in x and "rate" in x for x in lim) and draw(st.booleans()):
                lim.append("ban 10m")
            lines.append(f"    {action} {draw(match_text(sets))} {' '.join(lim)}".rstrip())
        if draw(st.booleans()):
            lines.append("    limit concurrent 100")
        for url in draw(st.lists(st.sampled_from(["tcp://0.0.0.0:8443", "tcp://[::]:8443", "udp://127.0.0.1:5353", "unix:@x"]), unique=True, max_size=2)):
            lines.append(f"    listen {url}")
        if draw(st.booleans()):
            lines.append('    forward "unix:/run/app.sock"')
        if draw(st.booleans()):
            lines.append(f"    default {draw(st.sampled_from(['allow', 'deny']))}")
        lines.append("}")
    return "\n".join(lines) + "\n"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(policy_text())
def test_parse_print_parse_round_trip(text: str) -> None:
    try:
        first = parse(text)
    except PolicyError as e:
        # the generator may write two rules for exactly the same clients; nothing else is wrong
        assert all(d.message.startswith("duplicate rule") for d in e.diagnostics), e.render()
        assume(False)
        raise
    printed = format_policy(first)
    second = parse(printed, "printed.conf")
    assert strip(second) == strip(first)
    assert second.digest() == first.digest()
    assert format_policy(second) == printed


def test_canonical_form() -> None:
    text = """
    set office = {192.0.2.0/24,2001:db8:1::/48}
    service ssh tcp/22 {
      deny  {192.0.2.66,  ::ffff:198.51.100.0/120}
      allow @office   limit rate 30/minute per source ban 1h
      allow 10.0.0.0/8 except { 10.1.0.0/16 except 10.1.2.0/24 }
      allow { user alice, exe "/opt/x y" }
      limit concurrent 10 per source
      listen tcp://[::]:22
      default deny }
    default allow
    """
    assert format_policy(parse(text)) == (
        "default allow\n"
        "\n"
        "set office = { 192.0.2.0/24, 2001:db8:1::/48 }\n"
        "\n"
        "service ssh tcp/22 {\n"
        "    deny { 192.0.2.66, ::ffff:198.51.100.0/120 }\n"
        "    allow @office limit rate 30/minute per source ban 1h\n"
        "    allow 10.0.0.0/8 except { 10.1.0.0/16 except 10.1.2.0/24 }\n"
        '    allow { user alice, exe "/opt/x y" }\n'
        "    limit concurrent 10 per source\n"
        '    listen "tcp://[::]:22"\n'
        "    default deny\n"
        "}\n"
    )


def test_empty_policy_and_service() -> None:
    assert format_policy(parse("service s { }")) == "service s {\n}\n"
    assert strip(parse(format_policy(parse("")))) == strip(parse(""))


def test_quoted_values_with_odd_characters_survive_printing() -> None:
    """Only "\\n" separates printed lines; a quoted path keeps every other character."""
    first = parse('service s {\n    allow exe "/opt/a\u2028b\\"c\\\\d"\n}\n')
    assert first.services[0].rules[0].match.value == '/opt/a\u2028b"c\\d'  # type: ignore[union-attr]
    assert strip(parse(format_policy(first), "printed.conf")) == strip(first)


# -- digests ---------------------------------------------------------------------------------


def _content(p: Policy) -> object:
    """What a policy's digest covers, as values (the digest is a hash of a text of them)."""
    services = [(s.name, s.effective_default, [(r.action, r.match, r.daemons, r.limits) for r in s.rules])
                for s in p.services]
    return services, [(r.action, r.match, r.daemons) for r in p.rules], p.default, p.fallback


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(policy_text(), policy_text())
def test_digests_are_equal_exactly_when_what_they_cover_is(a_text: str, b_text: str) -> None:
    try:
        a, b = parse(a_text), parse(b_text)
    except PolicyError:
        assume(False)
        raise
    assert (a.digest() == b.digest()) == (_content(a) == _content(b))


def test_digests_are_stable_across_runs_and_take_any_name() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    import sockgate
    from sockgate.policy.ir import Action, AddrMatch, Principal, Rule, Service

    text = "set s = { 10.0.0.0/8, 2001:db8::/32 }\nservice a tcp/22 {\n allow @s except 10.1.0.0/16\n default deny\n}\n"
    code = f"from sockgate.policy.parser import parse_policy; print(parse_policy({text!r}, 'p.conf').digest())"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": seed,
                                "PYTHONPATH": str(Path(sockgate.__file__).parents[1])}).stdout
            for seed in ("1", "2")}
    assert runs == {parse(text).digest() + "\n"}
    # a name or value with a lone surrogate (an undecodable byte of a hosts_access file or argv)
    odd = "sshd\udcff"
    rule = Rule(Action.ALLOW, Principal("exe", "/bin/\ud800"), Span("f", 1, 1), "allow")
    service = Service(odd, (rule, Rule(Action.DENY, AddrMatch((ipaddress.ip_network("10.0.0.0/8"),)), Span("f", 2, 1), "deny")), None)
    assert service.digest() != Service("sshd", service.rules, None).digest()
    assert Policy(services=(service,), rules=(rule,)).digest() != Policy(services=(service,)).digest()
