"""hosts.allow / hosts.deny → IR (policy/hostsaccess.py), decided by the engine.

Files arrive through an injected ``read`` (a dictionary here). Decisions on the shipped
sample (tests/data/hosts_access) are the ones Debian's tcpdmatch gives; the kernel/oracle
test re-checks that sample against tcpdmatch itself."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.bpf.program import compile_service
from sockgate.decide import decide
from sockgate.errors import PolicyError
from sockgate.export import export
from sockgate.peers import Peer
from sockgate.policy import hostmatch
from sockgate.policy.hostsaccess import parse_hosts_access
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    AnyOf,
    DaemonPattern,
    Endpoint,
    Except,
    HostClass,
    HostPattern,
    MatchAll,
    MatchNone,
    Policy,
    UserAt,
)
from sockgate.policy.lint import lint
from sockgate.policy.printer import format_policy

DATA = Path(__file__).parent.parent / "data" / "hosts_access"

# (service, client, allowed, file:line of the deciding rule), as tcpdmatch decides them
SAMPLE_CASES = [
    (c["service"], c["client"], c["allowed"], c["rule"])
    for c in json.loads((DATA / "cases.json").read_text())
]


def reader(files: dict[str, str]) -> Callable[[str], str]:
    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return files[path]

    return read


def parse(allow: str = "", deny: str = "", **extra: str) -> Policy:
    files = {"hosts.allow": allow, "hosts.deny": deny, **{"/" + k: v for k, v in extra.items()}}
    return parse_hosts_access("hosts.allow", "hosts.deny", read=reader(files))


def errors(allow: str = "", deny: str = "", **extra: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse(allow, deny, **extra)
    return [str(d) for d in e.value.diagnostics]


def ok(policy: Policy, client: str, service: str = "sshd", **kw: object) -> bool:
    return decide(policy, service, Peer.parse(client, **kw)).allowed


def sample() -> Policy:
    read = lambda p: (DATA / Path(p).name).read_text()  # noqa: E731
    return parse_hosts_access("hosts.allow", "hosts.deny", read=read)


@pytest.mark.parametrize("service, client, allowed, where", SAMPLE_CASES)
def test_sample_decisions(service: str, client: str, allowed: bool, where: str) -> None:
    d = decide(sample(), service, Peer.parse(client))
    assert d.allowed is allowed
    assert d.rule is not None
    assert f"{d.rule.span.file}:{d.rule.span.line}" == where


def test_sample_shape() -> None:
    p = sample()
    assert p.kind == "hosts_access" and p.fallback is Action.ALLOW
    assert p.sources == ("hosts.allow", "hosts.deny")
    assert [r.action for r in p.rules] == [Action.ALLOW] * 4 + [Action.DENY] * 2 + [Action.ALLOW, Action.DENY]
    first = p.rules[0]
    assert first.text == "sshd, in.ftpd : 192.0.2.0/255.255.255.0 EXCEPT 192.0.2.66 EXCEPT 192.0.2.128/25"
    assert first.daemons == AnyOf((DaemonPattern("sshd"), DaemonPattern("in.ftpd")))
    assert first.match == Except(
        AddrMatch((ipaddress.ip_network("192.0.2.0/24"),), "192.0.2.0/255.255.255.0"),
        Except(
            AddrMatch((ipaddress.ip_network("192.0.2.66/32"),), "192.0.2.66"),
            AddrMatch((ipaddress.ip_network("192.0.2.128/25"),), "192.0.2.128/25"),
        ),
    )
    spawn = p.rules[3].options[0]
    assert (spawn.name, spawn.value) == ("spawn", "(/usr/bin/logger ftp %a) &")
    assert [o.name for o in p.rules[4].options] == ["severity", "deny"]


def test_no_files_grant_everything() -> None:
    p = parse_hosts_access("nope.allow", "nope.deny", read=reader({}))
    assert p.rules == () and p.sources == ()
    assert ok(p, "192.0.2.1")


def test_search_order_allow_then_deny_first_match() -> None:
    p = parse("sshd: 192.0.2.1\n", "ALL: 192.0.2.0/24\nALL: ALL : allow\n")
    assert ok(p, "192.0.2.1")
    assert not ok(p, "192.0.2.2")
    assert ok(p, "10.0.0.1")  # hosts.deny line 2 says allow


def test_comments_continuations_and_separators() -> None:
    p = parse("# ALL: ALL : deny\nsshd,in.ftpd\tvsftpd,:\\\n 192.0.2.1,,198.51.100.1\n\n", "ALL: ALL\n")
    assert [r.span.line for r in p.rules] == [2, 1]
    assert ok(p, "198.51.100.1", "vsftpd")
    assert not ok(p, "198.51.100.2", "vsftpd")
    # '#' is a comment only in the first column; elsewhere it is an ordinary word
    assert not ok(parse("", "ALL: 1.2.3.5 #x 1.2.3.4\n"), "1.2.3.4")


def test_except_nests_to_the_right() -> None:
    p = parse("", "ALL: a EXCEPT b EXCEPT c\n")
    assert p.rules[0].match == Except(
        HostPattern("a", True), Except(HostPattern("b", True), HostPattern("c", True))
    )
    d = parse("", "ALL EXCEPT sshd EXCEPT SSHD: ALL\n").rules[0].daemons
    assert d == Except(MatchAll(), Except(DaemonPattern("sshd"), DaemonPattern("SSHD")))
    assert not ok(parse("", "ALL EXCEPT sshd EXCEPT SSHD: ALL\n"), "1.2.3.4")


@pytest.mark.parametrize(
    "token, node",
    [
        ("ALL", MatchAll()),
        ("known", HostClass("KNOWN")),
        ("LOCAL", HostClass("LOCAL")),
        ("Unknown", HostClass("UNKNOWN")),
        ("PARANOID", HostClass("PARANOID")),
        ("192.0.2.1", AddrMatch((ipaddress.ip_network("192.0.2.1/32"),), "192.0.2.1")),
        ("192.0.", AddrMatch((ipaddress.ip_network("192.0.0.0/16"),), "192.0.")),
        ("192.00.", AddrMatch((), "192.00.")),  # never equal to an address text
        ("192.0.2.1/24", AddrMatch((), "192.0.2.1/24")),  # host bits set: never matches
        ("192.0.2.0/24", AddrMatch((ipaddress.ip_network("192.0.2.0/24"),), "192.0.2.0/24")),
        ("10.0.0.0/255.0.0.0", AddrMatch((ipaddress.ip_network("10.0.0.0/8"),), "10.0.0.0/255.0.0.0")),
        ("[2001:db8::1]/32", AddrMatch((ipaddress.ip_network("2001:db8::/32"),), "[2001:db8::1]/32")),
        ("[2001:DB8::1]", AddrMatch((ipaddress.ip_network("2001:db8::1/128"),), "[2001:DB8::1]")),
        (".example.com", HostPattern(".example.com", True)),
        ("host.example.com", HostPattern("host.example.com", True)),
        ("192.0.2.*", HostPattern("192.0.2.*", True)),
        (".1", HostPattern(".1", True)),
        ("bob@ALL", UserAt("bob", MatchAll())),
    ],
)
def test_client_patterns(token: str, node: object) -> None:
    assert parse("", f"ALL: {token}\n").rules[0].match == node


def test_mask_excludes_the_all_ones_address() -> None:
    m = parse("", "ALL: 0.0.0.0/0.0.0.0\n").rules[0].match
    assert isinstance(m, AddrMatch) and len(m.nets) == 32
    p = parse("", "ALL: 0.0.0.0/0.0.0.0\n")
    assert not ok(p, "10.1.2.3") and ok(p, "255.255.255.255") and ok(p, "2001:db8::1")


def test_daemon_at_host_and_user_at_host() -> None:
    p = parse("", "sshd@192.0.2.1: bob@ALL, KNOWN@10.0.0.0/8\n")
    r = p.rules[0]
    assert r.daemons == DaemonPattern("sshd", AddrMatch((ipaddress.ip_network("192.0.2.1/32"),), "192.0.2.1"))
    server = ipaddress.ip_address("192.0.2.1")
    assert not ok(p, "10.0.0.1", user="bob", server_address=server)  # bob@ALL matches
    assert ok(p, "10.0.0.1", user="bob")  # other server address: rule not selected
    assert ok(p, "172.16.0.1", server_address=server)  # no ident user: "unknown"
    assert not ok(p, "10.0.0.1", user="carol", server_address=server)


def test_colons_inside_brackets_do_not_split() -> None:
    p = parse("", "ALL: [::1] [2001:db8::]/32 : deny\n")
    assert not ok(p, "::1") and not ok(p, "2001:db8::9") and ok(p, "2001:db9::1")


def test_options_decide_and_are_kept() -> None:
    p = parse("ALL: 10.0.0.1 : spawn echo %h\\: %a : DENY\nALL: 10.0.0.2 : twist echo no\n",
              "ALL: 10.0.0.3 : setenv A b : allow\n")
    assert [r.action for r in p.rules] == [Action.DENY, Action.DENY, Action.ALLOW]
    assert [(o.name, o.value) for o in p.rules[0].options] == [("spawn", "echo %h: %a"), ("deny", "")]
    assert ok(p, "10.0.0.3") and not ok(p, "10.0.0.1") and not ok(p, "10.0.0.2")


def test_pattern_files() -> None:
    p = parse("", "ALL: /nets EXCEPT /missing\nALL: /empty\n", nets="10.0.0.0/8\n 192.0.2.1 [2001:db8::1]\n", empty="")
    assert p.sources == ("hosts.allow", "hosts.deny", "/nets", "/empty")
    assert not ok(p, "10.1.1.1") and not ok(p, "2001:db8::1") and ok(p, "192.0.2.2")
    assert p.rules[1].match == MatchNone()


@pytest.mark.parametrize(
    "deny, extra, message",
    [
        ("sshd 192.0.2.1\n", {}, "hosts.deny:1:1: missing ':' between the daemon list and the client list"
         " (libwrap skips this line)"),
        ("  # indented comment\n", {}, "hosts.deny:1:3: missing ':' between the daemon list and the"
         " client list (libwrap skips this line)"),
        ("ALL:\n", {}, "hosts.deny:1:4: expected a client pattern, found nothing"),
        (": ALL\n", {}, "hosts.deny:1:1: expected a daemon pattern, found nothing"),
        ("ALL: EXCEPT x\n", {}, "hosts.deny:1:6: expected a client pattern, found EXCEPT"),
        ("ALL: x EXCEPT\n", {}, "hosts.deny:1:8: expected a client pattern after EXCEPT, found nothing"),
        ("ALL: ALL: bogus\n", {}, "hosts.deny:1:11: unknown option 'bogus': expected one of aclexec, allow,"
         " banners, deny, group, keepalive, linger, nice, rfc931, setenv, severity, spawn, twist, umask, user"),
        ("ALL: ALL: allow: spawn x\n", {}, "hosts.deny:1:11: option 'allow' must be the last option"
         " (libwrap denies every client this rule matches)"),
        ("ALL: ALL:\n", {}, "hosts.deny:1:10: empty option (libwrap denies every client this rule matches)"),
        ("ALL: ALL: spawn\n", {}, "hosts.deny:1:11: option 'spawn' needs a value (libwrap denies every"
         " client this rule matches)"),
        ("ALL: ALL: keepalive 1\n", {}, "hosts.deny:1:11: option 'keepalive' takes no value, found '1'"
         " (libwrap denies every client this rule matches)"),
        ("ALL: ALL: umask 999\n", {}, "hosts.deny:1:11: bad umask value '999': expected an octal mask up to"
         " 777 (libwrap denies every client this rule matches)"),
        ("ALL: 1.2.3.0/33\n", {}, "hosts.deny:1:6: bad netmask '33' in '1.2.3.0/33': expected a"
         " dotted-quad mask (not 255.255.255.255) or a prefix length 1-32"),
        ("ALL: [2001:db8::]/129\n", {}, "hosts.deny:1:6: bad prefix length '129' in '[2001:db8::]/129':"
         " expected 0-128"),
        ("ALL: 1.2.3/24\n", {}, "hosts.deny:1:6: bad net/mask '1.2.3/24': expected n.n.n.n/m.m.m.m,"
         " n.n.n.n/len or [ipv6]/len"),
        ("ALL: [1.2.3.4]\n", {}, "hosts.deny:1:6: expected an IPv6 address inside [], found '1.2.3.4'"),
        ("ALL: @staff\n", {}, "hosts.deny:1:6: NIS netgroups are not supported: '@staff'"),
        ("ALL: bob@\n", {}, "hosts.deny:1:6: expected a host after '@' in 'bob@'"),
        ("ALL: ALL", {}, "hosts.deny:1:9: missing newline at end of file (libwrap rejects this line and"
         " stops reading the file)"),
        ("ALL: /loop\n", {"loop": "1.2.3.4 /loop"}, "/loop:1:9: pattern file /loop includes itself"),
    ],
)
def test_error_messages(deny: str, extra: dict[str, str], message: str) -> None:
    assert errors("", deny, **extra) == [message]


def test_several_errors_are_reported_in_order() -> None:
    got = errors("ALL: ALL: nice x\n", "x\nALL: 1.2.3.4/0\n")
    assert [g.split(":")[0:2] for g in got] == [["hosts.allow", "1"], ["hosts.deny", "1"], ["hosts.deny", "2"]]


def test_unreadable_pattern_file_is_an_error() -> None:
    def read(path: str) -> str:
        if path == "/secret":
            raise PermissionError(13, "Permission denied", path)
        return {"hosts.allow": "", "hosts.deny": "ALL: /secret\n"}[path]

    with pytest.raises(PolicyError) as e:
        parse_hosts_access("hosts.allow", "hosts.deny", read=read)
    assert str(e.value) == "hosts.deny:1:6: cannot read pattern file /secret: Permission denied"


@settings(max_examples=300)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 2), st.lists(st.integers(0, 2**32 - 1), max_size=8))
def test_net_mask_model_equals_libwrap_masked_match(net: int, mask: int, addrs: list[int]) -> None:
    """AddrMatch (or the fallback pattern) decides exactly as libwrap's (addr & mask) == net."""
    if net == 0xFFFFFFFF:
        net = 0
    tok = f"{ipaddress.IPv4Address(net)}/{ipaddress.IPv4Address(mask)}"
    p = parse("", f"ALL: {tok}\n")
    for a in addrs + [net, net | ~mask & 0xFFFFFFFF, 0xFFFFFFFF]:
        text = str(ipaddress.IPv4Address(a))
        assert (not ok(p, text)) is hostmatch.masked_match(*tok.split("/"), text)


@settings(max_examples=200)
@given(st.text(alphabet="0123456789.", min_size=1, max_size=12), st.integers(0, 2**32 - 1))
def test_digit_patterns_equal_libwrap_string_match(tok: str, a: int) -> None:
    text = str(ipaddress.IPv4Address(a))
    p = parse("", f"ALL: {tok}\n")
    want = hostmatch.string_match(tok, text)
    assert (not ok(p, text)) is want


@settings(max_examples=300)
@given(st.text(alphabet="ALEXCPTsd:, \t\\\n#[]/@.01*?", max_size=60))
def test_parser_raises_nothing_but_policy_error(text: str) -> None:
    try:
        parse(text, "")
    except PolicyError:
        pass


# ---------------------------------------------------------------------------------------------
# Bytes libwrap's reader mangles (wraplines.py): refused with their place, never decided


@pytest.mark.parametrize(
    "deny, message",
    [
        ("ALL: ALL\0\n", "hosts.deny:1:9: NUL byte in the line (libwrap ends the line there and runs the"
         " next line into it)"),
        ("ALL: 10.0.0.2\0\nALL: ALL\n", "hosts.deny:1:14: NUL byte in the line (libwrap ends the line"
         " there and runs the next line into it)"),
        ("#\0\nALL: ALL\n", "hosts.deny:1:2: NUL byte in the line (libwrap ends the line there and runs the"
         " next line into it)"),
        ("ALL:" + " " * 2040 + "ALL\n" + "ALL: ALL\n", "hosts.deny:1:2048: line longer than libwrap's"
         " 2047-byte line buffer (libwrap rejects this line and stops reading the file)"),
        ("ALL: \\\n" + " " * 2039 + "ALL\n", "hosts.deny:2:2043: line longer than libwrap's 2047-byte"
         " line buffer (libwrap rejects this line and stops reading the file)"),
        ("# " + "\u00e9" * 1023 + "\n", "hosts.deny:1:1025: line longer than libwrap's 2047-byte line buffer"
         " (libwrap rejects this line and stops reading the file)"),
    ],
)
def test_nul_and_overlong_lines_are_refused(deny: str, message: str) -> None:
    assert errors("", deny) == [message]


def test_longest_line_libwrap_reads_is_accepted() -> None:
    """2,047 bytes with the newline (tcpdmatch: 2,048 is "line too long"), counted in bytes."""
    assert not ok(parse("", "ALL:" + " " * 2039 + "ALL\n"), "10.0.0.1")
    assert not ok(parse("", "ALL: \\\n" + " " * 2038 + "ALL\n"), "10.0.0.1")
    assert not ok(parse("", "ALL: ALL  # " + "\u00e9" * 1017 + "\n"), "10.0.0.1")


def test_nul_in_a_pattern_file_and_overlong_words_are_refused() -> None:
    assert errors("", "ALL: /p\n", p="10.0.0.1\0x 10.0.0.2\n") == [
        "/p:1:9: NUL byte in a pattern file (libwrap compares the word only up to it)"]
    assert errors("", "ALL: /p\n", p="10.0.0.1\n  " + "a" * 8192 + "\n") == [
        "/p:2:3: word longer than libwrap's 8191-byte buffer for pattern file words"]
    assert not ok(parse("", "ALL: /p\n", p="a" * 8191 + "\n10.0.0.1\n"), "10.0.0.1")


@pytest.mark.parametrize(
    "deny, client, denied",
    [
        ("ALL:\t10.0.0.1\n", "10.0.0.1", True),  # tab and CR separate list items (strtok)
        ("ALL: 10.0.0.9\r10.0.0.1\r\n", "10.0.0.1", True),
        ("ALL\r: 10.0.0.1\n", "10.0.0.1", True),
        ("ALL: 10.0.0.1 \\\r\n", "10.0.0.1", True),  # "\\\r" is no continuation
        ("ALL:\v10.0.0.1\n", "10.0.0.1", False),  # \v and \f are ordinary characters
        ("ALL:\f10.0.0.1\n", "10.0.0.1", False),
        ("ALL: \u00e9, 10.0.0.1\n", "10.0.0.1", True),
        ("ALL: \udcff10.0.0.1\n", "10.0.0.1", False),
    ],
)
def test_cr_tab_and_high_bytes_are_ordinary(deny: str, client: str, denied: bool) -> None:
    assert (not ok(parse("", deny), client)) is denied


@pytest.mark.parametrize("token", ["parano\u0131d", "PARANO\u0131D", "\u212anown", "a\u212a\u212a"])
def test_keywords_compare_ascii_only(token: str) -> None:
    """strcasecmp folds ASCII letters only: dotless i is no 'I', KELVIN SIGN no 'k'."""
    m = parse("", f"ALL: {token}\n").rules[0].match
    assert m == HostPattern(token, True)
    p = parse(f"sshd: {token}\n", "ALL: ALL\n")
    assert not ok(p, "10.0.0.1", name="host.example", name_verified=False)  # a PARANOID client


@pytest.mark.parametrize(
    "deny",
    ["ALL: ALL: \u212aeepalive\n", "ALL: ALL: nice \u0665\n", "ALL: ALL: severity \u212aern.info\n",
     "ALL: 10.0.0.0/\u0662\u0664\n"],
)
def test_options_and_numbers_are_ascii_only(deny: str) -> None:
    """Non-ASCII letters and digits are what libwrap rejects (options) or cannot parse (a /len
    matches nothing then, and sockgate refuses it); they never pass for ASCII ones."""
    assert len(errors("", deny)) == 1


# ---------------------------------------------------------------------------------------------
# Nesting: bounded, as the native parser bounds it, and reported where it goes too deep


def _excepts(n: int) -> str:
    return " EXCEPT ".join(f"10.0.{i // 250}.{i % 250}" for i in range(n + 1))


def test_except_nesting_is_capped_with_its_place() -> None:
    assert len(parse("", f"ALL: {_excepts(32)}\n").rules) == 1
    line = f"ALL: {_excepts(33)}\n"
    col = line.index("EXCEPT", line.index("10.0.0.32")) + 1
    assert errors("", line) == [f"hosts.deny:1:{col}: a list nests EXCEPT more than 32 deep"]
    daemons = " EXCEPT ".join(["sshd"] * 34)
    assert errors("", f"{daemons}: ALL\n")[0].endswith("a list nests EXCEPT more than 32 deep")


def test_five_hundred_excepts_are_an_error_not_a_crash() -> None:
    """The reported case: ~500 chained EXCEPTs (continued over many lines) raised
    RecursionError; now they are refused with the place of the first EXCEPT too many."""
    body = " \\\n".join(f"x{i} EXCEPT" for i in range(500)) + " y\n"
    got = errors("", "ALL: " + body)
    assert "hosts.deny:33:5: a list nests EXCEPT more than 32 deep" in got


def test_pattern_file_nesting_is_capped() -> None:
    files = {f"f{i}": f"/f{i + 1}\n" for i in range(40)}
    got = errors("", "ALL: /f0\n", **files)
    assert got == ["/f15:1:1: pattern files nest more than 16 deep"]
    files = {f"f{i}": f"/f{i + 1}\n" for i in range(15)}
    assert parse("", "ALL: /f0\n", **files).rules[0].match == MatchNone()


def _frames() -> int:
    f, n = sys._getframe(), 0
    while f is not None:
        f, n = f.f_back, n + 1
    return n


def _with_headroom(frames: int, fn: Callable[[], object]) -> object:
    """Call ``fn`` with only ``frames`` stack frames left before RecursionError."""
    if sys.getrecursionlimit() - _frames() <= frames:
        return fn()
    return _with_headroom(frames, fn)


def test_deepest_accepted_policy_goes_through_every_consumer() -> None:
    """32 EXCEPTs in both lists, lists of two at each level, /file lists nested 16 deep: the
    deepest tree the parser lets through; every pure walk over it needs < 250 frames."""
    files = {f"f{i}": f"10.9.{i}.0/24 /f{i + 1}\n" for i in range(15)}
    daemons = " EXCEPT ".join(["ALL", "sshd x"] + ["in.ftpd y", "sshd z"] * 15)
    clients = " EXCEPT ".join([f"10.0.0.0/8 10.{i}.1.0/24" for i in range(32)] + ["/f0 10.99.0.1"])
    p = parse(f"{daemons}: {clients}\n", "ALL: ALL\n", **files)
    service = p.service("vsftpd")
    peer = Peer.parse("10.9.3.1")
    _with_headroom(250, lambda: decide(p, "vsftpd", peer))
    _with_headroom(250, lambda: lint(p))
    _with_headroom(250, lambda: format_policy(p))
    _with_headroom(250, lambda: compile_service(service))
    _with_headroom(250, lambda: export(p, "nft", mapped={"vsftpd": (Endpoint("tcp", ((21, 21),)),)}))


def test_nul_in_a_pattern_file_name_is_reported_not_opened() -> None:
    def read(path: str) -> str:
        if "\0" in path:
            raise ValueError("embedded null byte")  # what open() and os.stat() raise
        return {"hosts.allow": "", "hosts.deny": "ALL: /p\0x\n"}[path]

    with pytest.raises(PolicyError) as e:
        parse_hosts_access("hosts.allow", "hosts.deny", read=read)
    assert str(e.value).startswith("hosts.deny:1:8: NUL byte in the line")


def test_options_are_trimmed_as_chop_string_trims() -> None:
    """libwrap trims each option with isspace(), so \\v and \\f around it are white space
    (tcpdmatch grants all three), and sscanf skips them before a number."""
    for deny in ("ALL: 10.0.0.1 : allow\v\n", "ALL: 10.0.0.1 : \fallow\n", "ALL: 10.0.0.1 : nice \v5 : allow\n"):
        assert ok(parse("", deny), "10.0.0.1")


@pytest.mark.timeout(30)
def test_pattern_file_expansion_is_bounded() -> None:
    """Files naming files many times grow as a power of the nesting: bounded, with the place
    where the bound was passed, and no file's problems repeated for each time it is named."""
    a, b = " ".join(["/b"] * 1000) + "\n", " ".join(["/c"] * 1000) + "\n"
    got = errors("", "ALL: /a\n", a=a, b=b, c="10.0.0.1 10.0.0.2\n")
    assert len(got) == 1 and got[0].endswith("pattern files expand to more than 1,000,000 patterns in all"
                                             " (a file named n times counts n times)")
    assert errors("", "ALL: /p /p /p\n", p="1.2.3/24\n") == [
        "/p:1:1: bad net/mask '1.2.3/24': expected n.n.n.n/m.m.m.m, n.n.n.n/len or [ipv6]/len"]


@pytest.mark.parametrize(
    ("deny", "extra"),
    [
        ("ALL: 1.2.3.4/" + "x" * 24 + "SECRET\n", {}),  # a long word is cut
        ("ALL: 1.2.3.4/33 SECRET\n", {}),  # nothing after the culprit
        ("ALL: ALL: umask " + "7" * 24 + "SECRET\n", {}),
        ("ALL: ALL: nice xx : spawn SECRET\n", {}),
        ("ALL: /shadow\n", {"shadow": "[::1%x] SECRET\nroot:$6$" + "x" * 24 + "SECRET:19000:0:99999:7:::\n"}),
    ],
)
def test_errors_quote_the_culprit_only_never_the_rest_of_a_foreign_line(deny: str, extra: dict[str, str]) -> None:
    files = {"hosts.allow": "", "hosts.deny": deny, **{"/" + k: v for k, v in extra.items()}}
    with pytest.raises(PolicyError) as e:
        parse_hosts_access("hosts.allow", "hosts.deny", read=reader(files))
    for d in e.value.diagnostics:
        assert d.span is not None
        shown = d.render(files[d.span.file])
        assert "SECRET" not in shown, shown
