"""agent/toolbans.split: the ban lines sshguard and DenyHosts write leave the compiled policy as
bans only where a ban decides what the line decided — a differential over random hosts.allow /
hosts.deny pairs (decisions with the lines as bans equal decisions with them as rules, for
every address of a small pool where lines and ranges overlap) — and anything else stays
policy."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings, strategies as st

from sockgate.agent.toolbans import ToolBan, split
from sockgate.decide import decide
from sockgate.peers import Peer
from sockgate.policy.hostsaccess import parse_hosts_access
from sockgate.policy.ir import Policy

ALLOW, DENY = "/etc/hosts.allow", "/etc/hosts.deny"
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
