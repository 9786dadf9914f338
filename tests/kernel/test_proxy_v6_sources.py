"""One IPv6 host is one source: its whole /64 (``limits.source_of``). A client in another
namespace that moves to the next address of its /64 keeps its rate ban — in the kernel filter
too — and its UDP flow quota."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from support import netlab
from support.proxyproc import EchoServer, ProxyProc, lab_round_trip

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="the proxy's kernel tests are Linux-only")]

NEXT = ["fd5b:5347::3", "fd5b:5347::4", "fd5b:5347::5"]  # more addresses of the client's /64


def _start(procs: list[ProxyProc], tmp_path: Path, lab: netlab.Lab, body: str, *extra: str) -> ProxyProc:
    pol = tmp_path / "p.conf"
    pol.write_text(body)
    p = ProxyProc([str(pol), *extra], tmp_path / "proxy.log", prefix=lab.server.argv())
    procs.append(p)
    p.ready()
    return p


def test_a_rate_ban_covers_the_sources_whole_64(tmp_path: Path, lab: netlab.Lab, procs: list[ProxyProc]) -> None:
    lab.add_client_addresses(NEXT)
    echo = lab.server.call(lambda: EchoServer())
    try:
        p = _start(procs, tmp_path, lab, f"""
        service web tcp/80 {{
            listen tcp://:0
            forward tcp://127.0.0.1:{echo.port}
            allow fd5b:5347::/64 limit rate 2/30s per source ban 30s
            default deny
        }}
        """)
        port = p.tcp_port()
        assert lab_round_trip(lab, lab.client_v6, port) == b"v6"
        assert lab_round_trip(lab, NEXT[0], port) == b"v6"  # the same source: its second in the window
        assert lab_round_trip(lab, NEXT[1], port) == "reset"  # its third: over the rate, banned
        ban = p.wait_record(event="ban")
        assert ban["peer"] == "fd5b:5347::/64"
        assert lab_round_trip(lab, NEXT[2], port) == "filtered"  # the next address: dropped in the kernel
        assert [r["rule"] for r in p.find(event="decision", decision="deny")] == ["limit"]
    finally:
        echo.close()


def test_the_udp_flow_cap_counts_the_64(tmp_path: Path, lab: netlab.Lab, procs: list[ProxyProc]) -> None:
    lab.add_client_addresses(NEXT)
    backend = lab.server.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        backend.bind(("::1", 0))
        backend.settimeout(3.0)
        p = _start(procs, tmp_path, lab, f"""
        service dns udp/53 {{
            listen udp://[::]:0
            forward udp://[::1]:{backend.getsockname()[1]}
            allow fd5b:5347::/64
            default deny
        }}
        """, "--max-udp-flows-per-source", "2")
        port = p.tcp_port()
        for src in [lab.client_v6, *NEXT[:2]]:
            s = lab.client.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                s.bind((src, 0))
                s.sendto(src.encode(), (lab.server_v6, port))
                assert backend.recvfrom(64)[0] == src.encode()  # each reaches the backend
            finally:
                s.close()
        closed = p.wait_record(event="close")  # the third flow of the /64 ended its oldest
        assert closed["peer"].startswith(f"[{lab.client_v6}]:") and "2 UDP flows per source" in closed["end"]
    finally:
        backend.close()
