"""`sockgate probe` in a two-namespace lab, with nmap (`-sT`, `-sU -Pn`) as the oracle.

The server namespace holds, for TCP and UDP: an open unguarded port, a closed port and a port
guarded by a sockgate policy that allows the client's first address (198.18.0.2,
fd5b:5347::2) and denies everything else; UDP ports answer every datagram. The client probes
each port from an allowed and a denied source address (`--from`), and nmap scans the same
ports from the same sources; the verdicts must be equal. A "host" behind a router that
answers ICMP unreachable shows the filtered-by-ICMP path. ICMP echo is tried over ping
sockets and raw sockets, on loopback and across the lab.
"""

from __future__ import annotations

import json
import selectors
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import needs_root, needs_tool
from support.netlab import Lab

from sockgate import probe

pytestmark = [needs_root, needs_tool("nmap"), pytest.mark.skipif(sys.platform != "linux", reason="Linux")]

ALLOWED_V4, DENIED_V4 = "198.18.0.2", "198.18.0.3"
ALLOWED_V6, DENIED_V6 = "fd5b:5347::2", "fd5b:5347::3"
UNREACHABLE = "198.18.9.9"  # routed through the server, which answers ICMP host unreachable
POLICY = """\
service tsvc tcp/1 {
    allow 198.18.0.2
    allow fd5b:5347::2
    default deny
}
service usvc udp/1 {
    allow 198.18.0.2
    default deny
}
"""
TIMEOUT = 1.0


class Echo:
    """Answers every datagram on its sockets, from a thread, until closed."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.sel = selectors.DefaultSelector()
        self.stop_r, self.stop_w = socket.socketpair()
        self.sel.register(self.stop_r, selectors.EVENT_READ)
        for s in socks:
            self.sel.register(s, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            for key, _ in self.sel.select(timeout=5):
                if key.fileobj is self.stop_r:
                    return
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data, addr = s.recvfrom(2048)
                    s.sendto(data, addr)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop_w.send(b"x")
        self.thread.join(timeout=10)
        self.sel.close()
        self.stop_r.close()
        self.stop_w.close()


def _guard(sock: socket.socket, service: str, tmp: Path) -> None:
    import sockgate
    from sockgate.guard import guard

    f = tmp / "probe.policy"
    f.write_text(POLICY)
    guard(sockgate.load(f), sock, service)


def _free_port(lab: Lab, family: int, kind: int, addr: str) -> int:
    with lab.server.socket(family, kind) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def site(lab: Lab, tmp_path: Path) -> Iterator[dict[str, Any]]:
    lab.add_client_addresses([DENIED_V4, DENIED_V6])
    for knob in ("net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0", "net.ipv4.ip_forward=1"):
        lab.server.run("sysctl", "-qw", knob)
    lab.server.ip("route", "add", "unreachable", "198.18.9.0/24")
    lab.client.ip("route", "add", "198.18.9.0/24", "via", lab.server_v4)
    socks: list[socket.socket] = []
    ports: dict[str, int] = {}

    def listen(name: str, family: int, kind: int, addr: str, service: str | None) -> socket.socket:
        s = lab.server.socket(family, kind)
        socks.append(s)
        s.bind((addr, 0))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        if service:
            _guard(s, service, tmp_path)
        ports[name] = s.getsockname()[1]
        return s

    echo = None
    try:
        listen("tcp_open", socket.AF_INET, socket.SOCK_STREAM, lab.server_v4, None)
        listen("tcp_guarded", socket.AF_INET, socket.SOCK_STREAM, lab.server_v4, "tsvc")
        listen("tcp6_open", socket.AF_INET6, socket.SOCK_STREAM, lab.server_v6, None)
        listen("tcp6_guarded", socket.AF_INET6, socket.SOCK_STREAM, lab.server_v6, "tsvc")
        u1 = listen("udp_open", socket.AF_INET, socket.SOCK_DGRAM, lab.server_v4, None)
        u2 = listen("udp_guarded", socket.AF_INET, socket.SOCK_DGRAM, lab.server_v4, "usvc")
        ports["tcp_closed"] = _free_port(lab, socket.AF_INET, socket.SOCK_STREAM, lab.server_v4)
        ports["tcp6_closed"] = _free_port(lab, socket.AF_INET6, socket.SOCK_STREAM, lab.server_v6)
        ports["udp_closed"] = _free_port(lab, socket.AF_INET, socket.SOCK_DGRAM, lab.server_v4)
        echo = Echo([u1, u2])
        yield {"lab": lab, "ports": ports}
    finally:
        if echo is not None:
            echo.close()
        for s in socks:
            s.close()


def nmap(lab: Lab, scan: str, target: str, source: str, ports: list[int]) -> dict[int, str]:
    """nmap's verdict per port, scanning from ``source`` inside the client namespace."""
    argv = ["nmap", "-n", "-Pn", scan, "-S", source, "-p", ",".join(map(str, ports)), "--max-retries", "1", "-oG", "-"]
    if ":" in target:
        argv.append("-6")
    if scan != "-sT":
        argv += ["-e", "veth-c"]
    out = lab.client.run(*argv, target, timeout=120).stdout
    verdicts: dict[int, str] = {}
    for line in out.splitlines():
        if "Ports:" in line:
            for item in line.split("Ports:", 1)[1].split("\t")[0].split(","):
                port, state = item.strip().split("/")[:2]
                verdicts[int(port)] = state
    assert set(verdicts) == set(ports), out
    return verdicts


def ours(lab: Lab, proto: str, target: str, source: str, ports: list[int]) -> dict[int, str]:
    fn = probe.probe_tcp if proto == "tcp" else probe.probe_udp
    return {p: lab.client.call(lambda p=p: fn(target, p, source=source, timeout=TIMEOUT)).state for p in ports}  # type: ignore[misc]


def _agree_with_nmap(lab: Lab, proto: str, server: str, sources: tuple[str, ...], ports: list[int]) -> dict[str, Any]:
    """probe's verdicts from each source; each must equal nmap's (-sT / -sU) from that source."""
    seen = {}
    for source in sources:
        got = ours(lab, proto, server, source, ports)
        assert got == nmap(lab, "-sT" if proto == "tcp" else "-sU", server, source, ports), source
        seen[source] = got
    return seen


@pytest.mark.slow
def test_tcp_verdicts_equal_nmap(site: dict[str, Any]) -> None:
    lab: Lab = site["lab"]
    p = site["ports"]
    ports = [p["tcp_open"], p["tcp_closed"], p["tcp_guarded"]]
    seen = _agree_with_nmap(lab, "tcp", lab.server_v4, (ALLOWED_V4, DENIED_V4), ports)
    # the guard decides by source: allowed sees the port open, denied sees it filtered
    assert seen[ALLOWED_V4][p["tcp_guarded"]] == "open"
    assert seen[DENIED_V4][p["tcp_guarded"]] == "filtered"
    assert seen[DENIED_V4][p["tcp_closed"]] == "closed"


@pytest.mark.slow
def test_tcp6_verdicts_equal_nmap(site: dict[str, Any]) -> None:
    lab: Lab = site["lab"]
    p = site["ports"]
    ports = [p["tcp6_open"], p["tcp6_closed"], p["tcp6_guarded"]]
    seen = _agree_with_nmap(lab, "tcp", lab.server_v6, (ALLOWED_V6, DENIED_V6), ports)
    states = {(source, got[p["tcp6_guarded"]]) for source, got in seen.items()}
    assert states == {(ALLOWED_V6, "open"), (DENIED_V6, "filtered")}


@pytest.mark.slow
def test_udp_verdicts_equal_nmap(site: dict[str, Any]) -> None:
    lab: Lab = site["lab"]
    p = site["ports"]
    ports = [p["udp_open"], p["udp_closed"], p["udp_guarded"]]
    seen = _agree_with_nmap(lab, "udp", lab.server_v4, (ALLOWED_V4, DENIED_V4), ports)
    assert seen[ALLOWED_V4] == {p["udp_open"]: "open", p["udp_closed"]: "closed", p["udp_guarded"]: "open"}
    assert seen[DENIED_V4][p["udp_guarded"]] == "open|filtered"


def test_icmp_unreachable_is_filtered_like_nmap(site: dict[str, Any]) -> None:
    lab: Lab = site["lab"]
    tcp = lab.client.call(lambda: probe.probe_tcp(UNREACHABLE, 80, timeout=TIMEOUT))
    udp = lab.client.call(lambda: probe.probe_udp(UNREACHABLE, 53, timeout=TIMEOUT))
    assert (tcp.state, udp.state) == ("filtered", "filtered")
    assert "unreachable" in tcp.reason and f"from {lab.server_v4}" in udp.reason
    assert nmap(lab, "-sT", UNREACHABLE, ALLOWED_V4, [80]) == {80: tcp.state}
    assert nmap(lab, "-sU", UNREACHABLE, ALLOWED_V4, [53]) == {53: udp.state}


def _cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.client.run(sys.executable, "-m", "sockgate", "probe", *args, check=False)


def test_cli_exit_codes_and_json(site: dict[str, Any]) -> None:
    lab: Lab = site["lab"]
    p = site["ports"]
    opened = _cli(lab, lab.server_v4, str(p["tcp_guarded"]), "--from", ALLOWED_V4, "--json")
    assert opened.returncode == 0, opened.stderr
    doc = json.loads(opened.stdout)
    assert (doc["state"], doc["source"], doc["port"]) == ("open", ALLOWED_V4, p["tcp_guarded"])
    assert doc["rtt_ms"] is not None and doc["rtt_ms"] >= 0
    denied = _cli(lab, lab.server_v4, str(p["tcp_guarded"]), "--from", DENIED_V4, "--timeout", "0.5")
    assert denied.returncode == 4 and ": filtered (" in denied.stdout
    closed = _cli(lab, lab.server_v4, str(p["udp_closed"]), "--proto", "udp", "--payload", "00ff")
    assert closed.returncode == 3 and ": closed (" in closed.stdout
    bad_source = _cli(lab, lab.server_v4, "80", "--from", "192.0.2.200")
    assert bad_source.returncode == 1 and "not an address of this host" in bad_source.stderr
    usage = _cli(lab, lab.server_v4, "80", "--payload", "zz", "--proto", "udp")
    assert usage.returncode == 2 and "hex" in usage.stderr


def test_icmp_echo_raw_and_ping_sockets(lab: Lab) -> None:
    # ping_group_range is per network namespace: allow every group in the client only.
    lab.client.run("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
    lab.server.run("sysctl", "-qw", "net.ipv4.ping_group_range=1 0")
    via_ping = lab.client.call(lambda: probe.probe_icmp(lab.server_v4, count=2, interval=0.05))
    via_raw = lab.server.call(lambda: probe.probe_icmp(lab.client_v4, count=2, interval=0.05))
    v6 = lab.client.call(lambda: probe.probe_icmp(lab.server_v6, count=1, source=lab.client_v6))
    assert via_ping.ping.method == "ping socket" and via_ping.ping.received == 2
    assert via_raw.ping.method == "raw socket" and via_raw.ping.received == 2
    assert v6.ping.received == 1 and v6.ping.replies[0].source == lab.server_v6
    assert all(r.rtt > 0 for r in via_ping.ping.replies + via_raw.ping.replies)
    silent = lab.client.call(lambda: probe.probe_icmp("198.18.7.7", count=1, timeout=0.3))
    assert silent.ping.received == 0 and silent.state == "no reply"


@needs_tool("setpriv")
def test_icmp_without_ping_or_raw_sockets_names_the_sysctl(lab: Lab) -> None:
    lab.client.run("sysctl", "-qw", "net.ipv4.ping_group_range=1 0")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    out = lab.client.run(*nobody, sys.executable, "-m", "sockgate", "probe", "--icmp", lab.server_v4, check=False, cwd="/")
    assert out.returncode == 1
    assert "net.ipv4.ping_group_range (1 0) does not include group 65534" in out.stderr
    lab.client.run("sysctl", "-qw", "net.ipv4.ping_group_range=65534 65534")
    out = lab.client.run(*nobody, sys.executable, "-m", "sockgate", "probe", "--icmp", lab.server_v4, "--count", "1", "--json", cwd="/")
    doc = json.loads(out.stdout)
    assert (doc["method"], doc["received"]) == ("ping socket", 1)


def test_icmp_echo_loopback_cli() -> None:
    for host in ("127.0.0.1", "::1"):
        out = subprocess.run(
            [sys.executable, "-m", "sockgate", "probe", "--icmp", host, "--count", "2", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert (doc["received"], doc["address"]) == (2, host)
        assert doc["rtt_min_ms"] <= doc["rtt_avg_ms"] <= doc["rtt_max_ms"]


def test_count_is_refused_without_icmp(capsys: pytest.CaptureFixture[str]) -> None:
    from sockgate.cli.main import main as cli_main

    # a silently ignored --count would let `probe HOST PORT --count 5` look like five probes
    assert cli_main(["probe", "127.0.0.1", "1", "--count", "5"]) == 2
    assert capsys.readouterr().err == "sockgate: probe: --count is for --icmp (a port probe sends one connect or datagram exchange)\n"
