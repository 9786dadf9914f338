"""The native policy parser: values, structure, includes, and every error word for word."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.errors import PolicyError
from sockgate.policy.accounts import StaticAccounts
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    Endpoint,
    Except,
    HostPattern,
    Limits,
    MatchAll,
    Principal,
    Rate,
)
from sockgate.policy.parser import parse_policy, parse_policy_files, resolve_path

POLICIES = Path(__file__).parent.parent / "data" / "policies"
ACCOUNTS = StaticAccounts(users={"alice": 1000, "root": 0}, groups={"docker": 999, "adm": 4})


def parse(text: str, **kw: object):  # type: ignore[no-untyped-def]
    return parse_policy(text, "p.conf", accounts=ACCOUNTS, **kw)  # type: ignore[arg-type]


def errors(text: str, **kw: object) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse(text, **kw)
    return [str(d) for d in info.value.diagnostics]


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def data_reader(path: str) -> str:
    return (POLICIES / path).read_text()


def data_lister(path: str) -> list[str]:
    return os.listdir(POLICIES / path)


# -- what parses, and into what ---------------------------------------------------------------


def test_spec_example_parses_to_the_expected_rules() -> None:
    p = parse(
        """
        set office    = { 192.0.2.0/24, 2001:db8:1::/48 }
        service ssh tcp/22 {
            allow @office
            allow 10.0.0.0/8 except 10.66.0.0/16
            default deny
        }
        service docker unix:/run/docker.sock {
            allow group docker
            allow uid 0
            default deny
        }
        """
    )
    ssh = p.service("ssh")
    assert ssh.endpoints == (Endpoint("tcp", ((22, 22),)),)
    assert [r.match for r in ssh.rules] == [
        AddrMatch((net("192.0.2.0/24"), net("2001:db8:1::/48")), "@office"),
        Except(AddrMatch((net("10.0.0.0/8"),), "10.0.0.0/8"), AddrMatch((net("10.66.0.0/16"),), "10.66.0.0/16")),
    ]
    assert ssh.default is Action.DENY
    docker = p.service("docker")
    assert docker.endpoints == (Endpoint("unix", path="/run/docker.sock"),)
    assert [r.match for r in docker.rules] == [Principal("group", "docker", 999), Principal("uid", 0)]


def test_rule_text_span_and_lists() -> None:
    p = parse("service s {\n  allow   { 192.0.2.1 ,198.51.100.0/24 }\n    except {192.0.2.1}  # c\n}\n")
    (rule,) = p.service("s").rules
    assert rule.text == "allow { 192.0.2.1, 198.51.100.0/24 } except { 192.0.2.1 }"
    assert (rule.span.line, rule.span.col, rule.span.length) == (2, 3, 5)
    assert rule.match == Except(
        AnyOf((AddrMatch((net("192.0.2.1/32"),), "192.0.2.1"), AddrMatch((net("198.51.100.0/24"),), "198.51.100.0/24"))),
        AnyOf((AddrMatch((net("192.0.2.1/32"),), "192.0.2.1"),)),
    )


def test_endpoints_ports_ranges_and_unix() -> None:
    p = parse("service a tcp/80,443 tcp/8000-8099 udp/53 unix:/run/a.sock unix:@abs { allow all }\nservice b { allow all }")
    assert p.service("a").endpoints == (
        Endpoint("tcp", ((80, 80), (443, 443))),
        Endpoint("tcp", ((8000, 8099),)),
        Endpoint("udp", ((53, 53),)),
        Endpoint("unix", path="/run/a.sock"),
        Endpoint("unix", path="@abs"),
    )
    assert p.service("b").endpoints == ()


def test_principals_hosts_and_all() -> None:
    p = parse(
        'service s { allow { user alice, group adm, uid 0, gid 10, exe /usr/bin/*, exe "/opt/my app" }\n'
        "allow host .example.com\nallow host www.example.com\ndeny all }"
    )
    rules = p.service("s").rules
    assert rules[0].match == AnyOf(
        (
            Principal("user", "alice", 1000),
            Principal("group", "adm", 4),
            Principal("uid", 0),
            Principal("gid", 10),
            Principal("exe", "/usr/bin/*"),
            Principal("exe", "/opt/my app"),
        )
    )
    assert rules[1].match == HostPattern(".example.com")
    assert rules[2].match == HostPattern("www.example.com")
    assert rules[3].match == MatchAll()


def test_limits_on_rules_and_services() -> None:
    p = parse(
        "service s {\n"
        "  allow 192.0.2.0/24 limit concurrent 10 per source limit rate 30/minute per source ban 10m\n"
        "  allow 198.51.100.0/24 limit rate 5/10s\n"
        "  limit concurrent 500\n"
        "  limit rate 100/second per source\n"
        "  ban 1h\n"
        "}"
    )
    s = p.service("s")
    assert s.rules[0].limits == Limits(concurrent_per_source=10, rate_per_source=Rate(30, 60), ban_seconds=600)
    assert s.rules[1].limits == Limits(rate_total=Rate(5, 10))
    assert s.limits == Limits(concurrent_total=500, rate_per_source=Rate(100, 1), ban_seconds=3600)


def test_limit_on_the_next_line_belongs_to_the_service() -> None:
    s = parse("service s {\n allow all\n limit concurrent 5\n}").service("s")
    assert s.rules[0].limits is None
    assert s.limits == Limits(concurrent_total=5)


def test_listen_and_forward_urls_are_kept_as_written() -> None:
    s = parse(
        'service p tcp/8443 {\n listen tcp://0.0.0.0:8443\n listen "tcp://[::]:8443"\n listen udp://127.0.0.1:5353\n'
        " listen unix:@abstract\n forward unix:/run/app.sock\n allow all }"
    ).service("p")
    assert s.listen == ("tcp://0.0.0.0:8443", "tcp://[::]:8443", "udp://127.0.0.1:5353", "unix:@abstract")
    assert s.forward == "unix:/run/app.sock"


def test_file_default_fills_services_without_one() -> None:
    p = parse("service a { allow 192.0.2.1 }\nservice b { allow all default deny }\ndefault allow\n")
    assert p.default is Action.ALLOW
    assert p.service("a").default is Action.ALLOW
    assert p.service("b").default is Action.DENY


def test_v4_mapped_networks_fold_to_ipv4() -> None:
    (rule,) = parse("service s { allow ::ffff:192.0.2.0/120 }").service("s").rules
    assert rule.match == AddrMatch((net("192.0.2.0/24"),), "::ffff:192.0.2.0/120")


def test_sets_nest_and_dedupe() -> None:
    p = parse("set a = { 192.0.2.0/24 }\nset b = { @a, 192.0.2.0/24, 2001:db8::1 }\nset e = { }")
    assert [s.nets for s in p.sets] == [
        (net("192.0.2.0/24"),),
        (net("192.0.2.0/24"), net("2001:db8::1/128")),
        (),
    ]


def test_includes_globs_and_set_files() -> None:
    p = parse_policy_files(["good/main.conf"], read=data_reader, accounts=ACCOUNTS, listdir=data_lister)
    assert p.sources == (
        "good/main.conf",
        "good/sets.conf",
        "good/lists/blocklist.txt",
        "good/conf.d/10-ssh.conf",
        "good/conf.d/20-web.conf",
    )
    assert [s.name for s in p.services] == ["ssh", "web"]
    blocklist = p.sets[1]
    assert blocklist.path == "good/lists/blocklist.txt"
    assert blocklist.nets == (net("192.0.2.66/32"), net("203.0.113.0/24"), net("2001:db8:bad::/48"))
    assert p.service("ssh").default is Action.DENY  # the file-wide default of main.conf
    assert p.service("web").rules[0].span.file == "good/conf.d/20-web.conf"
    assert dict(p.texts)["good/sets.conf"] == data_reader("good/sets.conf")


def test_resolve_path() -> None:
    assert resolve_path("/etc/sockgate/main.conf", "d/x.conf") == "/etc/sockgate/d/x.conf"
    assert resolve_path("/main.conf", "x.conf") == "/x.conf"
    assert resolve_path("main.conf", "x.conf") == "x.conf"
    assert resolve_path("a/main.conf", "/abs.conf") == "/abs.conf"


# -- errors, word for word ------------------------------------------------------------------

ERRORS = [
    ("set s = { 10.0.0.1/8 }", "p.conf:1:11: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"),
    ("service s { allow 2001:db8::1/32 }", "p.conf:1:19: 2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?"),
    ("service s { allow 10.0.0.0/33 }", "p.conf:1:19: prefix length /33 is too long for IPv4 (at most /32)"),
    ("service s { allow 10.0.0.0/x }", "p.conf:1:19: expected a prefix length 0-32 after '/', found 'x'"),
    ("service s { allow 300.0.0.1 }", "p.conf:1:19: expected an IPv4 or IPv6 address, found '300.0.0.1'"),
    (
        "service s { allow bogus }",
        "p.conf:1:19: expected an address, CIDR, @set, all, host NAME, user NAME, group NAME, uid N, gid N "
        "or exe PATH, found 'bogus'",
    ),
    ("service s tcp/ssh2 { }", "p.conf:1:15: expected a port or port range, found 'ssh2'"),
    ("service s tcp/0 { }", "p.conf:1:15: port 0 is out of range (1-65535)"),
    ("service s udp/65536 { }", "p.conf:1:15: port 65536 is out of range (1-65535)"),
    ("service s tcp/90-80 { }", "p.conf:1:15: port range 90-80 is empty (the first port must not exceed the last)"),
    ("service s tcp/80,x { }", "p.conf:1:18: expected a port or port range, found 'x'"),
    ("service s sctp/9 { }", "p.conf:1:11: unknown protocol 'sctp'; expected tcp or udp (or unix:/PATH)"),
    ("service s unix:rel { }", "p.conf:1:11: expected unix:/absolute/path or unix:@name, found 'unix:rel'"),
    ("service s { allow @nope }", "p.conf:1:19: unknown set @nope (no sets are defined before this line; "
     "define it with 'set NAME = { ... }' first)"),
    ("set office = { }\nservice s { allow @ofice }", "p.conf:2:19: unknown set @ofice; did you mean @office?"),
    ("service s { allow user bob }", "p.conf:1:24: unknown user 'bob' (not in the account database)"),
    ("service s { allow group wheel }", "p.conf:1:25: unknown group 'wheel' (not in the account database)"),
    ("service s { allow uid -1 }", "p.conf:1:23: expected a numeric uid (0-4294967294), found '-1'"),
    ("service s { allow exe bin/sh }", "p.conf:1:23: expected an absolute executable path (/usr/bin/prog), found 'bin/sh'"),
    ("service s { allow host -x.com }", "p.conf:1:24: expected a host name (www.example.com) or a domain "
     "(.example.com), found '-x.com'"),
    (
        "service s { alow all }",
        "p.conf:1:13: unknown keyword 'alow' in service s; expected one of: allow, ban, default, deny, forward, "
        "limit, listen; did you mean 'allow'?",
    ),
    ("servce s { }", "p.conf:1:1: unknown keyword 'servce'; expected one of: default, include, service, set; "
     "did you mean 'service'?"),
    ("allow all", "p.conf:1:1: unknown keyword 'allow'; expected one of: default, include, service, set "
     "(rules go inside a service block)"),
    ("service s { allow 10.0.0.0/8\n deny 10.0.0.0/8 }", "p.conf:2:2: duplicate rule: it matches exactly the "
     "clients of the rule at p.conf:1, which decides first, so it can never match\n"
     "p.conf:1:13: note: this rule matches the same clients: allow 10.0.0.0/8"),
    ("service s { allow { 192.0.2.1, 192.0.2.2 }\n allow { 192.0.2.2/32, 192.0.2.1 } }", "p.conf:2:2: duplicate "
     "rule: it matches exactly the clients of the rule at p.conf:1, which decides first, so it can never match\n"
     "p.conf:1:13: note: this rule matches the same clients: allow { 192.0.2.1, 192.0.2.2 }"),
    ("set a = { }\nset a = { }", "p.conf:2:5: set @a is defined twice\np.conf:1:5: note: first defined here"),
    ("service a { }\nservice a { }", "p.conf:2:9: service a is declared twice\np.conf:1:9: note: first declared here"),
    ("default allow\ndefault deny", "p.conf:2:1: the file-wide default is given twice\np.conf:1:1: note: first given here"),
    ("service s { default allow default deny }", "p.conf:1:27: service s has two defaults\n"
     "p.conf:1:13: note: first default here"),
    ("service s { default maybe }", "p.conf:1:21: expected 'allow' or 'deny' after 'default', found 'maybe'"),
    ("service s { allow { } }", "p.conf:1:19: an empty list matches nothing; name at least one client"),
    ("service s { allow all limit concurrent 0 }", "p.conf:1:40: a connection count must be at least 1, found '0'"),
    ("service s { limit concurrent 2147483648 }", "p.conf:1:30: a connection count must be at most 2147483647, "
     "found '2147483648'"),
    ("service s { limit rate 1/minute per source ban 3651d }", "p.conf:1:48: a duration must be at most 3650d, "
     "found '3651d'"),
    ("service s { limit rate 5/fortnight }", "p.conf:1:24: expected a rate unit (second, minute, hour, day) or a "
     "duration after '/', found 'fortnight'"),
    ("service s { limit rate 5 }", "p.conf:1:24: expected a rate like 30/minute, found '5'"),
    ("service s { limit speed 5 }", "p.conf:1:19: expected 'concurrent' or 'rate' after 'limit', found 'speed'"),
    ("service s { limit concurrent 5 per host }", "p.conf:1:36: expected 'source' after 'per', found 'host'"),
    ("service s { limit rate 1/minute per source ban 10y }", "p.conf:1:48: expected a duration like 30s, 10m, 2h "
     "or 1d, found '10y'"),
    ("service s { ban 0s limit rate 1/second per source }", "p.conf:1:17: a duration must be positive, found '0s'"),
    ("service s { limit concurrent 1\n limit concurrent 2 }", "p.conf:2:2: 'limit concurrent' is given twice\n"
     "p.conf:1:13: note: first given here"),
    ("service s { allow all ban 10m }", "p.conf:1:23: a ban needs a per-source rate to trigger it "
     "(add 'limit rate N/minute per source')"),
    ("service s { deny all limit concurrent 3 }", "p.conf:1:22: limits apply to allowed connections; a deny rule "
     "cannot have them"),
    ("service s { listen http://x }", "p.conf:1:20: bad listen URL: 'http://x': unknown socket URL scheme 'http'; "
     "expected one of tcp:, udp:, unix:, unix+dgram:"),
    ("service s { forward tcp://[::1]:99999 }", "p.conf:1:21: bad forward URL: 'tcp://[::1]:99999': port 99999 "
     "out of range 0-65535"),
    ('service s { forward "unix:/a"\n forward "unix:/b" }', "p.conf:2:2: service s forwards twice\n"
     "p.conf:1:13: note: first forward here"),
    ("service a {\n allow all\nservice b { allow all }", "p.conf:3:1: expected '}' to close service a (opened at "
     "line 1) before this 'service'"),
    ("service s { allow all", "p.conf:1:22: expected '}' to close service s (opened at line 1), found end of file"),
    ('include "x.conf', 'p.conf:1:9: unterminated string: "x.conf'),
    ("service s { allow 10.0.0.0/8 ; }", "p.conf:1:30: expected a statement in service s (allow, ban, default, "
     "deny, forward, limit, listen), found ';'"),
    ('include "missing.conf"', "p.conf:1:9: cannot read policy file 'missing.conf': No such file or directory"),
    ('set b < "missing.txt"', "p.conf:1:9: cannot read address list 'missing.txt': No such file or directory"),
    ('include "d/*.conf"', "p.conf:1:9: cannot list directories here: include a file by name, without wildcards"),
    ('include "*/x.conf"', "p.conf:1:9: wildcards are allowed only in the last part of an include path, "
     "found '*/x.conf'"),
    ('include "p.conf"', "p.conf:1:9: include cycle: p.conf -> p.conf"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[e[1].split(": ", 1)[1][:40] for e in ERRORS])
def test_error_messages_word_for_word(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_several_errors_are_reported_at_once_in_order() -> None:
    got = errors("set a = { 10.0.0.1/8, 300.1.1.1 }\nservice s tcp/0 {\n allow @b\n allow user bob\n frob\n}\nservice s { }")
    assert [e.split(": ")[0] for e in got] == ["p.conf:1:11", "p.conf:1:23", "p.conf:2:15", "p.conf:3:8",
                                               "p.conf:4:13", "p.conf:5:2", "p.conf:7:9"]


@pytest.mark.parametrize("name", ["many", "cycle-a", "setfile"])
def test_error_files(name: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_files([f"errors/{name}.conf"], read=data_reader, accounts=ACCOUNTS)
    expected = (POLICIES / "errors" / f"{name}.expected").read_text()
    assert info.value.render(caret=False) + "\n" == expected
    rendered = info.value.render(caret=True)  # carets come from the file each error is in
    assert "^" in rendered


def test_caret_rendering() -> None:
    with pytest.raises(PolicyError) as info:
        parse("service ssh tcp/ssh2 {\n}")
    assert info.value.render() == (
        "p.conf:1:17: expected a port or port range, found 'ssh2'\n"
        "    service ssh tcp/ssh2...\n"  # a parse error shows its culprit only, not what follows
        "                    ^~~~"
    )


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    got = errors("service s { allow " + "{ " * 5000 + "all" + " }" * 5000 + " }")
    assert got[0] == "p.conf:1:83: a match nests lists and excepts more than 32 deep"
    got = errors("service s { allow " + "10.0.0.0/8 except " * 5000 + "all }")
    assert got[0].endswith("a match nests lists and excepts more than 32 deep")


def test_unreadable_top_level_file() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_files(["nope.conf"], read=data_reader, accounts=ACCOUNTS)
    (d,) = info.value.diagnostics
    assert d.span is None and d.message.startswith("cannot read policy file 'nope.conf': ")


# -- properties -------------------------------------------------------------------------------

WORDS = ["set", "service", "include", "default", "allow", "deny", "all", "except", "limit", "rate", "ban",
         "concurrent", "per", "source", "host", "user", "alice", "group", "uid", "gid", "exe", "listen", "forward",
         "tcp/22", "udp/1-2", "unix:/x", "10.0.0.0/8", "10.0.0.1/8", "::1", "@a", "a", "{", "}", ",", "=", "<",
         '"x"', '"', "#", "\n", "30/minute", "10m", "0", "/bin/*", "tcp://[::]:1"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join)))
def test_parser_raises_nothing_but_policy_error(text: str) -> None:
    try:
        parse(text)
    except PolicyError as e:
        assert e.diagnostics
        lines = text.count("\n") + 2
        for d in e.diagnostics:
            assert d.span is not None and d.span.file == "p.conf" and 1 <= d.span.line <= lines and d.span.col >= 1
            assert d.render(text)


# Every kind of error, injected into a valid policy at a random place: (bad text, expected message).
INJECTED = {
    "host bits": ("10.0.0.1/8", "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"),
    "unknown set": ("@nosuchset", "unknown set @nosuchset"),
    "unknown user": ("user mallory", "unknown user 'mallory' (not in the account database)"),
    "unknown group": ("group wheel", "unknown group 'wheel' (not in the account database)"),
    "prefix": ("2001:db8::/129", "prefix length /129 is too long for IPv6 (at most /128)"),
    "not an item": ("everyone", "expected an address, CIDR, @set, all, host NAME, user NAME, group NAME, uid N, "
                    "gid N or exe PATH, found 'everyone'"),
}


@st.composite
def policy_with_error(draw: st.DrawFn) -> tuple[str, int, int, str]:
    kind = draw(st.sampled_from(sorted(INJECTED) + ["port", "keyword"]))
    n_rules = draw(st.integers(1, 6))
    at = draw(st.integers(0, n_rules - 1))
    indent = " " * draw(st.integers(0, 8))
    blank = draw(st.integers(0, 3))
    lines = ["# generated", *[""] * blank, "set office = { 192.0.2.0/24 }", "service svc tcp/22 {"]
    expect: tuple[int, int, str] | None = None
    for i in range(n_rules):
        item = f"198.51.100.{i}"
        if i == at and kind in INJECTED:
            bad, message = INJECTED[kind]
            item = f"{{ 203.0.113.{i}, {bad} }}" if draw(st.booleans()) else bad
            col = len(indent) + len("allow ") + item.index(bad.split()[-1] if " " in bad else bad) + 1
            if " " in bad:
                col = len(indent) + len("allow ") + item.index(bad) + len(bad.split()[0]) + 2
            expect = (len(lines) + 1, col, message)
        keyword = "allow"
        if i == at and kind == "keyword":
            keyword = "permit"
            expect = (len(lines) + 1, len(indent) + 1, "unknown keyword 'permit' in service svc; expected one of: "
                      "allow, ban, default, deny, forward, limit, listen")
        lines.append(f"{indent}{keyword} {item}")
    lines.append("}")
    if kind == "port":
        port = draw(st.sampled_from(["ssh", "0", "65536", "9-8"]))
        lines[blank + 2] = f"service svc tcp/22,{port} {{"
        message = {"ssh": "expected a port or port range, found 'ssh'", "0": "port 0 is out of range (1-65535)",
                   "65536": "port 65536 is out of range (1-65535)",
                   "9-8": "port range 9-8 is empty (the first port must not exceed the last)"}[port]
        expect = (blank + 3, len("service svc tcp/22,") + 1, message)
    assert expect is not None
    return "\n".join(lines) + "\n", *expect


@settings(max_examples=150, deadline=None)
@given(policy_with_error())
def test_every_error_kind_carries_its_line_and_column(case: tuple[str, int, int, str]) -> None:
    text, line, col, message = case
    with pytest.raises(PolicyError) as info:
        parse(text)
    assert [(d.span.line, d.span.col, d.message) for d in info.value.diagnostics if d.span] == [(line, col, message)]


def test_include_cycle_through_dot_dot_is_found() -> None:
    """A drop-in that includes its parent by a relative path is a cycle, however spelled."""
    files = {"main.conf": 'include "conf.d/*.conf"\n', "conf.d/10-x.conf": 'include "../main.conf"\n'}
    with pytest.raises(PolicyError) as info:
        parse_policy_files(["main.conf"], read=lambda p: files[p], accounts=ACCOUNTS,
                           listdir=lambda d: ["10-x.conf"] if d == "conf.d" else [])
    assert [str(d) for d in info.value.diagnostics] == [
        "conf.d/10-x.conf:1:9: include cycle: main.conf -> conf.d/10-x.conf -> main.conf"
    ]


def test_resolve_path_normalises_dot_segments() -> None:
    assert resolve_path("conf.d/x.conf", "../main.conf") == "main.conf"
    assert resolve_path("/etc/sg/conf.d/x.conf", "./../sets//a.txt") == "/etc/sg/sets/a.txt"
    assert resolve_path("x.conf", "../up.conf") == "../up.conf"
    assert resolve_path("/x.conf", "../../up.conf") == "/up.conf"


def test_including_a_directory_says_how_to_include_its_files() -> None:
    def read(path: str) -> str:
        if path == "conf.d":
            raise IsADirectoryError(21, "Is a directory", path)
        return 'include "conf.d"\n'

    with pytest.raises(PolicyError) as info:
        parse_policy_files(["main.conf"], read=read, accounts=ACCOUNTS)
    assert [str(d) for d in info.value.diagnostics] == [
        "main.conf:1:9: cannot read policy file 'conf.d': Is a directory; "
        "to include the files in it, write include \"conf.d/*.conf\""
    ]


def test_bad_ports_do_not_hide_the_rest_of_the_service() -> None:
    got = errors("service web tcp/80-70,70000 udp/0 sctp/5 {\n default allow\n default deny\n}\nservce x { }")
    assert [e.split(": ", 1)[0] for e in got] == ["p.conf:1:17", "p.conf:1:23", "p.conf:1:33", "p.conf:1:35",
                                                  "p.conf:3:2", "p.conf:5:1"]


def test_a_comma_list_without_braces_gets_a_hint() -> None:
    assert errors("service s { allow 10.0.0.0/8, 192.168.0.0/16 }") == [
        "p.conf:1:29: expected a statement in service s (allow, ban, default, deny, forward, limit, listen), "
        "found ','; a list of clients goes in braces: allow { A, B }"
    ]


def test_group_by_number_gets_a_hint() -> None:
    assert errors("service s { allow group 4242 }") == [
        "p.conf:1:25: unknown group '4242' (not in the account database); for a group id write 'gid 4242'"
    ]
    assert errors("service s { allow user 4242 }") == [
        "p.conf:1:24: unknown user '4242' (not in the account database); for a user id write 'uid 4242'"
    ]


def test_set_file_lines_are_counted_as_the_caret_renderer_counts_them() -> None:
    """Only "\\n" ends a line (a form feed or U+2028 in a list file must not shift positions)."""
    files = {"l.txt": "10.0.0.1\x0c\n192.0.2.1\u2028\nbogus\r\n"}
    assert errors('set s < "l.txt"', read=files.__getitem__) == ["l.txt:3:1: expected an address or CIDR, found 'bogus'"]


# -- someone else's file named by mistake ------------------------------------------------------

SHADOW = "".join(f"user{i}:$6$SaltSaltSaltSalt$" + "S3cr3tHash" * 8 + ":19000:0:99999:7:::\n" for i in range(30))


def test_a_set_file_that_is_not_an_address_list_is_not_echoed() -> None:
    with pytest.raises(PolicyError) as info:
        parse('set x < "/etc/shadow"', read={"/etc/shadow": SHADOW}.__getitem__)
    got = [str(d) for d in info.value.diagnostics]
    assert got == [
        *(f"/etc/shadow:{i}:1: expected an address or CIDR, found 'user{i - 1}:$6$SaltSaltSaltSal...'"
          for i in range(1, 6)),
        "/etc/shadow:6:1: 25 more lines of this address list are not addresses or CIDRs (not shown)",
    ]
    rendered = info.value.render(caret=True)
    assert "S3cr3tHash" not in rendered and ":19000:" not in rendered
    assert rendered.splitlines()[1:3] == ["    user0:$6$SaltSaltSaltSal...", "    ^" + "~" * 23]


def test_an_included_file_that_is_not_a_policy_is_not_echoed() -> None:
    with pytest.raises(PolicyError) as info:
        parse('include "/etc/shadow"', read={"/etc/shadow": 'x "' + SHADOW}.__getitem__)
    rendered = info.value.render(caret=True)
    assert "S3cr3tHash" not in rendered and ":19000:" not in rendered
    assert rendered.splitlines()[:3] == [
        "/etc/shadow:1:1: unknown keyword 'x'; expected one of: default, include, service, set",
        "    x...",
        "    ^",
    ]


def test_a_parse_error_does_not_show_what_follows_its_culprit() -> None:
    """A credentials file included by mistake: the error is at the key, the secret not shown."""
    with pytest.raises(PolicyError) as info:
        parse('include "creds"', read={"creds": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG\n"}.__getitem__)
    assert "wJalr" not in info.value.render()
    assert info.value.render().splitlines()[1:] == ["    aws_secret_access_key...", "    ^" + "~" * 20]


def test_long_words_are_cut_in_messages_and_under_the_caret() -> None:
    word = "a" * 100
    with pytest.raises(PolicyError) as info:
        parse(f"service s {{ allow {word} }}")
    assert info.value.render().splitlines() == [
        f"p.conf:1:19: expected an address, CIDR, @set, all, host NAME, user NAME, group NAME, uid N, gid N "
        f"or exe PATH, found '{'a' * 24}...'",
        f"    service s {{ allow {'a' * 24}...",
        "                      ^" + "~" * 23,
    ]


def test_a_file_included_twice_is_parsed_once() -> None:
    reads: list[str] = []
    files = {"sets.conf": "set office = { 192.0.2.0/24 }\n", "l.txt": "203.0.113.0/24\n"}

    def read(path: str) -> str:
        reads.append(path)
        return files[path]

    p = parse('include "sets.conf"\ninclude "./sets.conf"\nset a < "l.txt"\nset b < "l.txt"\n'
              "service s { deny @a\n allow @office\n default deny }", read=read)
    assert reads == ["sets.conf", "l.txt"]
    assert [s.name for s in p.sets] == ["office", "a", "b"] and p.sets[1].nets == p.sets[2].nets


def test_parsing_many_rules_is_not_quadratic() -> None:
    """Each rule was compared with every earlier one for duplicates."""
    rules = "".join(f" {'allow' if i % 2 else 'deny'} 10.{i >> 16}.{(i >> 8) & 255}.{i & 255}\n" for i in range(30_000))
    t0 = time.perf_counter()
    with pytest.raises(PolicyError) as info:
        parse(f"service s {{\n{rules} allow 10.0.0.5\n default deny\n}}")
    assert time.perf_counter() - t0 < 30
    assert [d.message[:40] for d in info.value.diagnostics] == ["duplicate rule: it matches exactly the c"]
