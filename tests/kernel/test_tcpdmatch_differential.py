"""Differential test: sockgate's hosts_access decisions against Debian's real ``tcpdmatch``.

Hypothesis writes random hosts.allow / hosts.deny pairs (EXCEPT nesting in daemon and client
lists, net/mask with canonical and non-canonical nets and non-contiguous masks, ``/len``,
``n.n.n.`` prefixes, wildcards, ``[v6]`` and ``[v6]/len``, ``/file`` pattern files, KNOWN,
UNKNOWN, LOCAL, PARANOID, ``user@host``, ``daemon@host``, options including ``allow`` /
``deny`` / ``twist``, comments and continuations, and the bytes libwrap's reader treats
specially or not at all: tabs and CRs (as separators, before the newline, after a backslash),
``\\v`` and ``\\f``, bytes >= 0x80 (valid UTF-8 or not, Kelvin signs and dotless i that
Unicode would fold to ASCII), and NUL bytes, which must be refused with their place) and a
few clients: IPv4, IPv6 and
IPv4-mapped addresses, the name ``localhost`` and tcpdmatch's ``unknown`` / ``paranoid``,
optionally with an ident user and a server address. Each case runs ``tcpdmatch -d`` for real
in a temporary directory; the peer given to the engine is built from what tcpdmatch printed
it saw (its own name lookups included), and the decisions must be equal.

An address client gets no name lookup in tcpdmatch (it simulates a failed lookup), and
``localhost`` is resolved through /etc/hosts, so the test needs no network. Files are written
and read back as bytes (``read_exact``), so what is compared is the parser's reading of every
byte; ``test_loader_keeps_every_byte`` checks that the loader the CLI uses hands it those bytes.
Line length is checked on its own against tcpdmatch, where its effect can be observed.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.decide import decide, decide_service
from sockgate.errors import PolicyError
from sockgate.loading import SystemAccounts, load_policy, read_text
from sockgate.peers import Peer
from sockgate.policy.hostmatch import addr_text
from sockgate.policy.hostsaccess import parse_hosts_access
from sockgate.policy.ir import Policy
from sockgate.resolve.kernelpart import assume_unlearned

TCPDMATCH = shutil.which("tcpdmatch") or "/usr/sbin/tcpdmatch"
pytestmark = [
    pytest.mark.skipif(not os.access(TCPDMATCH, os.X_OK), reason="needs tcpdmatch (Debian tcpd)"),
    pytest.mark.slow,
]
EXAMPLES = int(os.environ.get("SOCKGATE_TCPDMATCH_EXAMPLES", "400"))
MIN_DECISIONS = 1000
COMPARED: list[int] = []

V4 = ["192.0.2.1", "192.0.2.7", "192.0.2.130", "198.51.100.1", "198.51.100.255", "10.0.0.1",
      "10.1.2.3", "10.255.255.254", "127.0.0.1", "172.16.5.1", "255.255.255.255", "1.2.3.4"]
V6 = ["2001:db8::1", "2001:db8::7", "2001:db8:1::1", "2001:db8:ffff::1", "fe80::1", "::1",
      "fd5b:5347::2", "::102:304", "2001:db8:0:0:1::1"]
MAPPED = ["::ffff:192.0.2.1", "::ffff:10.0.0.1"]
NAMES = ["localhost", "LOCALHOST", "vm", ".localdomain", "local*", "*host", "loc.", "localhost.",
         ".0.1", ".1", ".7", ".255", "unknown", "paranoid", "*", "?", "u*", "*n*", "p*"]
# Bytes >= 0x80 (as read with surrogateescape: \udcXX is an undecodable byte) and C white space
# that is no list separator; \u0131 and \u212a fold to ASCII in Unicode, never in strcasecmp.
ODD = ["h\u00e9st", "\u00e9*", "*\u00e9", "\udcff", "loc\udcffalhost", "\u212anown", "parano\u0131d",
       "PARANO\u0131D", "LOCAL\u00e9", "10.0.0.\u0661", "\u00e9.", ".\u00e9", "local\vhost", "\f10.0.0.1",
       "localhost\udcc3", "*\udcc3*", "\u00e9@ALL", "ALL@\u00e9"]
DAEMONS = ["ALL", "sshd", "SSHD", "in.ftpd", "in.", "*d", "ssh?", "KNOWN", "vsftpd", ".ftpd",
           "unknown", "s*", "ssh\u00e9", "\u212aNOWN", "sshd\udcff", "\u00e9*"]
ITEM_SEPS = [", ", " ", ",", " \\\n  ", "\t", "\r", " \r", "\t,", ",\r\t", "\t\\\n\t"]
COLONS = [": ", ":", " : ", ":\t", "\t:", ":\r ", "\r:\t"]
INDENTS = ["", "", "", " ", "\t", "\r", "\t\t", "\v"]
COMMENTS = ["comment", "ALL: ALL", "x: y: deny", "caf\u00e9\r", "\udcff\udcfe", "\t\\"]
SERVICES = ["sshd", "in.ftpd", "vsftpd", "unknown"]
USERS = ["ALL", "KNOWN", "UNKNOWN", "bob", "b*", "BOB", "alice", "?ob"]
OPTIONS = [[], [], [], ["allow"], ["deny"], ["ALLOW"], ["spawn echo %a"], ["severity auth.info", "deny"],
           ["twist echo x"], ["banners /tmp", "allow"], ["setenv X y"], ["keepalive"],
           ["rfc931 5", "deny"], ["nice 5", "allow"], ["spawn a\\: b", "deny"], ["umask 022"],
           ["linger 0", "allow"],
           # user/group run for real in tcpdmatch (as root here): Debian's "user U" gives up
           # root before initgroups and fails unless U is uid 0; "user U.G" drops root for good
           ["user root"], ["user nobody"], ["user daemon", "allow"], ["user nobody.nogroup", "allow"],
           ["group nogroup"], ["group root", "user daemon.daemon"], ["user nobody.nogroup", "group nogroup"],
           ["user root.root", "user nobody.nogroup", "deny"], ["user daemon.root", "user root"],
           ["user nosuchuserxx"], ["spawn x", "user nosuchuserxx", "allow"], ["group nosuchgroupxx"],
           ["user nobody.nosuchgroupxx", "deny"], ["user nosuchuserxx.nogroup"], ["linger 2147483648"],
           ["setenv A=b c", "allow"], ["rfc931 4294967296"], ["umask 40000000022"]]
# Options sockgate refuses at load because libwrap always fails on them (and so denies every
# client the rule matches); "user nobody" is one libwrap fails on that sockgate accepts, and
# decides deny for: the files with one for the other must decide as tcpdmatch on the originals.
ALWAYS_FAIL = ["user nosuchuserxx.nogroup", "user nosuchuserxx", "group nosuchgroupxx",
               "user nobody.nosuchgroupxx", "linger 2147483648", "setenv A=b c", "rfc931 4294967296"]


def _case(s: str, draw: st.DrawFn) -> str:
    return draw(st.sampled_from([s, s.upper(), s.lower(), s.title()]))


@st.composite
def v4_net(draw: st.DrawFn) -> str:
    a = int(ipaddress.IPv4Address(draw(st.sampled_from(V4))))
    plen = draw(st.integers(0, 32))
    mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
    kind = draw(st.sampled_from(["len", "dotted", "noncontig", "odd"]))
    if kind == "noncontig":
        mask = draw(st.integers(0, 0xFFFFFFFE)) | mask & 0xFF000000
    canonical = draw(st.booleans())
    net = a & mask if canonical else a
    if net == 0xFFFFFFFF:  # libwrap cannot parse it as a net; sockgate rejects it
        net = 0xFFFFFFFE
    net_s = str(ipaddress.IPv4Address(net))
    if draw(st.integers(0, 9)) == 0:
        net_s = ".".join(f"0{int(p):o}" if i == 0 else p for i, p in enumerate(net_s.split(".")))
    if kind == "len" and 1 <= plen <= 32:
        return f"{net_s}/{plen}"
    if kind == "odd" and 1 <= plen <= 32:
        return f"{net_s}/" + draw(st.sampled_from([f"0{plen}", f"+{plen}", f"{plen}x", f"{plen}.0"]))
    if mask == 0xFFFFFFFF:
        mask = 0xFFFFFFFE
    return f"{net_s}/{ipaddress.IPv4Address(mask)}"


@st.composite
def v6_pattern(draw: st.DrawFn) -> str:
    a = draw(st.sampled_from(V6 + ["2001:db8::", "fe80::"]))
    text = _case(a, draw)
    if draw(st.booleans()):
        return f"[{text}]"
    return f"[{text}]/" + draw(st.sampled_from(["0", "1", "16", "32", "48", "64", "96", "112", "120",
                                                "127", "128", "", "064", "64x"]))


@st.composite
def wildcard(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(V4 + V6 + ["localhost", "unknown", "paranoid"]))
    i = draw(st.integers(0, len(base)))
    j = draw(st.integers(i, len(base)))
    out = base[:i] + draw(st.sampled_from(["*", "?", "?*", "*?"])) + base[j:]
    if ":" in out:
        out = draw(st.sampled_from(["2001*", "*db8*", "fe80*", "*::1", "*1"])).replace("::", "*")
    return _case(out, draw)


@st.composite
def v4_text(draw: st.DrawFn) -> str:
    a = draw(st.sampled_from(V4)).split(".")
    k = draw(st.integers(1, 4))
    if draw(st.integers(0, 7)) == 0:
        a[0] = "0" + a[0]
    return ".".join(a) if k == 4 else ".".join(a[:k]) + "."


def host_token(files: dict[str, str], depth: int = 0) -> st.SearchStrategy[str]:
    base = st.one_of(
        st.sampled_from(["ALL", "KNOWN", "UNKNOWN", "LOCAL", "PARANOID", "all", "Known", "local"]),
        v4_text(),
        v4_net(),
        v6_pattern(),
        wildcard(),
        st.sampled_from(NAMES),
        st.sampled_from(ODD),
    )
    if depth > 0:
        return base
    return st.one_of(base, base, base, base, pattern_file(files))


@st.composite
def pattern_file(draw: st.DrawFn, files: dict[str, str]) -> str:
    name = f"/PATTERNS/list{len(files)}"
    if draw(st.integers(0, 5)) == 0:
        return name + ".missing"
    words = draw(st.lists(st.one_of(host_token(files, 1), st.sampled_from(V6 + V4)), min_size=0, max_size=4))
    text = ""
    for w in words:  # fscanf("%s") words: every C white space separates, CR and \v too
        text += w + draw(st.sampled_from([" ", "\n", "\t", "\r\n", " \v ", "\f"]))
    files[name] = text + "\n"
    return name


@st.composite
def client_item(draw: st.DrawFn, files: dict[str, str]) -> str:
    host = draw(host_token(files))
    if draw(st.integers(0, 6)) == 0:
        return draw(st.sampled_from(USERS)) + "@" + host
    return host


@st.composite
def daemon_item(draw: st.DrawFn, files: dict[str, str]) -> str:
    name = _case(draw(st.sampled_from(DAEMONS)), draw)
    if draw(st.integers(0, 8)) == 0:
        return name + "@" + draw(host_token(files, 1))
    return name


@st.composite
def pattern_list(draw: st.DrawFn, item: st.SearchStrategy[str], depth: int = 0) -> list[str]:
    head = draw(st.lists(item, min_size=1, max_size=3))
    if depth < 2 and draw(st.integers(0, 2)) == 0:
        return head + [_case("EXCEPT", draw)] + draw(pattern_list(item, depth + 1))
    return head


@st.composite
def rule_line(draw: st.DrawFn, files: dict[str, str]) -> str:
    daemons = draw(pattern_list(daemon_item(files)))
    clients = draw(pattern_list(client_item(files)))

    def join(items: list[str]) -> str:
        out = items[0]
        for it in items[1:]:
            out += draw(st.sampled_from(ITEM_SEPS)) + it
        return out

    indent = draw(st.sampled_from(INDENTS))
    line = indent + join(daemons) + draw(st.sampled_from(COLONS)) + join(clients)
    opts = draw(st.sampled_from(OPTIONS))
    if opts:
        line += draw(st.sampled_from([" : ", "\t:\t", ":\r"])) + ": ".join(opts)
    # the line's end: "\\\r" before the newline is no continuation, so only where a lone
    # backslash is a harmless client word
    return line + draw(st.sampled_from(["", "", "\r", " \t"] + ([] if opts else [" \\\r"])))


@st.composite
def table(draw: st.DrawFn, files: dict[str, str]) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        extra = draw(st.integers(0, 6))
        if extra == 0:
            lines.append("#" + draw(st.sampled_from(COMMENTS)))
        elif extra == 1:
            lines.append("")
        lines.append(draw(rule_line(files)))
    return "".join(line + "\n" for line in lines)


@st.composite
def client(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["v4", "v4", "v6", "v6", "mapped", "name", "unknown", "paranoid"]))
    if kind == "v4":
        c = draw(st.sampled_from(V4))
    elif kind == "v6":
        c = addr_text(ipaddress.IPv6Address(draw(st.sampled_from(V6))))
    elif kind == "mapped":
        c = draw(st.sampled_from(MAPPED))
    else:
        c = {"name": "localhost", "unknown": "unknown", "paranoid": "paranoid"}[kind]
    if kind not in ("unknown", "paranoid") and draw(st.integers(0, 4)) == 0:
        c = draw(st.sampled_from(["bob", "alice"])) + "@" + c
    return c


@st.composite
def case(draw: st.DrawFn) -> tuple[str, str, dict[str, str], list[str], list[str]]:
    files: dict[str, str] = {}
    allow = draw(table(files))
    deny = draw(table(files))
    if draw(st.integers(0, 11)) == 0:  # now and then a NUL byte somewhere in one of the files
        texts = [allow, deny] + list(files.values())
        k = draw(st.integers(0, len(texts) - 1))
        at = draw(st.integers(0, len(texts[k])))
        texts[k] = texts[k][:at] + "\0" + texts[k][at:]
        allow, deny = texts[:2]
        files = dict(zip(files, texts[2:]))
    services = draw(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=2, unique=True))
    server = draw(st.sampled_from([None, None, None, "192.0.2.1", "10.0.0.1", "2001:db8::1"]))
    if server is not None:
        services = [f"{s}@{server}" for s in services]
    clients = draw(st.lists(client(), min_size=2, max_size=3))
    return allow, deny, files, services, clients


@dataclass
class Seen:
    service: str
    server: str | None
    user: str | None
    name: str | None
    address: str | None
    access: str


def run_tcpdmatch(workdir: Path, services: list[str], clients: list[str]) -> list[list[Seen]]:
    """One shell runs every (service, client) pair; '@@' lines separate the runs."""
    script = "".join(f"echo @@; {TCPDMATCH} -d '{s}' '{c}' 2>&1\n" for s in services for c in clients)
    out = subprocess.run(["sh", "-c", script], cwd=workdir, capture_output=True, text=True,
                         errors="surrogateescape", timeout=60)
    runs = out.stdout.split("@@\n")[1:]
    pairs = [(s, c) for s in services for c in clients]
    assert len(runs) == len(pairs), out.stdout + out.stderr
    return [_parse_run(text, s, c) for text, (s, c) in zip(runs, pairs)]


def _parse_run(text: str, service: str, client_arg: str) -> list[Seen]:
    svc, _, server = service.partition("@")
    user = client_arg.split("@", 1)[0] if "@" in client_arg else None
    blocks, name, addr = [], None, None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if "warning" in line or "error" in line:
            raise AssertionError(f"tcpdmatch complained: {line}\n{text}")
        if key == "client" and words[0] == "hostname":
            name = words[1]
        elif key == "client" and words[0] == "address":
            addr = words[1]
        elif key == "access":
            blocks.append(Seen(svc, server or None, user, name, addr, words[0]))
            addr = None
    assert blocks, text
    return blocks


def engine_peer(seen: Seen) -> Peer:
    verified = seen.name is None or seen.name.lower() != "paranoid"
    name = None if seen.name is None or seen.name.lower() in ("unknown", "paranoid") else seen.name
    return Peer(
        address=ipaddress.ip_address(seen.address) if seen.address else None,
        name=name,
        name_verified=verified,
        user=seen.user,
        server_address=ipaddress.ip_address(seen.server) if seen.server else None,
    )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(case())
def test_decisions_agree_with_tcpdmatch(c: tuple[str, str, dict[str, str], list[str], list[str]]) -> None:
    allow, deny, files, services, clients = c
    with tempfile.TemporaryDirectory(prefix="sgt-tcpd-") as tmp:
        work = Path(tmp)
        (work / "PATTERNS").mkdir()
        fix = lambda s: s.replace("/PATTERNS/", f"{tmp}/PATTERNS/")  # noqa: E731
        texts = {fix(name): fix(text) for name, text in files.items()}
        texts |= {str(work / "hosts.allow"): fix(allow), str(work / "hosts.deny"): fix(deny)}
        for path, text in texts.items():
            Path(path).write_bytes(text.encode("utf-8", "surrogateescape"))
        try:
            policy = parse_hosts_access(str(work / "hosts.allow"), str(work / "hosts.deny"), read=read_exact,
                                        accounts=SystemAccounts())
        except PolicyError as e:
            if any("\0" in t for t in texts.values()):
                assert_refused_for_nul(e, texts)
                return
            policy = refused_for_failing_options(e, texts)
        assert not any("\0" in t for t in texts.values()), "a NUL byte was not refused"
        results = run_tcpdmatch(work, services, clients)
    n = 0
    for blocks in results:
        for seen in blocks:
            d = decide(policy, seen.service, engine_peer(seen))
            want = seen.access == "granted"
            assert d.allowed == want, (
                f"tcpdmatch: {seen.access} for {seen}\nsockgate: {d.action} ({d.reason})\n"
                f"--- hosts.allow\n{allow!r}\n--- hosts.deny\n{deny!r}\n--- files {files}"
            )
            assert_conservative_within(policy, seen, want)
            n += 1
    COMPARED.append(n)


def assert_conservative_within(policy: Policy, seen: Seen, granted: bool) -> None:
    """What the proxy and ``check`` decide (the ident user, when tcpdmatch was given none, and
    the server's name assumed to be whatever denies) never grants what tcpdmatch denies. It
    may deny where tcpdmatch grants (``decided is not service``: only for rules needing those
    facts; ``check`` then prints a ``note:``)."""
    service = policy.service(seen.service)
    decided = assume_unlearned(service, ident=seen.user is None, server_name=True)
    assert granted or not decide_service(decided, engine_peer(seen)).allowed, (seen, service)


def refused_for_failing_options(e: PolicyError, texts: dict[str, str]) -> Policy:
    """Only options libwrap always fails on are refused, each with its place; the policy
    with ``user nobody`` (which always fails too) in their stead."""
    for d in e.diagnostics:
        assert d.span is not None and d.message.endswith("(libwrap denies every client this rule matches)"), str(e)
        line = texts[d.span.file].split("\n")[d.span.line - 1]
        assert any(line[d.span.col - 1 :].startswith(o) for o in ALWAYS_FAIL), str(e)
    variant = dict(texts)
    for path in variant:
        for o in ALWAYS_FAIL:
            variant[path] = variant[path].replace(o, "user nobody")
    hosts = [p for p in variant if p.endswith(("hosts.allow", "hosts.deny"))]
    return parse_hosts_access(*sorted(hosts), read=lambda p: variant[p] if p in variant else read_exact(p),
                              accounts=SystemAccounts())


def read_exact(path: str) -> str:
    """The file's bytes, undecodable ones kept as surrogates, newlines untranslated."""
    return Path(path).read_bytes().decode("utf-8", "surrogateescape")


def assert_refused_for_nul(e: PolicyError, texts: dict[str, str]) -> None:
    """Only a file with a NUL byte is refused, and the first NUL of each line it is in is
    reported at its line and column (a NUL may break the line in other ways too)."""
    reported = {(str(d.span), d.message.split(" (")[0]) for d in e.diagnostics if d.span is not None}
    want = set()
    for path, text in texts.items():
        for lineno, line in enumerate(text.split("\n"), 1):
            if "\0" in line:
                where = "the line" if path.endswith(("hosts.allow", "hosts.deny")) else "a pattern file"
                want.add((f"{path}:{lineno}:{line.index(chr(0)) + 1}", f"NUL byte in {where}"))
    assert want, f"refused without a NUL byte:\n{e}"
    # a pattern file is only read when the line naming it was parsed and it was found
    missing = {w for w in want - reported if not w[1].endswith("pattern file")}
    assert not missing, f"NUL bytes not reported: {missing}\n{e}"


@st.composite
def long_line(draw: st.DrawFn) -> tuple[str, int]:
    """A rule that matches nothing, padded with 1- to 3-byte characters to about libwrap's
    limit and perhaps split by continuations; and its size in bytes without them."""
    unit = "".join(draw(st.lists(st.sampled_from([" ", "\t", "\r", "x", "\u00e9", "\udcff", "\u20ac"]),
                                 min_size=1, max_size=6)))
    target = draw(st.integers(2036, 2052))
    text = "ALL: 10.0.0.X "  # X: 1 (the client) in hosts.allow, 2 in hosts.deny
    while len(text.encode("utf-8", "surrogateescape")) + len(unit.encode("utf-8", "surrogateescape")) < target:
        text += unit
    text += " " * (target - len(text.encode("utf-8", "surrogateescape")))
    for at in sorted(draw(st.lists(st.integers(14, len(text)), max_size=2)), reverse=True):
        text = text[:at] + "\\\n" + text[at:]
    return text + "\n", target + 1


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_line(), st.booleans())
def test_line_length_limit_agrees_with_tcpdmatch(line: tuple[str, int], in_allow: bool) -> None:
    """tcpdmatch denies when a line is too long (Debian stops reading the table: in
    hosts.deny that denies, and hosts.deny ends in ALL: ALL when the line is in hosts.allow);
    sockgate must refuse exactly those files, at the line."""
    text, size = line
    allow, deny = (text.replace("X", "1"), "ALL: ALL\n") if in_allow else ("", text.replace("X", "2"))
    with tempfile.TemporaryDirectory(prefix="sgt-tcpd-") as tmp:
        work = Path(tmp)
        (work / "hosts.allow").write_bytes(allow.encode("utf-8", "surrogateescape"))
        (work / "hosts.deny").write_bytes(deny.encode("utf-8", "surrogateescape"))
        ((seen,),) = run_tcpdmatch(work, ["sshd"], ["10.0.0.1"])
        try:
            policy = parse_hosts_access(str(work / "hosts.allow"), str(work / "hosts.deny"), read=read_exact)
        except PolicyError as e:
            assert seen.access == "denied", f"refused a {size}-byte line tcpdmatch reads:\n{e}"
            assert all("line longer than libwrap's 2047-byte line buffer" in d.message for d in e.diagnostics)
            return
    assert seen.access == "granted", f"accepted a {size}-byte line tcpdmatch does not read"
    assert decide(policy, "sshd", engine_peer(seen)).allowed


def test_loader_keeps_every_byte() -> None:
    """The loader the CLI uses must hand the parser the file's bytes. With Python's universal
    newlines a CR ended a line: "#\\rsshd: ALL" (one comment to libwrap) allowed everyone, and
    "\\\\\\r\\n" (no continuation to libwrap) continued a line into the comment after it."""
    cases = ["#\rsshd: ALL\n", "sshd: 10.0.0.9 \\\r\n#, 10.0.0.1\n", "sshd: 10.0.0.1\r\n"]
    with tempfile.TemporaryDirectory(prefix="sgt-tcpd-") as tmp:
        work = Path(tmp)
        (work / "hosts.deny").write_bytes(b"ALL: ALL\n")
        for text in cases:
            (work / "hosts.allow").write_bytes(text.encode())
            assert read_text(str(work / "hosts.allow")) == text
            policy = load_policy(hosts_allow=str(work / "hosts.allow"), hosts_deny=str(work / "hosts.deny"))
            ((seen,),) = run_tcpdmatch(work, ["sshd"], ["10.0.0.1"])
            assert decide(policy, "sshd", engine_peer(seen)).allowed is (seen.access == "granted"), text


def test_enough_decisions_were_compared() -> None:
    if not COMPARED:
        pytest.skip("the differential test did not run in this session")
    assert sum(COMPARED) >= MIN_DECISIONS, f"only {sum(COMPARED)} decisions compared"


DATA = Path(__file__).parent.parent / "data" / "hosts_access"


def test_shipped_sample_agrees_with_tcpdmatch() -> None:
    """The sample the core tests decide by hand, decided by tcpdmatch itself."""
    import json

    policy = parse_hosts_access(str(DATA / "hosts.allow"), str(DATA / "hosts.deny"), read=read_text)
    for c in json.loads((DATA / "cases.json").read_text()):
        service, client_text, allowed = c["service"], c["client"], c["allowed"]
        (seen,) = run_tcpdmatch(DATA, [service], [client_text])[0]
        assert (seen.access == "granted") is allowed, (service, client_text, seen)
        assert decide(policy, service, engine_peer(seen)).allowed is allowed


def test_system_resolver_names_localhost_as_tcpdmatch_does() -> None:
    """tcpdmatch looks a host name up, then each address in reverse (libwrap's verified
    name); lookup.SystemNameService must see the same name for the same address."""
    from sockgate.lookup import SystemNameService

    with tempfile.TemporaryDirectory(prefix="sgt-tcpd-") as tmp:
        (seen_list,) = run_tcpdmatch(Path(tmp), ["sshd"], ["localhost"])
    resolver = SystemNameService(timeout=5)
    for seen in seen_list:
        assert seen.address is not None
        hn = resolver.host_name(ipaddress.ip_address(seen.address))
        got = "paranoid" if not hn.verified else (hn.name or "unknown")
        assert got.lower() == (seen.name or "unknown").lower(), seen
