"""`sockgate proxy --backend ebpf` for real: a rate ban is an update of the service's pinned ban
tries — the program on the listener stays the same (its digest), the ban is in the maps with
the limiter's end, which the kernel honours — and the proxy hosts the eBPF refusal log as
``run`` does (``--refusal-interval``, ``--log-format``). Each test has its own bpffs (conftest)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from sockgate.ebpf import layout
from sockgate.kernel.banmaps import BanMaps
from sockgate.kernel.bpfops import LinuxBpf
from support.launch import ls_guard
from support.proxyproc import EchoServer, ProxyProc, connect, is_filtered, is_reset, roundtrip, wait_for

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the proxy's kernel filter is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF needs root"),
    pytest.mark.root,
]

RATED = """\
service web tcp/80 {{
    listen tcp://127.0.0.1:0
    forward tcp://127.0.0.1:{port}
    deny 127.0.0.2
    allow 127.0.0.0/8 limit rate 3/2s per source ban 3s
    default deny
}}
"""


def start(procs: list[ProxyProc], tmp_path: Path, *args: str) -> ProxyProc:
    p = ProxyProc(list(args), tmp_path / f"proxy{len(procs)}.log")
    procs.append(p)
    p.ready()
    return p


def banned(bpffs: str) -> dict[str, int]:
    """The proxy service's pinned bans: network → expiry (this process's CLOCK_MONOTONIC ns)."""
    maps = BanMaps(LinuxBpf(), layout.service_dir("web", f"{bpffs}/sockgate"))
    return {str(n): b.expires_ns for n, b in maps.list()}


def test_a_ban_is_a_map_update_and_its_lift_too(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc], bpffs: str) -> None:
    pol = tmp_path / "p.conf"
    pol.write_text(RATED.format(port=echo.port))
    p = start(procs, tmp_path, str(pol), "--backend", "ebpf")
    port = p.tcp_port()
    before = ls_guard(port)
    assert before["backend"] == "ebpf" and banned(bpffs) == {}
    for _ in range(3):
        with connect(port, "127.0.0.3") as s:
            assert roundtrip(s, b"a") == b"a"
    assert is_reset(port, "127.0.0.3")  # the 4th is over the rate: refused and banned
    p.wait_record(event="ban")
    t_ban = time.monotonic_ns()
    bans = wait_for(lambda: banned(bpffs) or None, 5)
    assert list(bans) == ["127.0.0.3/32"]
    assert 2 * 10**9 < bans["127.0.0.3/32"] - t_ban <= 3 * 10**9 + 10**8  # the limiter's end, not "never"
    assert is_filtered(port, "127.0.0.3")  # dropped in the kernel, by the program that was there
    during = ls_guard(port)
    assert during["digest"] == before["digest"]
    assert not p.find(event="error")  # no "kernel filter not updated"
    p.wait_record(event="unban", timeout=6)
    now = time.monotonic_ns()
    assert all(end <= now for end in banned(bpffs).values())  # ended where the limiter's did (a sweep frees the room)
    with connect(port, "127.0.0.3") as s:
        assert roundtrip(s, b"c") == b"c"
    assert ls_guard(port)["digest"] == before["digest"]


def test_the_proxy_hosts_the_refusal_log(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    pol = tmp_path / "p.conf"
    pol.write_text(RATED.format(port=echo.port))
    p = start(procs, tmp_path, str(pol), "--backend", "ebpf", "--refusal-interval", "0.5")
    assert p.find(event="notice", message="refusal log of web: json to stderr, one line per refused source per 0.5 s")
    port = p.tcp_port()
    for _ in range(3):
        assert is_filtered(port, "127.0.0.2")  # denied by the policy: dropped in the kernel, counted there
    rec = p.wait_record(event="refused", source="127.0.0.2")
    assert (rec["service"], rec["reason"]) == ("web", "rule") and rec["count"] >= 1
    assert not p.find(event="refused", source="127.0.0.1")


def test_no_refusal_log_on_classic_bpf(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    pol = tmp_path / "p.conf"
    pol.write_text(RATED.format(port=echo.port))
    p = start(procs, tmp_path, str(pol), "--backend", "cbpf", "--refusal-interval", "0.5")
    assert is_filtered(p.tcp_port(), "127.0.0.2")
    p.stop()
    assert not [r for r in p.records() if r.get("event") == "refused" or "refusal log" in str(r.get("message"))]


def test_a_bad_refusal_interval_is_one_line(tmp_path: Path, procs: list[ProxyProc]) -> None:
    p = ProxyProc(["--listen", "tcp://127.0.0.1:0", "--forward", "tcp://127.0.0.1:9", "--refusal-interval", "0"],
                  tmp_path / "bad.log")
    procs.append(p)
    assert p.proc.wait(30) != 0
    assert p.log_path.read_text().strip().splitlines() == ["sockgate: proxy: --refusal-interval must be between 0.1 and 86400 seconds"]


