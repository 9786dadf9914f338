"""Lint warnings word for word, their properties, and the `sockgate lint` command."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.cli.main import main
from sockgate.decide import decide
from sockgate.peers import Peer
from sockgate.policy.accounts import StaticAccounts
from sockgate.policy.lint import lint
from sockgate.policy.parser import parse_policy

EXAMPLE = Path(__file__).parents[2] / "src" / "sockgate" / "examples" / "example.conf"


def warnings(text: str) -> list[str]:
    policy = parse_policy(text, "p.conf", accounts=StaticAccounts(users={"alice": 1000}))
    diags = lint(policy)
    assert all(d.severity == "warning" for d in diags)
    return [str(d) for d in diags]


def test_clean_policy_has_no_warnings() -> None:
    assert warnings("set b = { 192.0.2.66 }\nservice s tcp/22 {\n deny @b\n allow 192.0.2.0/24\n default deny\n}") == []


def test_shadowed_by_one_rule() -> None:
    assert warnings("service s {\n allow 10.0.0.0/8\n deny 10.1.0.0/16\n default deny\n}") == [
        "p.conf:3:2: warning: rule is shadowed and can never match: the rule at p.conf:2 already decides every "
        "client it names\np.conf:2:2: note: shadowing rule: allow 10.0.0.0/8"
    ]


def test_shadowed_by_the_union_of_rules() -> None:
    text = "service s {\n allow 10.0.0.0/9\n deny 10.128.0.0/9\n allow 2001:db8::/32\n deny 10.0.0.0/8\n default deny\n}"
    assert warnings(text) == [
        "p.conf:5:2: warning: rule is shadowed and can never match: the rules at p.conf:2, p.conf:3 already "
        "decide every client it names\np.conf:2:2: note: shadowing rule: allow 10.0.0.0/9\n"
        "p.conf:3:2: note: shadowing rule: deny 10.128.0.0/9"
    ]


def test_shadowed_by_all_and_by_principals() -> None:
    text = "service s unix:/x {\n allow { user alice, uid 5 }\n deny uid 5\n allow all\n deny gid 3\n default deny\n}"
    assert warnings(text) == [
        "p.conf:3:2: warning: rule is shadowed and can never match: the rule at p.conf:2 already decides every "
        "client it names\np.conf:2:2: note: shadowing rule: allow { user alice, uid 5 }",
        "p.conf:5:2: warning: rule is shadowed and can never match: the rule at p.conf:4 already decides every "
        "client it names\np.conf:4:2: note: shadowing rule: allow all",
    ]


def test_partial_overlap_is_not_a_shadow() -> None:
    assert warnings("service s {\n allow 10.0.0.0/9 except 10.1.0.0/16\n deny 10.0.0.0/8\n default deny\n}") == []


def test_rule_matching_nothing() -> None:
    assert warnings("set e = { }\nservice s {\n allow @e\n allow 10.0.0.0/8 except 10.0.0.0/7\n default deny\n}") == [
        "p.conf:3:2: warning: rule matches no client: everything it names is excepted, or its set is empty",
        "p.conf:4:2: warning: rule matches no client: everything it names is excepted, or its set is empty",
    ]


def test_set_overlapping_an_earlier_allow_weakens_a_deny() -> None:
    text = "set office = { 192.0.2.0/24 }\nset bad = { 192.0.2.64/26, 203.0.113.9 }\nservice s {\n allow @office\n deny @bad\n default deny\n}"
    assert warnings(text) == [
        "p.conf:5:2: warning: set @bad of this deny rule overlaps the allow rule at p.conf:4 (set @office) on "
        "192.0.2.64/26; that rule decides first, so 192.0.2.64/26 is allowed\n"
        "p.conf:4:2: note: overlapping rule: allow @office"
    ]


def test_overlap_running_from_the_last_ipv6_address_into_ipv4_is_described() -> None:
    # the top of the IPv6 space and the bottom of IPv4 meet inside the coverage number line
    text = "set edge = { 8000::/1, 0.0.0.0/8 }\nservice s {\n allow @edge\n deny { ::/0, 0.0.0.0/0 }\n default deny\n}"
    assert warnings(text) == [
        "p.conf:4:2: warning: this deny rule overlaps the allow rule at p.conf:3 (set @edge) on 8000::/1; "
        "that rule decides first, so 8000::/1 is allowed\n"
        "p.conf:3:2: note: overlapping rule: allow @edge"
    ]


def test_deny_first_then_allow_is_the_usual_exception_and_not_reported() -> None:
    text = "set bad = { 192.0.2.66 }\nset office = { 192.0.2.0/24 }\nservice s {\n deny @bad\n allow @office\n default deny\n}"
    assert warnings(text) == []


def test_host_names_kinds_and_missing_default() -> None:
    text = "service web tcp/80 {\n allow host .example.com\n allow uid 0\n}\nservice u unix:/run/u.sock {\n allow 127.0.0.1\n default deny\n}"
    assert warnings(text) == [
        "p.conf:1:9: warning: service web has no default: clients that no rule matches are denied; write "
        "'default deny' (or 'default allow') to say so",
        "p.conf:2:2: warning: host-name rule: a kernel filter cannot match host names (they need a DNS lookup); "
        "only `sockgate proxy` enforces this rule, and `sockgate run`/`attach` refuse it",
        "p.conf:3:2: warning: user/group/uid/gid/exe rules need Unix peer credentials, but service web has no "
        "unix: endpoint; this rule never matches an IP client",
        "p.conf:6:2: warning: address rules need an IP peer, but service u listens only on Unix sockets; this "
        "part of the rule never matches",
    ]


def test_file_default_counts_as_a_default() -> None:
    assert warnings("default deny\nservice s { allow 192.0.2.1 }") == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["allow", "deny"]), st.integers(0, 255), st.integers(24, 32)),
        max_size=7,
        unique_by=lambda r: (r[1] >> (32 - r[2]), r[2]),
    ),
    st.integers(0, 255),
)
def test_a_shadowed_rule_never_decides(rules: list[tuple[str, int, int]], host: int) -> None:
    lines = [f" {a} {ipaddress.IPv4Network((0x0A000000 + (o >> (32 - p) << (32 - p)), p))}" for a, o, p in rules]
    policy = parse_policy("service s {\n" + "\n".join(lines) + "\n default deny\n}", "p.conf")
    shadowed = {d.span.line for d in lint(policy) if d.span and "shadowed" in d.message}
    d = decide(policy, "s", Peer(address=ipaddress.IPv4Address(0x0A000000 + host)))
    assert d.rule is None or d.rule.span.line not in shadowed


# -- the command ------------------------------------------------------------------------------


def test_cli_lint_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean.conf"
    clean.write_text("service s tcp/22 {\n allow 192.0.2.0/24\n default deny\n}\n")
    assert main(["lint", str(clean)]) == 0
    assert capsys.readouterr().out == ""

    warn = tmp_path / "warn.conf"
    warn.write_text("service s tcp/22 {\n  allow 10.0.0.0/8\n  allow 10.1.0.0/16\n  default deny\n}\n")
    assert main(["lint", str(warn)]) == 1
    out = capsys.readouterr()
    assert out.out == (
        f"{warn}:3:3: warning: rule is shadowed and can never match: the rule at {warn}:2 already decides every "
        f"client it names\n      allow 10.1.0.0/16\n      ^~~~~\n{warn}:2:3: note: shadowing rule: allow 10.0.0.0/8\n"
    )
    assert out.err == "0 errors, 1 warning\n"

    bad = tmp_path / "bad.conf"
    bad.write_text("service s tcp/ssh2 {\n  allow 10.0.0.1/8\n}\n")
    assert main(["lint", str(bad)]) == 2
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"{bad}:1:15: expected a port or port range, found 'ssh2'",
        "    service s tcp/ssh2...",
        "                  ^~~~",
        f"{bad}:2:9: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
        "      allow 10.0.0.1/8",
        "            ^~~~~~~~~~",
    ]
    assert out.err == "2 errors, 0 warnings\n"


def test_cli_lint_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    warn = tmp_path / "warn.conf"
    warn.write_text("service s tcp/22 {\n  allow 10.0.0.0/8\n  allow 10.1.0.0/16\n}\n")
    assert main(["lint", "--json", str(warn)]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["line"], r["col"], r["severity"]) for r in rows] == [(1, 9, "warning"), (3, 3, "warning")]
    assert rows[1]["related"] == [
        {"file": str(warn), "line": 2, "col": 3, "message": "shadowing rule: allow 10.0.0.0/8"}
    ]


def test_shipped_example_loads_and_has_only_the_host_name_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(EXAMPLE)]) == 1
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if ": warning: " in line]
    assert len(heads) == 2 and all("host-name rule" in h for h in heads)


def test_cli_lint_on_drop_in_directory_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Real files: including a directory by name, and a drop-in including its parent."""
    (tmp_path / "conf.d").mkdir()
    main_conf = tmp_path / "main.conf"
    main_conf.write_text('include "conf.d"\n')
    assert main(["lint", str(main_conf)]) == 2
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{main_conf}:1:9: cannot read policy file '{tmp_path}/conf.d': Is a directory; "
        f'to include the files in it, write include "{tmp_path}/conf.d/*.conf"'
    )
    main_conf.write_text('include "conf.d/*.conf"\n')
    (tmp_path / "conf.d" / "10-x.conf").write_text('include "../main.conf"\n')
    assert main(["lint", str(main_conf)]) == 2
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{tmp_path}/conf.d/10-x.conf:1:9: include cycle: {main_conf} -> {tmp_path}/conf.d/10-x.conf -> {main_conf}"
    )


def test_hosts_access_rules_the_kernel_cannot_enforce_are_reported() -> None:
    from sockgate.policy.hostsaccess import parse_hosts_access

    files = {
        "hosts.allow": "sshd : 10.0.0.0/8\nsshd : .example.com\nALL : LOCAL\nftpd : bob@10.0.0.1\n"
                       "ftpd@192.0.2.1 : 10.0.0.0/8\n",
        "hosts.deny": "ALL : ALL\n",
    }
    policy = parse_hosts_access("hosts.allow", "hosts.deny", read=files.__getitem__)
    tail = "; only `sockgate proxy` enforces it, and `sockgate run`/`attach` refuse it"
    assert [str(d) for d in lint(policy)] == [
        "hosts.allow:2:1: warning: a kernel filter cannot enforce this rule: it needs the client's host name "
        "(a DNS lookup)" + tail,
        "hosts.allow:3:1: warning: a kernel filter cannot enforce this rule: it needs the client's host name "
        "(a DNS lookup)" + tail,
        "hosts.allow:4:1: warning: a kernel filter cannot enforce this rule: it needs the client's ident user "
        "name" + tail,
        "hosts.allow:5:1: warning: a kernel filter cannot enforce this rule: it needs the server address "
        "(daemon@host)" + tail,
    ]


def test_hosts_access_rules_a_declared_service_never_consults() -> None:
    """A hosts.deny ban (sshguard, DenyHosts) naming a daemon that a native block declares does
    not apply to it: the block alone decides; lint says so at the rule."""
    from sockgate.policy.hostsaccess import parse_hosts_access
    from sockgate.policy.merge import merge

    native = parse_policy("service sshd tcp/22 {\n allow all\n default deny\n}\n", "p.conf")
    files = {"hosts.allow": "", "hosts.deny": "sshd: 10.66.0.1\nALL: 10.66.0.2\nftpd: 10.0.0.1\n"}
    wrap = parse_hosts_access("hosts.allow", "hosts.deny", read=files.__getitem__)
    said = "does not apply to service sshd: the service block at p.conf:1 alone decides it (declared services win "
    assert [str(d) for d in lint(merge([native, wrap]))] == [
        f"hosts.deny:1:1: warning: this rule {said}over hosts_access rules)\np.conf:1:9: note: service sshd is declared here",
        f"hosts.deny:2:1: warning: this rule {said}over hosts_access rules)\np.conf:1:9: note: service sshd is declared here",
    ]


def test_two_services_claiming_one_port_or_path() -> None:
    text = ("service a tcp/20-30 unix:/run/a.sock {\n default deny\n}\n"
            "service b udp/25 tcp/22,443 {\n default deny\n}\n"
            "service c unix:/run/a.sock {\n default deny\n}\n")
    assert warnings(text) == [
        "p.conf:4:9: warning: service b claims tcp/22, which service a (p.conf:1) also claims: a socket there "
        "would be guarded by whichever service is named for it\np.conf:1:9: note: service a is declared here",
        "p.conf:7:9: warning: service c claims unix:/run/a.sock, which service a (p.conf:1) also claims: a socket "
        "there would be guarded by whichever service is named for it\np.conf:1:9: note: service a is declared here",
    ]


def test_a_rule_excepting_everything_matches_nobody() -> None:
    assert warnings("service s {\n allow all except all\n deny 10.0.0.0/8 except { all, 10.0.0.1 }\n default deny\n}") == [
        "p.conf:2:2: warning: rule matches no client: everything it names is excepted, or its set is empty",
        "p.conf:3:2: warning: rule matches no client: everything it names is excepted, or its set is empty",
    ]


def test_an_overlap_an_earlier_deny_already_decides_is_not_reported() -> None:
    """192.0.2.0/26 is decided by the first deny, not by the allow: the deny @bad holds there."""
    text = ("set office = { 192.0.2.0/24 }\nset bad = { 192.0.2.0/26, 203.0.113.0/24 }\n"
            "service s {\n deny 192.0.2.0/25\n allow @office\n deny @bad\n default deny\n}")
    assert warnings(text) == []


def test_a_shadow_names_the_rules_that_decide_not_every_rule_that_overlaps() -> None:
    text = "service s {\n allow 10.0.0.0/8\n deny 10.1.0.0/16\n allow 10.1.2.0/24\n default deny\n}"
    assert warnings(text)[1] == (
        "p.conf:4:2: warning: rule is shadowed and can never match: the rule at p.conf:2 already decides every "
        "client it names\np.conf:2:2: note: shadowing rule: allow 10.0.0.0/8"
    )


def test_a_shadow_by_many_rules_lists_a_few() -> None:
    rules = "".join(f" allow 10.0.{i}.0/24\n" for i in range(256))
    shadow = warnings(f"service s {{\n{rules} deny 10.0.0.0/16\n default deny\n}}")[0]
    places = ", ".join(f"p.conf:{i}" for i in range(2, 10))
    assert shadow.splitlines()[0] == (f"p.conf:258:2: warning: rule is shadowed and can never match: the rules at "
                                      f"{places} and others already decide every client it names")
    assert len(shadow.splitlines()) == 9


def test_lint_of_many_rules_and_services_is_not_quadratic() -> None:
    """20,000 rules and 2,000 services sharing ports: seconds here, hours when every rule was
    compared with the union of all the rules before it."""
    rules = "".join(f" {'allow' if i % 2 else 'deny'} 10.{i >> 8}.{i & 255}.0/24 except 10.{i >> 8}.{i & 255}.1\n"
                    for i in range(20_000))
    services = "".join(f"service x{i} tcp/80,{1000 + i} {{\n default deny\n}}\n" for i in range(2_000))
    policy = parse_policy(f"service s {{\n{rules} deny 10.1.2.128/25\n default deny\n}}\n{services}", "p.conf")
    t0 = time.perf_counter()
    found = lint(policy)
    assert time.perf_counter() - t0 < 20
    assert len(found) == 1 + 1999  # the last deny is shadowed; each later service shares tcp/80 with x0
    assert all("service x0 (p.conf:" in d.message for d in found[1:])


def test_cli_lint_escapes_control_characters_and_keeps_the_caret_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "p.conf"
    p.write_text('service s tcp/22 {\n allow exe "/x\x1b[2J\x07" # \x1b]0;x\x07\n default deny\n}\n')
    assert main(["lint", str(p)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.splitlines()[1:3] == ['     allow exe "/x\\x1b[2J\\x07" # \\x1b]0;x\\x07', "     ^~~~~"]
    p.write_text('service s tcp/22 {\n allow exe "/\x1b[2J\u5bb6" bogus # \x07\n}\n')
    assert main(["lint", str(p)]) == 2
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.splitlines()[1:3] == [
        '     allow exe "/\\x1b[2J\u5bb6" bogus...',
        "                            ^~~~~",  # the wide character takes two columns
    ]
