"""The proxy never queries ident (RFC 1413) nor looks up its own host name; a hosts_access
deny that needs either must still refuse (``kernelpart.assume_unlearned``), as tcpdmatch
says libwrap does: ``tcpdmatch -d myd@127.0.0.1 127.0.0.1`` and ``tcpdmatch -d myd
mallory@127.0.0.1`` both deny under the rules below."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from support.proxyproc import EchoServer, ProxyProc, connect, roundtrip

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="the proxy's kernel tests are Linux-only")]


@pytest.mark.parametrize(("deny", "decision"), [
    ("myd@localhost : ALL\n", "deny"),  # the server's name: 127.0.0.1 is localhost
    ("myd : mallory@ALL\n", "deny"),  # the client's ident user: mallory, as far as the proxy knows
    ("myd : ALL EXCEPT mallory@ALL\n", "deny"),  # under EXCEPT: assumed not mallory, so denied
    ("other@localhost : ALL\nmyd : mallory@127.0.0.2\n", "allow"),  # rules that cannot apply stay out
])
def test_unlearned_facts_decide_as_the_worst_answer(
    tmp_path: Path, echo: EchoServer, procs: list[ProxyProc], deny: str, decision: str
) -> None:
    (tmp_path / "hosts.allow").write_text("")
    (tmp_path / "hosts.deny").write_text(deny)
    p = ProxyProc(
        ["--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}",
         "--hosts-allow", str(tmp_path / "hosts.allow"), "--hosts-deny", str(tmp_path / "hosts.deny"),
         "--service", "myd"],
        tmp_path / "proxy.log",
    )
    procs.append(p)
    p.ready()
    with connect(p.tcp_port(), timeout=10.0) as s:
        try:
            got = roundtrip(s, b"ping")
        except OSError:  # a refusal may come as a reset
            got = b""
    rec = p.wait_record(event="decision")
    assert rec["decision"] == decision, rec
    assert got == (b"ping" if decision == "allow" else b"")
