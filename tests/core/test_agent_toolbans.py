"""agent/toolbans: the ban lines sshguard and DenyHosts write, picked out of a hosts_access
policy for ``status`` — and nothing else of the files."""

from __future__ import annotations

from sockgate.agent.toolbans import rows
from sockgate.policy.hostsaccess import parse_hosts_access

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
