"""hosts_options(5) options that make libwrap deny when the rule is used (policy/wrapoptions.py).

The expected verdicts are Debian tcpdmatch's, run as root (tests/kernel/test_tcpdmatch_differential.py
checks them against tcpdmatch with the system's accounts); here the accounts are a dictionary."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockgate.bpf import Packet, compile_service, interp
from sockgate.decide import decide
from sockgate.errors import PolicyError
from sockgate.peers import Peer
from sockgate.policy.accounts import StaticAccounts
from sockgate.policy.hostsaccess import parse_hosts_access
from sockgate.policy.ir import Policy
from sockgate.policy.lint import lint
from sockgate.policy.wrapoptions import scanf_int

ACCOUNTS = StaticAccounts(users={"root": 0, "toor": 0, "nobody": 65534, "zed": 1234},
                          groups={"root": 0, "nogroup": 65534, "zed": 1234})


def parse(allow: str, deny: str = "", accounts: StaticAccounts | None = ACCOUNTS) -> Policy:
    files = {"hosts.allow": allow, "hosts.deny": deny}
    return parse_hosts_access("hosts.allow", "hosts.deny", read=files.__getitem__, accounts=accounts)


def errors(allow: str, deny: str = "", accounts: StaticAccounts | None = ACCOUNTS) -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse(allow, deny, accounts)
    return [str(d) for d in e.value.diagnostics]


def granted(options: str) -> bool:
    p = parse(f"sshd: 10.0.0.1: {options}\n")
    allowed = decide(p, "sshd", Peer.parse("10.0.0.1")).allowed
    prog = compile_service(p.service("sshd"))  # the kernel filter says the same
    assert bool(interp.run(prog.insns, Packet.from_address(ipaddress.ip_address("10.0.0.1")))) is allowed
    return allowed


DENIES = " (libwrap denies every client this rule matches)"


@pytest.mark.parametrize(
    "allow, deny, message",
    [
        ("sshd: 10.0.0.1: user nosuchuserxx\n", "", "hosts.allow:1:17: unknown user 'nosuchuserxx'"),
        ("sshd: 10.0.0.1: group nosuchgroupxx\n", "", "hosts.allow:1:17: unknown group 'nosuchgroupxx'"),
        ("sshd: 10.0.0.1: user nobody.nosuchgroupxx\n", "", "hosts.allow:1:17: unknown group 'nosuchgroupxx'"),
        ("sshd: 10.0.0.1: spawn x: user nosuchuserxx: allow\n", "",
         "hosts.allow:1:26: unknown user 'nosuchuserxx'"),
        ("", "sshd: 10.0.0.1: user nosuchuserxx: allow\n", "hosts.deny:1:17: unknown user 'nosuchuserxx'"),
        ("ALL: ALL: user .nogroup\n", "", "hosts.allow:1:11: unknown user ''"),
        ("ALL: ALL: user nobody.\n", "", "hosts.allow:1:11: unknown group ''"),
        ("ALL: ALL: user nobody.nogroup.x\n", "", "hosts.allow:1:11: unknown group 'nogroup.x'"),
        ("ALL: ALL: user NOBODY\n", "", "hosts.allow:1:11: unknown user 'NOBODY'"),
        ("ALL: ALL: user 65534\n", "", "hosts.allow:1:11: unknown user '65534'"),
        ("ALL: ALL: linger 2147483648\n", "", "hosts.allow:1:11: bad linger value '2147483648': expected a"
         " number of seconds >= 0 (as a C int)"),
        ("ALL: ALL: rfc931 4294967296\n", "", "hosts.allow:1:11: bad rfc931 timeout '4294967296': expected a"
         " number of seconds > 0 (as a C int)"),
        ("ALL: ALL: umask 37777777777\n", "", "hosts.allow:1:11: bad umask value '37777777777': expected an"
         " octal mask up to 777"),
        ("ALL: ALL: setenv A=b c\n", "", "hosts.allow:1:11: setenv variable name 'A=b' contains '=', which"
         " setenv(3) refuses"),
        ("ALL: ALL: setenv X%u y\n", "", "hosts.allow:1:11: setenv variable name 'X%u' has a % expansion,"
         " which may bring in an '=' that setenv(3) refuses; name the variable literally"),
    ],
)
def test_options_that_always_fail_are_refused_with_their_place(allow: str, deny: str, message: str) -> None:
    assert errors(allow, deny) == [message + DENIES]


def test_aclexec_is_refused_for_its_command_decides() -> None:
    assert errors("ALL: ALL: aclexec checkdnsbl %a: allow\n") == [
        "hosts.allow:1:11: option 'aclexec' is not supported: libwrap allows or refuses by the exit status"
        " of its command, which sockgate does not run"]


def test_every_unknown_account_of_a_rule_is_reported() -> None:
    assert errors("ALL: ALL: user nouser.nogrp: group nogrp2\n") == [
        "hosts.allow:1:11: unknown group 'nogrp'" + DENIES,
        "hosts.allow:1:11: unknown user 'nouser'" + DENIES,
        "hosts.allow:1:30: unknown group 'nogrp2'" + DENIES,
    ]


def test_without_an_account_database_every_account_is_unknown() -> None:
    assert errors("ALL: ALL: user root\n", accounts=None) == ["hosts.allow:1:11: unknown user 'root'" + DENIES]


@pytest.mark.parametrize(
    "options, allowed",
    [
        ("user root", True),
        ("user toor", True),  # uid 0: still root when initgroups runs
        ("user nobody", False),  # setuid first: initgroups then fails with EPERM
        ("user zed", False),
        ("user nobody: allow", False),
        ("group nogroup", True),
        ("group root", True),
        ("user nobody.nogroup", True),
        ("user zed.root", True),
        ("user root.nogroup", True),
        ("user root.nogroup: group root", True),
        ("group nogroup: user root", True),
        ("user root.root: user nobody.nogroup", True),
        ("group nogroup: user nobody", False),
        ("user root: user nobody", False),
        ("user nobody.nogroup: group nogroup", False),  # root is gone: setgroups fails
        ("user nobody.nogroup: user nobody.nogroup", False),
        ("user nobody.nogroup: user root.root", False),
        ("user nobody.nogroup: spawn x", True),
        ("spawn x: user nobody: allow", False),
    ],
)
def test_credentials_decide_as_tcpdmatch_run_as_root(options: str, allowed: bool) -> None:
    assert granted(options) is allowed


def test_a_failing_option_denies_in_hosts_allow_and_says_why() -> None:
    p = parse("sshd: 10.0.0.1: user nobody\n", "ALL: ALL: allow\n")
    d = decide(p, "sshd", Peer.parse("10.0.0.1"))
    assert not d.allowed and d.rule is p.rules[0]
    assert p.rules[0].options[0].fails == (
        "Debian's libwrap gives up root before initgroups(3), which then fails with EPERM"
        " (user.group keeps it working)")
    assert decide(p, "sshd", Peer.parse("10.0.0.2")).allowed  # only the clients it matches


@pytest.mark.parametrize(
    "text, base, signed, value",
    [
        ("5", 10, True, 5), (" \t+5", 10, True, 5), ("-5", 10, True, -5), ("5x", 10, True, None),
        ("5 ", 10, True, None), ("", 10, True, None), ("-", 10, True, None), ("0x10", 10, True, None),
        ("2147483647", 10, True, 2147483647), ("2147483648", 10, True, -2147483648),
        ("4294967296", 10, True, 0), ("4294967297", 10, True, 1), ("9223372036854775808", 10, True, -1),
        ("-9223372036854775809", 10, True, 0), ("-4294967296", 10, True, 0),
        ("777", 8, False, 0o777), ("8", 8, False, None), ("-0", 8, False, 0), ("-1", 8, False, 0xFFFFFFFF),
        ("40000000000", 8, False, 0), ("40000000777", 8, False, 0o777), ("-40000000000", 8, False, 0),
        ("2000000000000000000000", 8, False, 0xFFFFFFFF), ("\u0665", 10, True, None),
    ],
)
def test_scanf_int_reads_as_glibc_sscanf_stores(text: str, base: int, signed: bool, value: int | None) -> None:
    assert scanf_int(text, base, signed) == value


@given(st.integers(-(1 << 70), 1 << 70))
def test_scanf_int_is_c_truncation_of_the_saturated_long(n: int) -> None:
    long_ = max(-(1 << 63), min((1 << 63) - 1, n))
    want = (long_ & 0xFFFFFFFF) - ((long_ & 0x80000000) << 1)
    assert scanf_int(str(n), 10, True) == want


def test_lint_warns_of_an_option_that_always_fails() -> None:
    p = parse("sshd: 10.0.0.1: user nobody: allow\n")
    assert [str(d) for d in lint(p)] == [
        "hosts.allow:1:17: warning: libwrap always fails on option 'user nobody', so this rule denies every"
        " client it matches: Debian's libwrap gives up root before initgroups(3), which then fails with EPERM"
        " (user.group keeps it working)"]
