"""pf export: golden fragments, and the fragment's meaning checked by a small pf evaluator.

No pf here to load the fragment into, so the test reads it back the way pf would — tables,
then ``quick`` rules top to bottom, the first match deciding — and compares every verdict with
the decision engine for random policies.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.decide import decide
from sockgate.export import export
from sockgate.peers import Peer
from sockgate.policy.ir import Action, AddrMatch, Endpoint, IPAddress, Policy, Rule, Service
from sockgate.policy.parser import parse_policy
from sockgate.policy.source import Span
from support.export_policies import PORTS, PROBES_V4, addresses, check_golden, export_hosts_access, golden_cases, load_native, owner, policies



@pytest.mark.parametrize(("policy", "golden", "options"), golden_cases("pf"))
def test_pf_golden(policy: str, golden: str, options: dict[str, object]) -> None:
    check_golden(golden, export(load_native(policy), "pf", **options).text)  # type: ignore[arg-type]



def test_pf_golden_hosts_access() -> None:
    out = export_hosts_access("pf")
    check_golden("hosts.pf.golden", out.text)
    assert out.warnings == (
        "hosts.allow:5: left out of the pf rules: `portmap: .example.com`: needs the client's host name "
        "(a DNS lookup); treated as never matching",
        "hosts.allow:2: options not carried by a packet filter: severity",
    )

# --- a pf reader, just enough for what the exporter writes ------------------------------------

_TABLE = re.compile(r"^table <(\w+)> const \{ (.*) \}$")
_RULE = re.compile(r"^(pass|block drop|block return) in quick proto (tcp|udp) from (\S+) to self port (\{ [^}]* \}|\S+)$")


class PfFragment:
    def __init__(self, text: str) -> None:
        self.tables: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
        self.rules: list[tuple[str, str, str, list[tuple[int, int]]]] = []
        for line in text.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+", " ", line)
            if not line or line.startswith("#"):
                continue
            if m := _TABLE.match(line):
                self.tables[m[1]] = [ipaddress.ip_network(e) for e in m[2].split(", ")]
            elif m := _RULE.match(line):
                self.rules.append((m[1], m[2], m[3], _ports(m[4])))
            else:
                raise AssertionError(f"unexpected pf line: {line!r}")

    def verdict(self, proto: str, port: int, addr: IPAddress) -> str | None:
        for action, p, src, ports in self.rules:
            if p == proto and any(lo <= port <= hi for lo, hi in ports) and self._src(src, addr):
                return "pass" if action == "pass" else "block"
        return None

    def _src(self, src: str, addr: IPAddress) -> bool:
        if src == "any":
            return True
        nets = self.tables[src[1:-1]] if src.startswith("<") else [ipaddress.ip_network(src)]
        return any(n.version == addr.version and addr in n for n in nets)


def _ports(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.strip("{} ").split():
        lo, _, hi = item.partition(":")
        out.append((int(lo), int(hi or lo)))
    return out


@settings(max_examples=60, deadline=None)
@given(policy=policies(userspace=False), action=st.sampled_from(["drop", "reject"]))
def test_pf_fragment_decides_as_the_engine(policy: Policy, action: str) -> None:
    frag = PfFragment(export(policy, "pf", action=action).text)  # type: ignore[arg-type]
    ports = sorted({(ep.proto, lo) for eps in PORTS.values() for ep in eps for lo, _ in ep.ports} | {("tcp", 2299)})
    for proto, port in ports:
        judge = owner(policy, proto, port)
        for addr in addresses(policy) + MAPPED:
            got = frag.verdict(proto, port, addr)
            if judge is None:
                assert got is None
                continue
            want = "pass" if addr not in MAPPED and decide(policy, judge, Peer(address=addr)).allowed else "block"
            assert got == want, (proto, port, str(addr))


# An IPv6 packet from an IPv4-mapped source is forged (a real IPv4 client sends an IPv4
# header): blocked for every service, whatever the engine says of the IPv4 address.
MAPPED: list[IPAddress] = [ipaddress.ip_address(f"::ffff:{a}") for a in PROBES_V4 + ("0.0.0.0", "255.255.255.255")]


def test_pf_blocks_mapped_sources_before_any_pass() -> None:
    text = "service a tcp/22,80 udp/53 {\n    allow all\n}\n"
    frag = PfFragment(export(parse_policy(text, "m.policy"), "pf", action="reject").text)
    assert frag.rules[:2] == [
        ("block drop", "tcp", "::ffff:0:0/96", [(22, 22), (80, 80)]),
        ("block drop", "udp", "::ffff:0:0/96", [(53, 53)]),
    ]
    assert all(frag.verdict(p, port, a) == "block" for a in MAPPED for p, port in (("tcp", 22), ("udp", 53)))
    assert frag.verdict("tcp", 22, ipaddress.ip_address("::fffe:0:1")) == "pass"


def test_pf_reject_is_block_return_and_tables_are_shared() -> None:
    text = """\
set trusted = { 192.0.2.0/24, 2001:db8::/32 }
service a tcp/22 { allow @trusted
    default deny }
service b udp/53,5353 { allow @trusted }
"""
    out = export(parse_policy(text, "s.policy"), "pf", action="reject").text
    assert out.count("table <sg_trusted> const { 192.0.2.0/24, 2001:db8::/32 }") == 1
    assert "pass in quick proto udp from <sg_trusted> to self port { 53 5353 }" in out
    assert "block return in quick proto tcp from any to self port 22" in out
    # only forged sources are dropped silently: they get no answer
    assert [line for line in out.splitlines() if line.startswith("block drop")] == [
        "block drop in quick proto tcp from ::ffff:0:0/96 to self port 22",
        "block drop in quick proto udp from ::ffff:0:0/96 to self port { 53 5353 }",
    ]


def test_pf_table_names_fit_pf_limit() -> None:
    long = "s" * 60
    text = f"service {long} tcp/1 {{ allow {{ 10.0.0.1, 10.0.0.3 }}\n allow {{ 10.0.0.5, 10.0.0.7 }} }}\n"
    out = export(parse_policy(text, "l.policy"), "pf").text
    names = re.findall(r"^table <(\w+)>", out, re.M)
    assert len(names) == 2 and len(set(names)) == 2
    assert all(len(n) <= 31 for n in names)


def test_comments_cannot_swallow_the_next_rule() -> None:
    net = ipaddress.ip_network("10.0.0.0/8")
    rules = (
        Rule(Action.ALLOW, AddrMatch((net,)), Span("c.policy", 1, 1), "allow 10.0.0.0/8 \\\nsneaky \\"),
        Rule(Action.DENY, AddrMatch((net,)), Span("c.policy", 2, 1), "deny 10.0.0.0/8"),
    )
    pol = Policy(services=(Service("c", rules, Action.DENY, (Endpoint("tcp", ((1, 1),)),)),))
    out = export(pol, "pf").text
    assert "# c.policy:1: allow 10.0.0.0/8 \\?sneaky ?\n" in out
    assert "\\\n" not in out
    assert PfFragment(out).verdict("tcp", 1, ipaddress.ip_address("10.1.2.3")) == "pass"


def test_pf_rules_judge_only_traffic_to_this_host() -> None:
    # On a pf gateway `to any port 22` would also catch forwarded traffic to other hosts, and
    # a quick `pass` default would let it bypass the rest of pf.conf. The nft export judges the
    # input hook only; pf must match the same packets: those addressed to this host (`self`).
    text = export(load_native("office.policy"), "pf", skip_userspace=True).text
    rules = [line for line in text.splitlines() if line.startswith(("pass", "block"))]
    assert rules and all(" to self port " in line for line in rules), rules
