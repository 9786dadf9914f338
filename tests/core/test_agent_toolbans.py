"""agent/toolbans: the ban lines sshguard and DenyHosts write, picked out of a hosts_access
policy for ``status`` — and nothing else of the files; and ``split``: those lines leave the
compiled policy as bans only where a ban decides what the line decided — a differential over
random hosts.allow / hosts.deny pairs (decisions with the lines as bans equal decisions with
them as rules, for every address of a small pool where lines and ranges overlap) — and anything
else stays policy."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings, strategies as st

from sockgate.agent.toolbans import ToolBan, rows, split
from sockgate.decide import decide
from sockgate.peers import Peer
from sockgate.policy.hostsaccess import parse_hosts_access
from sockgate.policy.ir import Policy

ALLOW, DENY = "/etc/hosts.allow", "/etc/hosts.deny"
FILES = {
    ALLOW: "###sshguard###\nALL : 198.51.100.7 : DENY\nALL : [2001:db8::]/64 : DENY\n###sshguard###\n"
           "sshd : 192.0.2.9 : DENY\nALL : 203.0.113.0/24 EXCEPT 203.0.113.1 : DENY\nsshd : ALL\n",
    DENY: "# DenyHosts: Thu Dec  3 12:00:00 2026 | sshd: 192.0.2.1\nsshd: 192.0.2.1\nsshd, ftpd : 192.0.2.2\n"
          "ALL : 10.9.0.0/16\nsshd : 192.0.2.3 : spawn /bin/true\nsshd@10.0.0.1 : 192.0.2.4\nsshd : .example.com\n"
          "ALL EXCEPT sshd : 192.0.2.5\nALL : ALL\n",
}


def test_sshguards_and_denyhosts_lines_are_bans_by_origin_the_rest_is_policy() -> None:
    policy = parse_hosts_access(ALLOW, DENY, read=FILES.__getitem__)
    got = [(r.net, r.origin, r.services, r.expires, r.added, r.reason) for r in rows(policy, ALLOW, DENY, 5.0)]
    assert got == [
        ("198.51.100.7/32", "sshguard", None, None, 5.0, "/etc/hosts.allow:2"),
        ("2001:db8::/64", "sshguard", None, None, 5.0, "/etc/hosts.allow:3"),
        ("192.0.2.1/32", "hosts_deny", ("sshd",), None, 5.0, "/etc/hosts.deny:2"),
        ("192.0.2.2/32", "hosts_deny", ("sshd", "ftpd"), None, 5.0, "/etc/hosts.deny:3"),
        ("10.9.0.0/16", "hosts_deny", None, None, 5.0, "/etc/hosts.deny:4"),
    ]


def test_without_hosts_files_there_are_none() -> None:
    policy = parse_hosts_access(ALLOW, DENY, read=FILES.__getitem__)
    assert rows(policy, None, None, 0.0) == ()


SERVICES = ("sshd", "vsftpd")


def load(allow: str, deny: str) -> Policy:
    texts = {ALLOW: allow, DENY: deny}
    return parse_hosts_access(ALLOW, DENY, read=lambda p: texts[p])


def test_the_lines_the_tools_write_are_bans_and_the_operators_rules_stay() -> None:
    allow = "###sshguard###\nALL : 192.0.2.9 : DENY\nALL : [2001:db8::9] : DENY\n###sshguard###\nsshd: 10.0.0.0/8\n"
    deny = "sshd: 203.0.113.7\nALL: 198.51.100.3\nsshd: 203.0.113.8 : spawn /bin/true\nsshd: 127.0.0.1\nALL: ALL\n"
    rest, bans = split(load(allow, deny), ALLOW, DENY, SERVICES)
    assert bans == (ToolBan(ipaddress.ip_network("192.0.2.9/32"), frozenset(SERVICES), "sshguard", f"{ALLOW}:2"),
                    ToolBan(ipaddress.ip_network("2001:db8::9/128"), frozenset(SERVICES), "sshguard", f"{ALLOW}:3"),
                    ToolBan(ipaddress.ip_network("203.0.113.7/32"), frozenset({"sshd"}), "hosts_deny", f"{DENY}:1"),
                    ToolBan(ipaddress.ip_network("198.51.100.3/32"), frozenset(SERVICES), "hosts_deny", f"{DENY}:2"))
    assert [r.text for r in rest.rules] == ["sshd: 10.0.0.0/8", "sshd: 203.0.113.8 : spawn /bin/true",
                                            "sshd: 127.0.0.1", "ALL: ALL"]  # options, loopback: policy


def test_a_line_an_earlier_allow_rule_may_take_stays_policy() -> None:
    allow = "sshd: 203.0.113.0/24\nvsftpd: .example.com\n"
    deny = "sshd: 203.0.113.7\nvsftpd: 198.51.100.3\nsshd: 198.51.100.3\nALL: 192.0.2.1\n"
    rest, bans = split(load(allow, deny), ALLOW, DENY, SERVICES)
    assert [(str(b.network), sorted(b.services)) for b in bans] == [("198.51.100.3/32", ["sshd"])]
    assert [r.text for r in rest.rules if r.span.file == DENY] == ["sshd: 203.0.113.7", "vsftpd: 198.51.100.3",
                                                                   "ALL: 192.0.2.1"]


POOL = [ipaddress.ip_address(a) for a in ("192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4",
                                          "198.51.100.1", "2001:db8::1", "2001:db8::2", "2001:db8::ff", "127.0.0.1")]
NETS = ["192.0.2.1", "192.0.2.2", "192.0.2.0/30", "192.0.2.0/29", "198.51.100.1", "[2001:db8::1]", "[2001:db8::2]",
        "[2001:db8::]/120", "127.0.0.1", "192.0.2.", "ALL", "LOCAL", ".example.com", "ALL EXCEPT 192.0.2.2"]
DAEMONS = ["ALL", "sshd", "vsftpd", "sshd, vsftpd", "ALL EXCEPT vsftpd"]
ADDRS = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.1", "[2001:db8::1]", "[2001:db8::2]", "127.0.0.1"]

operator = st.tuples(st.sampled_from(DAEMONS), st.sampled_from(NETS), st.sampled_from(["", " : DENY", " : ALLOW"])).map(
    lambda t: f"{t[0]}: {t[1]}{t[2]}")
denyhosts = st.tuples(st.sampled_from(["ALL", "sshd", "vsftpd"]), st.sampled_from(ADDRS)).map(lambda t: f"{t[0]}: {t[1]}")
sshguard = st.sampled_from(ADDRS).map(lambda a: f"ALL : {a} : DENY")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(operator, sshguard), max_size=6), st.lists(st.one_of(operator, denyhosts), max_size=8))
def test_decisions_with_the_lines_as_bans_equal_decisions_with_them_as_rules(allow: list[str], deny: list[str]) -> None:
    policy = load("".join(f"{x}\n" for x in allow), "".join(f"{x}\n" for x in deny))
    rest, bans = split(policy, ALLOW, DENY, SERVICES)
    assert len(rest.rules) + len(bans) == len(policy.rules)
    for service in SERVICES:
        for address in POOL:
            peer = Peer(address=address)
            as_rules = decide(policy, service, peer).allowed
            banned = any(service in b.services and address in b.network for b in bans)
            assert as_rules == (not banned and decide(rest, service, peer).allowed), (service, address, bans)
