"""``sockgate explain``: listing, size, and each client's path and verdict beside the engine's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sockgate.cli.main import main

POLICY = """\
set office = { 192.0.2.0/24, 2001:db8:1::/48 }
service ssh tcp/22 {
    deny 10.66.0.0/16
    allow @office
    allow 10.0.0.0/8 except 10.66.1.0/24
    default deny
}
service web tcp/80 {
    allow host .example.com
    default deny
}
"""


@pytest.fixture
def policy(tmp_path: Path) -> str:
    p = tmp_path / "p.conf"
    p.write_text(POLICY)
    return str(p)


def test_json_paths_and_verdicts_agree_with_the_engine(policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    clients = ["10.1.2.3", "10.66.1.1", "::ffff:192.0.2.9", "2001:db8:1::5", "2001:db8:2::1", "203.0.113.1"]
    args = ["explain", policy, "--service", "ssh", "--json"] + [a for c in clients for a in ("--client", c)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["service"] == "ssh" and out["instructions"] == len(out["listing"])
    assert out["ranges"] == {"ipv4": 7, "ipv6": 3, "total": 10}
    assert out["bytes"] == 8 * out["instructions"]
    verdicts = [(c["client"], c["header"], c["verdict"]) for c in out["clients"]]
    assert verdicts == [("10.1.2.3", "ipv4", "allow"), ("10.66.1.1", "ipv4", "deny"),
                        ("::ffff:192.0.2.9", "ipv4", "allow"), ("::ffff:192.0.2.9", "ipv6", "deny"),
                        ("2001:db8:1::5", "ipv6", "allow"), ("2001:db8:2::1", "ipv6", "deny"), ("203.0.113.1", "ipv4", "deny")]
    for c in out["clients"]:
        assert c["agree"] and c["decision"] == c["verdict"]
        assert c["path"][0] == 0 and "ret" in out["listing"][c["path"][-1]]
    genuine, forged = (c for c in out["clients"] if c["client"] == "::ffff:192.0.2.9")
    assert (genuine["family"], genuine["address"], genuine["forged"]) == ("ipv4", "192.0.2.9", False)
    assert genuine["rule"].endswith(":4: allow @office")
    assert (forged["family"], forged["address"], forged["forged"], forged["rule"]) == ("ipv4", "::ffff:192.0.2.9", True, None)
    assert forged["reason"].startswith("forged: an IPv6 packet from an IPv4-mapped address")


def test_mapped_client_shows_the_ipv4_packet_and_the_forged_ipv6_one(policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", policy, "--service", "ssh", "--no-listing", "--client", "::ffff:10.1.2.3"]) == 0
    out = capsys.readouterr().out
    assert "client ::ffff:10.1.2.3 (ipv4): allow (ret 0xffffffff) after " in out
    assert "client ::ffff:10.1.2.3 (in an IPv6 header: forged): deny (ret 0x0) after " in out
    assert "decision engine: deny — forged: an IPv6 packet from an IPv4-mapped address (::ffff:0:0/96)" in out


def test_text_output(policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", policy, "--service", "ssh", "--client", "10.66.1.1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("service ssh  digest ")
    assert "ldb [net + 0]" in out and "ld [net + 12]" in out
    assert "client 10.66.1.1 (ipv4): deny (ret 0x0) after " in out
    assert "decision engine: deny — matched " in out and ":3: deny 10.66.0.0/16" in out


def test_banned_sources_are_shown(policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", policy, "--service", "ssh", "--banned", "10.1.2.0/24", "--client", "10.1.2.3",
                 "--json", "--no-listing"]) == 0
    c = json.loads(capsys.readouterr().out)["clients"][0]
    assert (c["verdict"], c["decision"], c["reason"]) == ("deny", "deny", "banned (10.1.2.0/24)")


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--service", "web"], 2, "sockgate: service 'web': a kernel filter sees only the source address"),
        (["--service", "nope"], 2, "sockgate: the policy has no service 'nope' (services: ssh, web)"),
        (["--service", "ssh", "--client", "bogus"], 2, "sockgate: --client: not an IP address: 'bogus'"),
        (["--service", "ssh", "--banned", "10.0.0.0/33"], 2, "sockgate: --banned: "),
    ],
)
def test_errors_are_messages(policy: str, capsys: pytest.CaptureFixture[str], args: list[str], code: int,
                             message: str) -> None:
    assert main(["explain", policy, *args]) == code
    assert capsys.readouterr().err.startswith(message)


def test_hosts_access_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    allow.write_text("sshd: 192.0.2.0/255.255.255.0 EXCEPT 192.0.2.7\n")
    deny.write_text("ALL: ALL\n")
    args = ["explain", "--hosts-allow", str(allow), "--hosts-deny", str(deny), "--service", "sshd", "--json"]
    assert main(args + ["--client", "192.0.2.8", "--client", "192.0.2.7", "--client", "::1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["verdict"] for c in out["clients"]] == ["allow", "deny", "deny"]
    assert all(c["agree"] for c in out["clients"])


def test_hosts_options_a_filter_cannot_carry_out_are_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    allow = tmp_path / "hosts.allow"
    allow.write_text("sshd: 10.0.0.1 : spawn (echo hi) : banners /etc/banners\nsshd: 10.0.0.2 : twist /bin/echo no\n"
                     "sshd: 10.0.0.3 : deny\n")
    args = ["explain", "--hosts-allow", str(allow), "--service", "sshd", "--no-listing"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("note: ")] == [
        f"note: {allow}:1: options spawn, banners not carried out by a kernel filter; only the rule's verdict (allow) is enforced",
        f"note: {allow}:2: option twist not carried out by a kernel filter; only the rule's verdict (deny) is enforced",
    ]
    assert main([*args, "--json", "--client", "10.0.0.2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["notes"]) == 2 and report["clients"][0]["verdict"] == "deny"
