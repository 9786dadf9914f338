"""``sockgate check``: output, JSON lines, exit codes, errors on stderr only.

Run through ``cli.main.main(argv)`` (name lookups replaced by a StaticNameService) and, for the
contract as scripts see it, through ``python -m sockgate`` in a subprocess."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sockgate.cli import check as check_cmd
from sockgate.cli.main import main
from sockgate import lookup
from sockgate.policy.ir import IPAddress
from sockgate.lookup import StaticNameService

DATA = Path(__file__).parent.parent / "data" / "hosts_access"
ALLOW, DENY = str(DATA / "hosts.allow"), str(DATA / "hosts.deny")
EXAMPLE = Path(__file__).parents[2] / "src" / "sockgate" / "examples" / "example.conf"
HA = ["--hosts-allow", ALLOW, "--hosts-deny", DENY]
A = ipaddress.ip_address

FAKE = StaticNameService(
    forward={
        "ws.example.com": (A("192.0.2.5"), A("2001:db8::5")),
        "gw": (A("10.9.1.1"),),
        "liar.example.net": (A("203.0.113.1"),),
        "gw66": (A("192.0.2.66"),),
    },
    reverse={A("192.0.2.5"): "ws.example.com", A("2001:db8::5"): "ws.example.com", A("10.9.1.1"): "gw",
             A("198.18.0.1"): "liar.example.net", A("192.0.2.66"): "gw66"},
)


@pytest.fixture(autouse=True)
def fake_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check_cmd, "SystemNameService", lambda timeout: FAKE)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_text_output_like_tcpdmatch(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *HA, "--service", "in.ftpd", "--client", "10.1.1.1", "--client", "192.0.2.66",
                         "--no-resolve")
    assert code == 1 and err == ""
    first, second = out.split("\n\n")
    assert first.splitlines() == [
        "client:   10.1.1.1",
        "client:   address  10.1.1.1",
        "server:   service  in.ftpd",
        f"matched:  {ALLOW}:8: in.ftpd: 10.0.0.0/8 : spawn (/usr/bin/logger ftp %a) &",
        "option:   spawn (/usr/bin/logger ftp %a) & (not executed)",
        "access:   granted",
    ]
    assert second.splitlines()[-2:] == [f"matched:  {DENY}:3: ALL: ALL", "access:   denied"]


def test_default_and_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "hosts.allow"
    empty.write_text("")
    code, out, _ = run(capsys, "--hosts-allow", str(empty), "--service", "sshd", "--client", "192.0.2.1")
    assert code == 0
    assert "matched:  default (allow)" in out.splitlines()
    assert "reason:   no rule matched; default allow" in out.splitlines()


def test_json_one_object_per_client_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    clients = ["192.0.2.5", "10.9.1.1", "1.1.1.1", "vsftpd@203.0.113.9"]
    argv = [*HA, "--service", "sshd", "--json", "--no-resolve"]
    for c in clients:
        argv += ["--client", c]
    code, out, err = run(capsys, *argv)
    assert code == 1 and err == ""
    objs = lines(out)
    assert [o["client"] for o in objs] == clients
    for o in objs:
        assert {"service", "client", "decision", "matched", "reason", "options"} <= set(o)
        assert o["service"] == "sshd" and o["decision"] in ("allow", "deny")
        assert o["matched"] is None or (set(o["matched"]) == {"file", "line", "text"} and o["matched"]["line"] > 0)
    assert [o["decision"] for o in objs] == ["allow", "allow", "deny", "deny"]
    assert objs[1]["matched"] == {"file": DENY, "line": 2, "text": "sshd: 10.9.0.0/16 : allow"}
    assert objs[1]["options"] == [{"name": "allow", "value": "", "note": ""}]
    assert objs[3]["user"] == "vsftpd"  # user@host form: an ident user


def test_json_default_has_null_match(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "--hosts-deny", str(tmp_path / "none"), "--service", "x", "--client", "::1", "--json")
    assert code == 0
    (o,) = lines(out)
    assert o["matched"] is None and o["decision"] == "allow" and o["address"] == "::1"


def test_name_client_is_decided_per_address(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *HA, "--service", "sshd", "--client", "ws.example.com", "--json")
    assert code == 0
    (o,) = lines(out)
    assert [a["address"] for a in o["addresses"]] == ["192.0.2.5", "2001:db8::5"]
    assert all(a["name"] == "ws.example.com" and a["decision"] == "allow" for a in o["addresses"])


def test_address_client_gets_its_name_when_rules_need_names(capsys: pytest.CaptureFixture[str]) -> None:
    # hosts.allow has LOCAL and .example.com rules: 192.0.2.66 resolves to "gw66" (no dot)
    code, out, _ = run(capsys, *HA, "--service", "sshd", "--client", "192.0.2.66", "--json")
    (o,) = lines(out)
    assert (o["name"], o["decision"], o["matched"]["line"]) == ("gw66", "allow", 7)
    code, out, _ = run(capsys, *HA, "--service", "sshd", "--client", "192.0.2.66", "--json", "--no-resolve")
    assert lines(out)[0]["decision"] == "deny"


def test_paranoid_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    deny = tmp_path / "hosts.deny"
    deny.write_text("ALL: PARANOID\n")
    code, out, _ = run(capsys, "--hosts-deny", str(deny), "--service", "sshd", "--client", "198.18.0.1",
                       "--client", "10.9.1.1", "--json")
    assert code == 1
    a, b = lines(out)
    assert (a["name"], a["name_verified"], a["decision"]) == ("liar.example.net", False, "deny")
    assert (b["name"], b["name_verified"], b["decision"]) == ("gw", True, "allow")


def test_twist_is_reported_not_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *HA, "--service", "in.fingerd", "--client", "192.0.2.1")
    assert code == 1
    assert "option:   twist /bin/echo no fingers (not executed; libwrap hands the connection to this command)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*HA, "--service", "sshd", "--client", "192.0.2.1", "--client", "no such"],
         "sockgate: not an address or host name: 'no such'"),
        ([*HA, "--service", "sshd", "--client", "192.0.2.1", "--client", "nowhere.invalid"],
         "sockgate: client 'nowhere.invalid': host name does not resolve"),
        ([*HA, "--service", "sshd", "--client", "gw", "--no-resolve"],
         "sockgate: client 'gw' is a host name, and name lookups are off (--no-resolve)"),
        ([*HA, "--service", "sshd"], "sockgate: no client: give --client ADDR_OR_NAME (repeatable) or --uid N"),
        ([*HA, "--service", "sshd", "--client", "1.2.3.4", "--uid", "0"], "sockgate: give --client or --uid, not both"),
        ([*HA, "--service", "sshd", "--client", "1.2.3.4", "--gid", "0"],
         "sockgate: --gid, --exe and --pid describe a Unix peer: give --uid too"),
        (["--service", "sshd", "--client", "1.2.3.4"],
         "sockgate: no policy: give POLICY files, --policy, or --hosts-allow/--hosts-deny"),
        ([*HA, "--service", "sshd", "--client", "1.2.3.4", "--server", "x"], "sockgate: --server: not an IP address: 'x'"),
        ([*HA, "--service", "@192.0.2.1", "--client", "1.2.3.4"],
         "sockgate: --service: expected a service name, found '@192.0.2.1'"),
        ([*HA, "--service", "sshd", "--uid", "-1"], "sockgate: --uid must be 0-4294967294, found -1"),
        ([*HA, "--service", "sshd", "--uid", "4294967295"], "sockgate: --uid must be 0-4294967294, found 4294967295"),
        ([*HA, "--service", "sshd", "--uid", "0", "--gid", "-5"], "sockgate: --gid must be 0-4294967294, found -5"),
        ([*HA, "--service", "sshd", "--uid", "0", "--pid", "0"], "sockgate: --pid must be a process id >= 1, found 0"),
        ([*HA, "--service", "sshd", "--uid", "0", "--exe", "bin/sh"],
         "sockgate: --exe must be an absolute path (as /proc/PID/exe gives it), found 'bin/sh'"),
    ],
)
def test_usage_errors_exit_2_with_nothing_on_stdout(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out, err.strip()) == (2, "", message)


def test_policy_error_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "hosts.deny"
    bad.write_text("ALL: 1.2.3.0/33\n")
    code, out, err = run(capsys, "--hosts-deny", str(bad), "--service", "sshd", "--client", "1.2.3.4", "--json")
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == (f"{bad}:1:6: bad netmask '33' in '1.2.3.0/33': expected a dotted-quad mask"
                                   " (not 255.255.255.255) or a prefix length 1-32")
    assert err.splitlines()[2].strip() == "^~~~~~~~~~"


def test_native_policy_and_unknown_service(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, str(EXAMPLE), "--service", "ssh", "--client", "192.0.2.10", "--client", "10.66.1.1",
                       "--json")
    assert code == 1
    assert [o["decision"] for o in lines(out)] == ["allow", "deny"]
    native = tmp_path / "small.conf"
    native.write_text("service ssh tcp/22 {\n    allow 10.0.0.0/8\n    default deny\n}\n")
    code, out, err = run(capsys, str(native), "--service", "nosuch", "--client", "192.0.2.10")
    assert (code, out, err.strip()) == (2, "", "sockgate: the policy has no service 'nosuch' (services: ssh)")


def test_unix_peer_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(EXAMPLE), "--service", "admin", "--uid", "0", "--json")
    (o,) = lines(out)
    assert code == 0 and o["uid"] == 0 and o["client"].startswith("uid=0")
    assert o["gid"] == 0 and 0 in o["groups"]  # primary group from the passwd database
    code, out, _ = run(capsys, str(EXAMPLE), "--service", "admin", "--uid", "4242", "--gid", "4242",
                       "--exe", "/usr/lib/example/tool", "--json")
    assert code == 0 and lines(out)[0]["matched"]["line"] > 0
    code, out, _ = run(capsys, str(EXAMPLE), "--service", "admin", "--uid", "4242", "--gid", "4242", "--json")
    assert code == 1 and lines(out)[0]["decision"] == "deny"


def _sockgate(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    return subprocess.run([sys.executable, "-m", "sockgate", "check", *argv], capture_output=True, text=True,
                          timeout=60, env=env)


def test_subprocess_contract() -> None:
    ok = _sockgate(*HA, "--service", "sshd", "--client", "192.0.2.5", "--client", "2001:db8::5", "--json",
                   "--no-resolve")
    assert ok.returncode == 0 and ok.stderr == ""
    assert [json.loads(x)["decision"] for x in ok.stdout.splitlines()] == ["allow", "allow"]
    denied = _sockgate(*HA, "--service", "telnetd", "--client", "1.1.1.1", "--no-resolve")
    assert denied.returncode == 1 and denied.stdout.splitlines()[-1] == "access:   denied"
    bad = _sockgate(*HA, "--service", "sshd", "--client", "1.1.1.1", "--client", "a b")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.strip() == "sockgate: not an address or host name: 'a b'"


# --- the name-resolution edge (sockgate.lookup), with the C library calls replaced ---------


@pytest.mark.parametrize(
    "reverse, forward, want",
    [
        ("host.example", ("host.example", (A("192.0.2.1"),)), ("host.example", True)),
        ("host.example", ("host.example", (A("192.0.2.9"),)), ("host.example", False)),  # address mismatch
        ("host.example", ("other.example", (A("192.0.2.1"),)), ("host.example", False)),  # name mismatch
        ("localhost", ("localhost.localdomain", (A("192.0.2.1"),)), ("localhost", True)),  # libwrap's exception
        ("host.example", None, ("host.example", False)),  # forward lookup fails
        ("192.0.2.1", None, ("192.0.2.1", False)),  # a numeric "name"
        (None, None, (None, True)),  # no reverse name: unknown
    ],
)
def test_system_resolver_verifies_like_libwrap(
    monkeypatch: pytest.MonkeyPatch, reverse: str | None, forward: Any, want: tuple[str | None, bool]
) -> None:
    from sockgate import lookup

    monkeypatch.setattr(lookup, "_getnameinfo", lambda a: reverse)
    monkeypatch.setattr(lookup, "_getaddrinfo", lambda n: forward)
    hn = lookup.SystemNameService(timeout=5).host_name(A("192.0.2.1"))
    assert (hn.name, hn.verified) == want


def test_system_resolver_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from sockgate import lookup

    gate = threading.Event()
    monkeypatch.setattr(lookup, "_getnameinfo", lambda a: gate.wait(5) and "late.example")
    try:  # late is not "no name": the caller hears that the lookup was cut short
        with pytest.raises(lookup.LookupTimedOut, match="did not finish within 0.05s"):
            lookup.SystemNameService(timeout=0.05).host_name(A("192.0.2.1"))
    finally:
        gate.set()


def test_peers_for_client_forms() -> None:
    from sockgate.lookup import peers_for_client

    ((p, why),) = peers_for_client("bob@[2001:db8::5]", FAKE, names=True)
    assert why is None
    assert (p.user, str(p.address), p.name) == ("bob", "2001:db8::5", "ws.example.com")
    ((p, _),) = peers_for_client("192.0.2.5", FAKE, names=False)
    assert p.name is None  # no name rules: no lookup
    ((p, _),) = peers_for_client("paranoid", FAKE, names=True)
    assert (p.address, p.name_verified) == (None, False)
    ((p, _),) = peers_for_client("UNKNOWN", None, names=True)
    assert (p.address, p.name, p.name_verified) == (None, None, True)
    assert [str(p.address) for p, _ in peers_for_client("WS.example.com", FAKE, names=True)] == ["192.0.2.5", "2001:db8::5"]


class LateNameService(StaticNameService):
    """Reverse lookups that ``--timeout`` cut short."""

    def host_name(self, address: IPAddress) -> lookup.HostName:
        raise lookup.LookupTimedOut("the name lookup did not finish within 5s")


@pytest.mark.parametrize(("allow", "deny", "granted"), [
    ("", "sshd: .evil.com\n", False),  # some name is denied: not granted
    ("sshd: 192.0.2.7\n", "sshd: .evil.com\n", True),  # allowed whatever the name
    ("sshd: .good.test\n", "sshd: ALL\n", False),  # only some names are allowed
])
def test_check_grants_a_timed_out_lookup_only_where_every_name_is_granted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, allow: str, deny: str, granted: bool
) -> None:
    monkeypatch.setattr(check_cmd, "SystemNameService", lambda timeout: LateNameService())
    (tmp_path / "a").write_text(allow)
    (tmp_path / "d").write_text(deny)
    ha = ["--hosts-allow", str(tmp_path / "a"), "--hosts-deny", str(tmp_path / "d"), "--service", "sshd", "--client", "192.0.2.7"]
    code, out, _ = run(capsys, *ha)
    assert code == (0 if granted else 1)
    assert "hostname not known: the lookup timed out" in out
    assert ("access:   granted" in out) == granted
    code, out, _ = run(capsys, *ha, "--json")
    (obj,) = lines(out)
    assert obj["name_lookup"] == "timed out" and obj["decision"] == ("allow" if granted else "deny")


def test_service_at_server_is_read_as_tcpdmatch_reads_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """tcpdmatch's ``daemon@server`` spelling selects the daemon and the server address; it
    must not silently become an unknown daemon that the default allows."""
    allow = tmp_path / "hosts.allow"
    allow.write_text("sshd@192.0.2.1 : ALL : deny\nsshd : ALL\n")
    base = ["--hosts-allow", str(allow), "--client", "1.2.3.4", "--no-resolve", "--json"]
    code, out, _ = run(capsys, *base, "--service", "sshd@192.0.2.1")
    (o,) = lines(out)
    assert (code, o["service"], o["decision"], o["matched"]["line"]) == (1, "sshd", "deny", 1)
    code, out, _ = run(capsys, *base, "--service", "sshd", "--server", "192.0.2.1")
    assert (code, lines(out)[0]["matched"]["line"]) == (1, 1)
    code, out, _ = run(capsys, *base, "--service", "sshd@192.0.2.2")
    assert (code, lines(out)[0]["matched"]["line"]) == (0, 2)
    code, out, err = run(capsys, *base, "--service", "sshd@192.0.2.1", "--server", "192.0.2.2")
    assert (code, out, err.strip()) == (2, "", "sockgate: give the server either in --service NAME@ADDR or "
                                                "with --server, not both")
    code, out, err = run(capsys, *base, "--service", "sshd@host.example")
    assert (code, out, err.strip()) == (2, "", "sockgate: --service sshd@host.example: the server must be an IP "
                                                "address, found 'host.example'")


def test_errors_of_native_and_hosts_access_files_are_reported_together(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    native = tmp_path / "p.conf"
    native.write_text("service ssh tcp/22 {\n    allow 10.0.0.1/8\n}\n")
    allow = tmp_path / "hosts.allow"
    allow.write_text("sshd 10.0.0.1\n")
    code, out, err = run(capsys, str(native), "--hosts-allow", str(allow), "--service", "ssh", "--client", "1.2.3.4")
    assert (code, out) == (2, "")
    heads = [line for line in err.splitlines() if line.startswith(str(tmp_path))]
    assert heads == [
        f"{native}:2:11: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
        f"{allow}:1:1: missing ':' between the daemon list and the client list (libwrap skips this line)",
    ]


def test_a_service_the_native_policy_does_not_declare_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A mistyped --service falls to the file-wide default: the reason must say why."""
    native = tmp_path / "p.conf"
    native.write_text("default allow\nservice ssh tcp/22 {\n    allow 10.0.0.0/8\n    default deny\n}\n")
    code, out, _ = run(capsys, str(native), "--service", "shh", "--client", "192.0.2.1", "--json")
    (o,) = lines(out)
    assert (code, o["decision"], o["matched"]) == (0, "allow", None)
    assert o["reason"] == ("no rule matched; service shh is not declared (the policy declares: ssh), "
                           "so the file-wide default allow applies")
    code, out, _ = run(capsys, str(native), "--service", "ssh", "--client", "192.0.2.1", "--json")
    assert lines(out)[0]["reason"] == "no rule matched; default deny"


def test_undecodable_bytes_in_a_rule_are_shown_not_a_crash(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Files are read with surrogateescape; text output escapes such bytes (a strict UTF-8
    stdout would otherwise raise in the middle of the output)."""
    allow = tmp_path / "hosts.allow"
    allow.write_bytes(b"sshd : caf\xe9, 1.2.3.4\n")
    code, out, _ = run(capsys, "--hosts-allow", str(allow), "--service", "sshd", "--client", "1.2.3.4")
    assert code == 0
    assert f"matched:  {allow}:1: sshd : caf\\xe9, 1.2.3.4" in out.splitlines()
    code = main(["lint", "--hosts-allow", str(allow)])
    assert code == 1 and "    sshd : caf\\xe9, 1.2.3.4" in capsys.readouterr().out.splitlines()


def test_a_missing_hosts_file_is_read_as_empty_with_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "hosts.allow"
    deny = tmp_path / "hosts.deny"
    deny.write_text("ALL: 10.0.0.0/8\n")
    rc = main(["check", "--hosts-allow", str(missing), "--hosts-deny", str(deny),
               "--service", "sshd", "--client", "10.1.2.3", "--no-resolve"])
    out, err = capsys.readouterr()
    assert rc == 1 and "access:   denied" in out
    assert err == f"sockgate: warning: {missing} does not exist; read as an empty table, as libwrap does\n"


def test_control_characters_in_rules_and_errors_reach_the_terminal_escaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    p = tmp_path / "p.conf"
    p.write_text('service s unix:/run/s.sock {\n allow exe "/bin/\x1b]0;x\x07sh"\n default deny\n}\n')
    assert main(["check", str(p), "--service", "s", "--uid", "0", "--exe", "/bin/\x1b]0;x\x07sh"]) == 0
    out = capsys.readouterr().out
    assert f"matched:  {p}:2: allow exe \"/bin/\\x1b]0;x\\x07sh\"" in out.splitlines()
    p.write_text('service s tcp/22 {\n allow \x1b[2J\x07\n}\n')
    assert main(["check", str(p), "--service", "s", "--client", "192.0.2.1"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert err.splitlines()[1:] == ["     allow \\x1b[2J\\x07", "           ^" + "~" * 10]


def test_user_options_decide_as_libwrap_run_as_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The system's accounts: nosuchuserxx exists nowhere, root is uid 0 everywhere, and
    Debian's libwrap fails on ``user U`` without a group for any other uid."""
    import pwd

    other = next(p.pw_name for p in pwd.getpwall() if p.pw_uid != 0 and "." not in p.pw_name)
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    deny.write_text("")
    argv = ("--hosts-allow", str(allow), "--hosts-deny", str(deny), "--service", "sshd", "--client", "10.0.0.1",
            "--no-resolve")
    allow.write_text("sshd: 10.0.0.1: user nosuchuserxx\n")
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.splitlines()[0].endswith("hosts.allow:1:17: unknown user 'nosuchuserxx' (libwrap denies every client"
                                        " this rule matches)")
    allow.write_text(f"sshd: 10.0.0.1: user {other}\n")
    code, out, _ = run(capsys, *argv)
    assert code == 1 and out.splitlines()[-1] == "access:   denied"
    assert f"option:   user {other} (fails when libwrap runs it, so the rule denies: Debian's libwrap" in out
    allow.write_text("sshd: 10.0.0.1: user root\n")
    assert run(capsys, *argv)[0] == 0


def test_errors_the_cli_prints_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    # the one broad handler in cli/main.py: a message may quote a peer's executable, a
    # process name or a filter's marker read back from someone else's socket
    from sockgate.cli import lint as lint_cmd
    from sockgate.errors import AdapterError

    def boom(args: object) -> int:
        raise AdapterError("pid 1 (\x1b]0;x\x07sh\nfake: line)")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lint_cmd, "run", boom)
        assert main(["lint", "/dev/null"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b]0;x\\x07sh" in err


def test_explain_and_run_notes_print_rule_texts_escaped(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    allow = tmp_path / "hosts.allow"
    allow.write_bytes(b"sshd: 192.0.2.0/24 : spawn /bin/echo \x1b]0;x\x07\n")
    assert main(["explain", "--hosts-allow", str(allow), "--service", "sshd", "--client", "192.0.2.1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "spawn /bin/echo \\x1b]0;x\\x07" in out
    from sockgate import launcher

    launcher._say("note: spawn \x1b]0;x\x07")  # run's notes and messages, on stderr
    err = capsys.readouterr().err
    assert err == "sockgate run: note: spawn \\x1b]0;x\\x07\n"
