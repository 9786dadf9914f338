"""The compiler is pure: importing and running it loads no I/O module."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys, ipaddress
from sockgate.bpf import compile_service, disasm, interp, Packet
from sockgate.policy.ir import Action, AddrMatch, Rule, Service
from sockgate.policy.source import Span
svc = Service("s", (Rule(Action.ALLOW, AddrMatch((ipaddress.ip_network("10.0.0.0/8"),)), Span("f", 1, 1), "allow"),), None)
prog = compile_service(svc)
disasm.listing(prog.insns)
interp.run(prog.insns, Packet.from_address("10.0.0.1"))
bad = sorted(m for m in ("socket", "ctypes", "asyncio", "sockgate.linux", "select") if m in sys.modules)
print(",".join(bad))
"""


def test_bpf_imports_no_io_modules() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
