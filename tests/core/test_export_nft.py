"""nftables export and the planning every exporter shares: goldens, errors, ports, CLI.

The ruleset's behaviour in a real kernel is tested in tests/kernel/test_nft_kernel.py; here
the plan's verdicts are compared with the decision engine, and the text with goldens.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.cli.main import main as cli_main
from sockgate.decide import decide
from sockgate.errors import PolicyError, UsageError
from sockgate.export import export, plan
from sockgate.export.common import SkippedRule
from sockgate.export.ports import merge_ranges, parse_map, parse_services
from sockgate.peers import Peer
from sockgate.policy.ir import (
    Action,
    AddrMatch,
    DaemonPattern,
    Endpoint,
    MatchAll,
    Policy,
    Rule,
    Service,
)
from sockgate.policy.parser import parse_policy
from sockgate.policy.source import Span
from support.export_policies import (
    DATA,
    PROBES_V4,
    PROBES_V6,
    addresses,
    check_golden,
    export_hosts_access,
    golden_cases,
    load_native,
    policies,
)
from support.purity import loaded_by


def test_nft_golden_hosts_access() -> None:
    out = export_hosts_access("nft")
    check_golden("hosts.nft.golden", out.text)
    assert out.warnings == (
        "hosts.allow:5: left out of the nftables rules: `portmap: .example.com`: needs the client's host name "
        "(a DNS lookup); treated as never matching",
        "hosts.allow:2: options not carried by a packet filter: severity",
    )

# --- goldens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "golden", "options"), golden_cases("nft"))
def test_nft_golden(policy: str, golden: str, options: dict[str, object]) -> None:
    check_golden(golden, export(load_native(policy), "nft", **options).text)  # type: ignore[arg-type]


# --- the plan decides as the engine -----------------------------------------------------------


def _without(policy: Policy, skipped: set[int]) -> Policy:
    """``policy`` with the rules at the given ``id``s deleted: what skipping must mean."""
    services = tuple(
        Service(s.name, tuple(r for r in s.rules if id(r) not in skipped), s.default, s.endpoints) for s in policy.services
    )
    return Policy(services=services)


@settings(max_examples=120, deadline=None)
@given(policy=policies(userspace=True))
def test_plan_verdicts_are_the_engines_with_skipped_rules_deleted(policy: Policy) -> None:
    p = plan(policy, target="nftables", skip_userspace=True)
    skipped = {id(i.rule) for s in p.services for i in s.items if isinstance(i, SkippedRule)}
    reference = _without(policy, skipped)
    for svc in p.services:
        for addr in addresses(policy):
            assert svc.verdict(addr) is decide(reference, svc.name, Peer(address=addr)).action, (svc.name, str(addr))
    assert [s.name for s in p.skipped] == ["sock"]


def test_plan_first_service_owns_a_shared_port_and_warns() -> None:
    text = "service a tcp/22 { default allow }\nservice b tcp/20-30 { default deny }\n"
    p = plan(parse_policy(text, "o.policy"), target="nftables")
    owner = p.owner("tcp", 22)
    assert owner is not None and owner.name == "a"
    assert p.warnings == ("service b tcp/20-30 overlaps service a: a, first in policy order, judges those ports",)


# --- IPv4-mapped sources -----------------------------------------------------------------------


def _chains(text: str) -> dict[str, list[str]]:
    """Chain name → its lines without comments (the exporter's own layout)."""
    out: dict[str, list[str]] = {}
    for block in re.findall(r"^\tchain (\w+) \{\n(.*?)^\t\}$", text, re.M | re.S):
        out[block[0]] = [line.strip() for line in block[1].splitlines() if not line.strip().startswith("#")]
    return out


@settings(max_examples=60, deadline=None)
@given(policy=policies(userspace=True), action=st.sampled_from(["drop", "reject"]))
def test_every_service_drops_mapped_sources_before_any_rule(policy: Policy, action: str) -> None:
    # A real IPv4 client arrives with an IPv4 header even on a dual-stack socket: an IPv6
    # header with a source in ::ffff:0:0/96 is forged, whatever the policy allows.
    p = plan(policy, target="nftables", skip_userspace=True)
    chains = _chains(export(policy, "nft", action=action, skip_userspace=True).text)  # type: ignore[arg-type]
    services = [c for name, c in chains.items() if name.startswith("svc_")]
    assert len(services) == len(p.services) > 0
    assert all(lines[0] == "ip6 saddr ::ffff:0:0/96 drop" for lines in services), chains
    for svc in p.services:
        for v4 in PROBES_V4 + ("0.0.0.0", "255.255.255.255"):
            assert svc.verdict(ipaddress.ip_address(f"::ffff:{v4}")) is Action.DENY
    assert "ffff" not in " ".join(chains["input"])  # other ports are left alone


# --- what a packet filter cannot express --------------------------------------------------------


def test_inexpressible_rules_fail_naming_each_one() -> None:
    with pytest.raises(PolicyError) as info:
        export(load_native("ranges.policy"), "nft")
    assert str(info.value).splitlines() == [
        "ranges.policy:12:5: nftables cannot express `allow host .example.com`: needs the client's host name "
        "(a DNS lookup); enforce it with `sockgate proxy`, or pass --skip-userspace to leave it out (it then never matches)",
        "ranges.policy:13:5: nftables cannot express `allow 198.51.100.0/24 limit concurrent 4 per source`: has connection "
        "limits; enforce it with `sockgate proxy`, or pass --skip-userspace to leave it out (it then never matches)",
    ]


def test_unix_service_with_rules_is_inexpressible_without_rules_a_comment() -> None:
    with pytest.raises(PolicyError, match=r"pf cannot express `service docker`: a Unix socket service"):
        export(load_native("office.policy"), "pf")
    text = "service ssh tcp/22 { allow 10.0.0.0/8 }\nservice sock unix:/run/s.sock { default allow }\n"
    out = export(parse_policy(text, "u.policy"), "nft")
    assert out.warnings == ()
    assert "# service sock not exported: a Unix socket service (unix:/run/s.sock): a packet filter has no port to guard" in out.text


def test_skip_userspace_warns_and_comments() -> None:
    out = export(load_native("ranges.policy"), "nft", skip_userspace=True)
    assert out.warnings == (
        "ranges.policy:12: left out of the nftables rules: `allow host .example.com`: needs the client's host name "
        "(a DNS lookup); treated as never matching",
        "ranges.policy:13: left out of the nftables rules: `allow 198.51.100.0/24 limit concurrent 4 per source`: "
        "has connection limits; treated as never matching",
    )
    assert "\t\t# left out, never matches: ranges.policy:12: allow host .example.com; needs the client's host name (a DNS lookup)\n" in out.text


# --- hosts_access: daemons and ports ------------------------------------------------------------


def _ha(*rules: tuple[str, str, object]) -> Policy:
    out = []
    for i, (action, text, daemons) in enumerate(rules, 1):
        match = MatchAll() if text.endswith("ALL") else AddrMatch((ipaddress.ip_network(text.split(": ")[1]),))
        out.append(Rule(Action(action), match, Span("hosts.allow", i, 1), text, daemons=daemons))  # type: ignore[arg-type]
    return Policy(rules=tuple(out), kind="hosts_access", fallback=Action.ALLOW, sources=("hosts.allow",))


def test_daemons_need_a_port_and_the_error_names_them() -> None:
    pol = _ha(("allow", "sshd: 10.0.0.0/8", DaemonPattern("sshd")), ("deny", "in.telnetd: ALL", DaemonPattern("in.telnetd")))
    with pytest.raises(UsageError) as info:
        export(pol, "nft")
    assert str(info.value) == (
        "no port known for sshd, in.telnetd: say where each listens with --map DAEMON=PROTO/PORT "
        "(e.g. --map sshd=tcp/PORT); only services(5) names are looked up by themselves"
    )


def test_all_rules_reach_every_mapped_daemon_and_services_db_is_the_fallback() -> None:
    pol = _ha(
        ("allow", "sshd: 10.0.0.0/8", DaemonPattern("sshd")),
        ("deny", "ALL: ALL", MatchAll()),
    )
    db = parse_services("ntp 123/udp\nssh 22/tcp\n")
    p = plan(pol, target="pf", mapped=parse_map(["sshd=tcp/22,2222", "ntp=udp/1123"]), services_db=db)
    assert [(s.name, s.ports, len(s.items), s.default) for s in p.services] == [
        ("sshd", (("tcp", ((22, 22), (2222, 2222))),), 2, Action.ALLOW),
        ("ntp", (("udp", ((1123, 1123),)),), 1, Action.ALLOW),
    ]
    # A daemon that is a services(5) name needs no --map.
    pol2 = _ha(("allow", "ntp: 10.0.0.0/8", DaemonPattern("ntp")))
    assert plan(pol2, target="pf", services_db=db).services[0].ports == (("udp", ((123, 123),)),)


def test_native_service_without_endpoints_is_mapped_like_a_daemon() -> None:
    pol = parse_policy("service web { allow 10.0.0.0/8 }\nservice ssh { default deny }\n", "w.policy")
    with pytest.raises(UsageError, match=r"^no port known for web, ssh: "):
        plan(pol, target="nftables")
    p = plan(pol, target="nftables", mapped=parse_map(["web=tcp/80"]), services_db=parse_services("ssh 22/tcp\n"))
    assert [(s.name, s.ports) for s in p.services] == [("web", (("tcp", ((80, 80),)),)), ("ssh", (("tcp", ((22, 22),)),))]


def test_map_errors() -> None:
    with pytest.raises(UsageError, match=r"--map 'sshd': expected DAEMON=PROTO/PORT"):
        parse_map(["sshd"])
    with pytest.raises(UsageError, match=r"protocol must be tcp or udp, found 'sctp'"):
        parse_map(["x=sctp/1"])
    with pytest.raises(UsageError, match=r"port range '0' is not within 1-65535"):
        parse_map(["x=tcp/0"])
    with pytest.raises(UsageError, match=r"expected a port or port range \(1-65535\), found '22-'"):
        parse_map(["x=tcp/22-"])
    native = parse_policy("service ssh tcp/22 { default deny }\n", "m.policy")
    with pytest.raises(UsageError, match=r"--map ssh: service ssh already says where it listens \(tcp/22\)"):
        export(native, "nft", mapped=parse_map(["ssh=tcp/2222"]))
    with pytest.raises(UsageError, match=r"--map web: the policy has no service web"):
        export(native, "nft", mapped=parse_map(["web=tcp/80"]))
    with pytest.raises(UsageError, match=r"--table 'my-table'"):
        export(native, "nft", table="my-table")


def test_ports_helpers() -> None:
    assert merge_ranges([(22, 22), (20, 23), (24, 30), (40, 41)]) == ((20, 30), (40, 41))
    assert parse_map(["a=tcp/1", "a=udp/2-3", "b=tcp/5,4"]) == {
        "a": (Endpoint("tcp", ((1, 1),)), Endpoint("udp", ((2, 3),))),
        "b": (Endpoint("tcp", ((4, 5),)),),
    }
    db = parse_services("domain 53/tcp\ndomain 53/udp nameserver # dns\nbad x/tcp\nsctp-x 9/sctp\n")
    assert db == {"domain": (Endpoint("tcp", ((53, 53),)), Endpoint("udp", ((53, 53),))), "nameserver": (Endpoint("udp", ((53, 53),)),)}


# --- rendering details ------------------------------------------------------------------------


def test_one_interval_inline_more_in_a_named_set_equal_sets_shared() -> None:
    text = (
        "set lan = { 10.0.0.0/8 }\n"
        "service a tcp/1 { allow 192.0.2.0/24\n allow { 192.0.2.1, 192.0.2.9 }\n allow @lan }\n"
        "service b udp/2 { deny { 192.0.2.1, 192.0.2.9 }\n allow fd00::/8 }\n"
    )
    out = export(parse_policy(text, "i.policy"), "nft").text
    assert "\t\tip saddr 192.0.2.0/24 accept\n" in out
    assert "\t\tip saddr @a_2_v4 accept\n" in out and "\t\tip saddr @a_2_v4 drop\n" in out
    assert out.count("set a_2_v4 {") == 1
    assert "\t\tip saddr @lan_v4 accept\n" in out
    assert "\t\tip6 saddr fd00::/8 accept\n" in out
    assert "\t\tudp dport 2 jump svc_b\n" in out


def test_idempotent_load_idiom_and_removal_named() -> None:
    out = export(parse_policy("service a tcp/1 { default deny }\n", "x.policy"), "nft", table="guard").text
    lines = out.splitlines()
    assert "# Remove:                                nft delete table inet guard" in lines
    i = lines.index("table inet guard {}")
    assert lines[i : i + 3] == ["table inet guard {}", "delete table inet guard", "table inet guard {"]



def test_table_names_nft_reads_as_keywords_are_refused() -> None:
    pol = parse_policy("service a tcp/1 { default deny }\n", "x.policy")
    for word in ("drop", "inet", "filter_", "table", "counter", "ip6"):
        if word == "filter_":
            assert "table inet filter_ {" in export(pol, "nft", table=word).text
            continue
        with pytest.raises(UsageError) as info:
            export(pol, "nft", table=word)
        assert str(info.value) == f"--table {word!r}: nft reads this word as a keyword, not a name; choose another (e.g. sg_{word})"
    # pf anchors are quoted strings: the same words are fine there
    assert 'anchor "drop"' in export(pol, "pf", table="drop").text


# --- command line -------------------------------------------------------------------------------


def test_cli_writes_stdout_or_file_and_warnings_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ranges.policy"
    src.write_text((DATA / "ranges.policy").read_text())
    assert cli_main(["export", "--format", "pf", str(src), "--skip-userspace"]) == 0
    cap = capsys.readouterr()
    expected = export(parse_policy(src.read_text(), str(src)), "pf", skip_userspace=True).text
    assert cap.out == expected
    assert cap.err.count("sockgate: warning: ") == 2
    out = tmp_path / "out.nft"
    assert cli_main(["export", "-f", "nft", str(src), "--skip-userspace", "--action", "reject", "-o", str(out)]) == 0
    assert "goto deny_reject" in out.read_text()
    assert capsys.readouterr().out == ""


def test_cli_refuses_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ranges.policy"
    src.write_text((DATA / "ranges.policy").read_text())
    out = tmp_path / "out.nft"
    assert cli_main(["export", "--format", "nft", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src}:12:5: nftables cannot express `allow host .example.com`" in err
    assert "    allow host .example.com\n" in err  # the source line, with a caret under it
    assert not out.exists()
    assert cli_main(["export", "--format", "nft", str(src), "--map", "bad"]) == 2
    assert "expected DAEMON=PROTO/PORT" in capsys.readouterr().err
    missing = tmp_path / "no" / "such.nft"
    assert cli_main(["export", "--format", "nft", str(src), "--skip-userspace", "-o", str(missing)]) == 1
    assert capsys.readouterr().err.endswith(f"sockgate: cannot write {missing}: No such file or directory\n")
    assert list(tmp_path.iterdir()) == [src]


def test_export_core_imports_no_io_modules() -> None:
    loaded = loaded_by(["sockgate.export", "sockgate.export.nft", "sockgate.export.pf"])
    bad = {'socket', 'ctypes', 'asyncio', 'subprocess', 'sockgate.linux', 'sockgate.services_db'}
    assert sorted(bad & loaded) == []


def test_probe_lists_are_inside_the_lab() -> None:
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("198.18.0.0/15") for a in PROBES_V4)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("fd5b:5347::/64") for a in PROBES_V6)


def test_a_services_file_named_on_the_command_line_must_be_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "hosts.allow"
    src.write_text("ntp: 10.0.0.0/8\n")
    missing = tmp_path / "services"
    assert cli_main(["export", "-f", "nft", "--hosts-allow", str(src), "--services-file", str(missing)]) == 1
    assert capsys.readouterr().err == f"sockgate: cannot read services file {missing}: No such file or directory\n"
    missing.write_text("ntp 123/udp\n")
    assert cli_main(["export", "-f", "nft", "--hosts-allow", str(src), "--services-file", str(missing)]) == 0
    assert "udp dport 123 jump svc_ntp" in capsys.readouterr().out


def test_missing_default_services_database_is_empty_not_an_error() -> None:
    from sockgate.services_db import read_services

    assert read_services("/nonexistent/services", required=False) == {}
