"""eBPF for sockgate: a service's address rules → a socket filter and LPM-trie maps (pure).

Passes (each a module with one entry function)::

    ResolvedService ──resolve.ranges.first_match_tables──▶ Tables ──prefixes.entries──▶ trie entries (maps.py)
                                                            └──codegen.generate──▶ insns (asm.py) ──program──▶ EbpfProgram

``compile_service`` is the entry point; ``disasm.listing`` prints a program. Loading and
attaching are the adapter's (sockgate.linux.bpfsys). See docs/ebpf.md.
"""

from __future__ import annotations

from sockgate.ebpf.maps import LpmKey, MapContents, MapSpec, Verdict
from sockgate.ebpf.program import EbpfProgram, Options, compile_service

__all__ = ["EbpfProgram", "LpmKey", "MapContents", "MapSpec", "Options", "Verdict", "compile_service"]
