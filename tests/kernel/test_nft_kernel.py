"""The nftables export loaded for real, in network namespaces the tests make.

The ruleset goes into the lab's server namespace only (never the root namespace); probes come
from the client namespace over veth, from many source addresses, IPv4 and IPv6, TCP connects
and UDP datagrams, and each outcome must be what the decision engine says for the service
that owns the port. ``nft -c`` must accept every generated ruleset.
"""

from __future__ import annotations

import errno
import json
import re
import select
import selectors
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from sockgate.cli.main import main as cli_main
from sockgate.decide import decide
from sockgate.export import export
from sockgate.peers import Peer
from sockgate.policy.ir import Policy
from support import netlab
from support.export_policies import PROBES_V4, PROBES_V6, Dress, dress, dresses, TCP_A, TCP_C, UDP_B, UNCOVERED, owner, policies

pytestmark = [
    pytest.mark.root,
    pytest.mark.netns,
    pytest.mark.skipif(netlab.can_netns() is not None, reason=str(netlab.can_netns())),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables)"),
]

TCP_PORTS = (TCP_A, TCP_C, UNCOVERED)
UDP_PORTS = (UDP_B, TCP_C)
ALLOWED, DENIED, DROPPED = "allowed", "refused", "dropped"


class Services:
    """Listeners in the server namespace: TCP (accepted and closed) and UDP echo, dual-stack."""

    def __init__(self, ns: netlab.Netns) -> None:
        self.socks = [self._bind(ns, socket.SOCK_STREAM, p) for p in TCP_PORTS]
        self.socks += [self._bind(ns, socket.SOCK_DGRAM, p) for p in UDP_PORTS]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _bind(ns: netlab.Netns, kind: int, port: int) -> socket.socket:
        s = ns.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            s.listen(512)
        s.setblocking(False)
        return s

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            for s in self.socks:
                sel.register(s, selectors.EVENT_READ)
            while not self.stop.is_set():
                for key, _ in sel.select(0.05):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        if s.type == socket.SOCK_STREAM:
                            s.accept()[0].close()
                        else:
                            data, addr = s.recvfrom(512)
                            s.sendto(data, addr)
                    except (BlockingIOError, ConnectionError):
                        pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


@pytest.fixture
def served(lab: netlab.Lab) -> Iterator[netlab.Lab]:
    # ICMP errors (UDP rejects) must not be rate limited, or a refused probe looks dropped.
    for key in ("net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0", "net.ipv4.icmp_msgs_per_sec=100000", "net.ipv4.icmp_msgs_burst=100000"):
        lab.server.run("sysctl", "-q", "-w", key, check=False)
    lab.add_client_addresses([a for a in PROBES_V4 + PROBES_V6 if a not in (lab.client_v4, lab.client_v6)])
    srv = Services(lab.server)
    try:
        yield lab
    finally:
        srv.close()


def load(ns: netlab.Netns, text: str, tmp: Path) -> None:
    path = tmp / "ruleset.nft"
    path.write_text(text)
    r = ns.run("nft", "-f", str(path), check=False)
    assert r.returncode == 0, r.stderr + "\n" + text


def probe(lab: netlab.Lab, targets: list[tuple[str, str, int]], timeout: float) -> list[str]:
    """(source, proto, port) from the client namespace to the server → outcome each."""

    def run() -> list[str]:
        return [_probe_one(src, proto, port, lab, timeout) for src, proto, port in targets]

    return lab.client.call(run)


def _probe_one(src: str, proto: str, port: int, lab: netlab.Lab, timeout: float) -> str:
    v6 = ":" in src
    dst = lab.server_v6 if v6 else lab.server_v4
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        s.bind((src, 0))
        try:
            if proto == "tcp":
                s.connect((dst, port))
                return ALLOWED
            s.connect((dst, port))
            s.send(b"probe")
            return ALLOWED if s.recv(64) == b"probe" else "garbled"
        except ConnectionRefusedError:
            return DENIED
        except TimeoutError:
            return DROPPED
        except OSError as e:  # anything else is a bug in the test set-up
            return f"error {errno.errorcode.get(e.errno or 0, e.errno)}"


def expected(policy: Policy, service: str | None, src: str, deny: str) -> str:
    """What the engine says a probe must see: ports of no service are never judged."""
    if service is None:
        return ALLOWED
    return ALLOWED if decide(policy, service, Peer.parse(src)).allowed else deny


TARGETS = [(src, "tcp", p) for src in PROBES_V4 + PROBES_V6 for p in TCP_PORTS] + [
    (src, "udp", p) for src in PROBES_V4 + PROBES_V6 for p in UDP_PORTS
]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(policy=policies())
def test_random_policies_enforced_as_the_engine_decides(served: netlab.Lab, tmp_path: Path, policy: Policy) -> None:
    result = export(policy, "nft", action="reject")
    load(served.server, result.text, tmp_path)  # replaces the previous example's table
    got = probe(served, TARGETS, timeout=2.0)
    want = [expected(policy, owner(policy, proto, port), src, DENIED) for src, proto, port in TARGETS]
    wrong = [(t, g, w) for t, g, w in zip(TARGETS, got, want) if g != w]
    assert not wrong, "\n".join(f"{t}: got {g}, engine says {w}" for t, g, w in wrong) + "\n" + result.text


POLICY = """\
set office = { 198.18.1.0/24, fd5b:5347::1:0/112 }

service alpha tcp/2201 {
    deny 198.18.1.130
    allow @office
    allow fd5b:5347::a:0/112 except fd5b:5347::a:ffff
    default deny
}

service bravo udp/2253 {
    allow 198.18.0.0/16 except 198.18.2.0/24
    default deny
}
"""


def _cli_export(tmp: Path, *extra: str) -> str:
    src = tmp / "lab.policy"
    src.write_text(POLICY)
    out = tmp / "lab.nft"
    assert cli_main(["export", "--format", "nft", str(src), "-o", str(out), *extra]) == 0
    return out.read_text()


def test_drop_action_makes_denied_probes_time_out(served: netlab.Lab, tmp_path: Path) -> None:
    text = _cli_export(tmp_path)
    load(served.server, text, tmp_path)
    targets = [
        ("198.18.1.1", "tcp", TCP_A),
        ("198.18.1.130", "tcp", TCP_A),
        ("fd5b:5347::a:1", "tcp", TCP_A),
        ("fd5b:5347::a:ffff", "tcp", TCP_A),
        ("198.18.0.2", "udp", UDP_B),
        ("198.18.2.7", "udp", UDP_B),
        ("fd5b:5347::2", "udp", UDP_B),
        ("fd5b:5347::2", "tcp", UNCOVERED),
    ]
    policy = _parse(POLICY)
    want = [expected(policy, owner(policy, proto, port), src, DROPPED) for src, proto, port in targets]
    assert set(want) == {ALLOWED, DROPPED}
    assert probe(served, targets, timeout=0.4) == want


def test_hosts_access_with_mapped_daemons(served: netlab.Lab, tmp_path: Path) -> None:
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    allow.write_text("alpha: [fd5b:5347::1:0]/112, 198.18.1.0/255.255.255.0 EXCEPT 198.18.1.130, [fd5b:5347::1:8001]\nbravo: ALL\n")
    deny.write_text("ALL: ALL\n")
    out = tmp_path / "hosts.nft"
    argv = ["export", "-f", "nft", "--hosts-allow", str(allow), "--hosts-deny", str(deny), "--action", "reject"]
    argv += ["--map", f"alpha=tcp/{TCP_A}", "--map", f"bravo=udp/{UDP_B}", "--map", f"charlie=tcp/{TCP_C}", "-o", str(out)]
    assert cli_main(argv) == 0
    load(served.server, out.read_text(), tmp_path)
    from sockgate.loading import load_policy

    policy = load_policy([], str(allow), str(deny))
    owners = {TCP_A: "alpha", UDP_B: "bravo", TCP_C: "charlie"}
    targets = [(src, "tcp", p) for src in PROBES_V4 + PROBES_V6 for p in (TCP_A, TCP_C, UNCOVERED)]
    targets += [(src, "udp", UDP_B) for src in PROBES_V4[:3] + PROBES_V6[:3]]
    want = [expected(policy, owners.get(port), src, DENIED) for src, _, port in targets]
    assert set(want) == {ALLOWED, DENIED}
    assert probe(served, targets, timeout=2.0) == want


def _ruleset(ns: netlab.Netns) -> str:
    return ns.run("nft", "list", "ruleset").stdout


def test_loading_twice_leaves_one_copy_and_the_header_command_removes_it(served: netlab.Lab, tmp_path: Path) -> None:
    text = _cli_export(tmp_path, "--table", "sgtest")
    load(served.server, text, tmp_path)
    first = _ruleset(served.server)
    load(served.server, text, tmp_path)
    second = _ruleset(served.server)
    assert second == first
    assert second.count("table inet sgtest {") == 1
    assert second.count("chain svc_alpha {") == 1
    m = re.search(r"^# Remove: +(nft delete table inet sgtest)$", text, re.M)
    assert m is not None
    served.server.run(*m.group(1).split())
    assert "sgtest" not in _ruleset(served.server)
    assert probe(served, [("198.18.1.130", "tcp", TCP_A)], timeout=1.0) == [ALLOWED]


def test_replies_to_the_hosts_own_connections_are_not_judged(served: netlab.Lab, tmp_path: Path) -> None:
    """A service port range also holds this host's client ports: the replies to a connection
    the server namespace opens from such a port pass even where the policy denies all."""
    text = export(
        _parse("service charlie tcp/2280-2281 { default deny }\n"),
        "nft",
    ).text
    load(served.server, text, tmp_path)
    listener = served.client.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.bind((served.client_v4, 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        def connect_out() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.bind((served.server_v4, TCP_C + 1))  # no listener here; in the service's range
                s.connect((served.client_v4, port))

        served.server.call(connect_out)
    assert probe(served, [("198.18.0.2", "tcp", TCP_C)], timeout=0.4) == [DROPPED]


# --- forged IPv4-mapped sources ---------------------------------------------------------------


def _mac(ns: netlab.Netns, dev: str) -> str:
    return str(json.loads(ns.ip("-j", "link", "show", dev).stdout)[0]["address"])


def _send_udp6(lab: netlab.Lab, datagrams: list[tuple[str, bytes]], port: int) -> None:
    """Each ``(source, payload)`` as an IPv6/UDP frame written on the client's veth (AF_PACKET:
    no source check by the sending stack), in order."""
    eth = Ether(src=_mac(lab.client, "veth-c"), dst=_mac(lab.server, "veth-s"))
    frames = [bytes(eth / IPv6(src=src, dst=lab.server_v6) / UDP(sport=40000, dport=port) / data) for src, data in datagrams]

    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind(("veth-c", 0))
            for frame in frames:
                s.send(frame)

    lab.client.call(send)


def _received_until(sock: socket.socket, marker: bytes) -> list[tuple[bytes, str]]:
    """Datagrams up to ``marker``, sent last on the same path: whatever came before it and
    was not dropped has been queued by the time it arrives (late ``ready`` copies ignored)."""
    out: list[tuple[bytes, str]] = []
    while True:
        data, addr = sock.recvfrom(512)
        if data == marker:
            return out
        if data != b"ready":
            out.append((data, addr[0]))


MAPPED_POLICIES = (
    f"service bravo udp/{UDP_B} {{\n    deny 198.18.0.0/15\n    default allow\n}}\n",  # the engine denies the IPv4 peer
    f"service bravo udp/{UDP_B} {{\n    allow all\n}}\n",  # forged even where everyone is allowed
)


def _wait_for_the_wire(lab: netlab.Lab, sock: socket.socket) -> None:
    """A fresh veth pair may lose the first frames while its carrier comes up: send a genuine
    datagram until one arrives (``_received_until`` skips any later copy)."""
    for _ in range(100):
        _send_udp6(lab, [(lab.client_v6, b"ready")], UDP_B)
        if select.select([sock], [], [], 0.1)[0]:
            sock.settimeout(10)
            return
    raise AssertionError("no datagram crossed the veth pair")


@pytest.mark.parametrize("text", MAPPED_POLICIES)
def test_forged_ipv4_mapped_sources_are_dropped(lab: netlab.Lab, tmp_path: Path, text: str) -> None:
    forged = "::ffff:198.18.1.1"
    sock = lab.server.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", UDP_B))
        _wait_for_the_wire(lab, sock)
        # Without rules this kernel delivers the forged datagram (else this test proves nothing).
        _send_udp6(lab, [(forged, b"forged"), (lab.client_v6, b"marker")], UDP_B)
        assert _received_until(sock, b"marker") == [(b"forged", forged)]
        load(lab.server, export(_parse(text), "nft", action="reject").text, tmp_path)
        _send_udp6(lab, [(forged, b"forged"), (lab.client_v6, b"genuine"), (lab.client_v6, b"marker")], UDP_B)
        assert _received_until(sock, b"marker") == [(b"genuine", lab.client_v6)]


def _parse(text: str) -> Policy:
    from sockgate.policy.parser import parse_policy

    return parse_policy(text, "t.policy")


@settings(max_examples=25, deadline=None, database=None)
@given(policy=policies(userspace=True))
def test_nft_check_accepts_every_generated_ruleset(policy: Policy) -> None:
    ns = netlab.Netns()
    try:
        for action in ("drop", "reject"):
            text = export(policy, "nft", action=action, skip_userspace=True).text  # type: ignore[arg-type]
            r = subprocess.run(ns.argv("nft", "-c", "-f", "/dev/stdin"), input=text, capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr + "\n" + text
    finally:
        ns.delete()



@settings(max_examples=40, deadline=None, database=None)
@given(policy=policies(userspace=True), d=dresses())
def test_nft_check_accepts_rulesets_from_hostile_names(policy: Policy, d: Dress) -> None:
    # Newlines, quotes, braces, `;`, `#`, backslashes, NUL and other controls in file paths,
    # rule text, service, set and Unix socket names: nft's own parser must still read the
    # ruleset (tests/core/test_export_hostile.py proves only comments change).
    ns = netlab.Netns()
    try:
        text = export(dress(policy, d), "nft", action="reject", skip_userspace=True).text
        r = subprocess.run(ns.argv("nft", "-c", "-f", "/dev/stdin"), input=text, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr + "\n" + text
    finally:
        ns.delete()


def test_nft_check_accepts_the_goldens() -> None:
    goldens = sorted((Path(__file__).parent.parent / "data" / "export").glob("*.nft.golden"))
    assert goldens
    ns = netlab.Netns()
    try:
        for path in goldens:
            r = ns.run("nft", "-c", "-f", str(path), check=False)
            assert r.returncode == 0, f"{path.name}: {r.stderr}"
    finally:
        ns.delete()


# words an operator might pick for --table: nft keywords, chain types, hooks, plain names
TABLE_NAMES = (
    "drop accept reject inet ip ip6 arp bridge netdev table chain set map counter limit log ct meta tcp udp "
    "icmp type hook policy priority flags elements interval timeout comment filter nat route input output "
    "forward prerouting postrouting ingress sockgate firewall fw hosts ssh web DROP Inet my_table t1"
).split()


def test_nft_check_accepts_every_table_name_the_exporter_accepts() -> None:
    from sockgate.errors import UsageError
    from sockgate.policy.parser import parse_policy

    pol = parse_policy("service a tcp/1 {\n    allow 198.18.0.0/24\n    default deny\n}\n", "t.policy")
    ns = netlab.Netns()
    try:
        refused = []
        for name in TABLE_NAMES:
            try:
                text = export(pol, "nft", table=name).text
            except UsageError:
                refused.append(name)
                continue
            r = subprocess.run(ns.argv("nft", "-c", "-f", "/dev/stdin"), input=text, capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, f"--table {name}: {r.stderr}"
        assert "drop" in refused and "sockgate" not in refused
    finally:
        ns.delete()
