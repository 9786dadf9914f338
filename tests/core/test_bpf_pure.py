"""The compiler is pure: importing and running it loads no I/O module."""

from __future__ import annotations

from support.purity import loaded_after

CODE = """
import ipaddress
from sockgate.bpf import compile_service, disasm, interp, Packet
from sockgate.policy.ir import Action, AddrMatch, Rule, Service
from sockgate.policy.source import Span
svc = Service("s", (Rule(Action.ALLOW, AddrMatch((ipaddress.ip_network("10.0.0.0/8"),)), Span("f", 1, 1), "allow"),), None)
prog = compile_service(svc)
disasm.listing(prog.insns)
interp.run(prog.insns, Packet.from_address("10.0.0.1"))
"""


def test_bpf_imports_no_io_modules() -> None:
    loaded = loaded_after(CODE)
    assert sorted(m for m in ("socket", "ctypes", "asyncio", "sockgate.linux", "select") if m in loaded) == []
