"""Bans never block a policy reload: with a policy that nearly fills one BPF program, a few
dozen bans no longer fit beside it; the proxy then filters by the policy alone, keeps
refusing the banned sources in user space, and a reload that adds a ``deny`` takes effect."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from support.proxyproc import EchoServer, ProxyProc, connect, is_filtered, is_reset, roundtrip, wait_for

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the proxy's kernel filter is Linux-only"),
]

FILL = 2010  # separate hosts denied: ~4,020 ranges, just under what one program holds
BANS = 30  # 60 more ranges: the policy and its bans no longer fit together


def _policy(echo_port: int, extra: str = "") -> str:
    hosts = ", ".join(f"127.{100 + (i >> 8)}.{i & 255}.1" for i in range(FILL))
    return f"""
        service web tcp/80 {{
            listen tcp://127.0.0.1:0
            forward tcp://127.0.0.1:{echo_port}
            {extra}
            deny {{ {hosts} }}
            allow 127.0.0.0/8 limit rate 1/minute per source ban 10m
            default deny
        }}
        """


def _refused(port: int, source: str) -> None:
    # The first ban that does not fit blocks the proxy while CompileError's message measures
    # the capacity (bpf.program.max_ranges, cached afterwards): seconds on a busy machine.
    assert is_reset(port, source, timeout=60)


def test_reload_adding_a_deny_takes_effect_despite_too_many_bans(tmp_path: Path, echo: EchoServer, procs: list[ProxyProc]) -> None:
    pol = tmp_path / "p.conf"
    pol.write_text(_policy(echo.port))
    p = ProxyProc([str(pol), "--backend", "cbpf"], tmp_path / "proxy.log")  # classic BPF's capacity
    procs.append(p)
    p.ready(timeout=60)
    port = p.tcp_port()
    banned = [f"127.0.2.{2 * k + 1}" for k in range(BANS)]  # not adjacent: two ranges each
    for src in banned:
        with connect(port, src) as s:
            assert roundtrip(s, b"a") == b"a"
        _refused(port, src)  # over 1/minute: refused and banned
    wait_for(lambda: len(p.find(event="ban")) == BANS)
    assert "bans enforced in user space" in p.wait_record(event="error")["message"]

    pol.write_text(_policy(echo.port, "deny 127.0.1.0/24"))
    p.signal(signal.SIGHUP)
    done = wait_for(lambda: p.find(event="notice", message="policy reloaded") or p.find(event="error", service=None), 60)
    assert done[-1].get("message") == "policy reloaded", done[-1]
    assert is_filtered(port, "127.0.1.5")  # the new deny is in the kernel filter
    _refused(port, banned[0])  # the bans hold, in user space
    with connect(port, "127.0.3.1") as s:
        assert roundtrip(s, b"b") == b"b"
