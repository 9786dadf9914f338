"""The proxy's bans in an eBPF filter: its service's pinned ban tries made the sources its
limits ban now, in place (``Kernel.update_bans``, as ``run`` and the agent do) — no program
compiled, loaded or attached per ban, so a ban costs a map update and not a recompile of a
policy that may hold a million prefixes. A classic filter has no maps: its bans are compiled
into the program (``Runner.compile``) and a ban rebuilds it.

Each ban keeps its end (the limiter's, on this process's CLOCK_MONOTONIC, which ``BanMaps``
moves to the program's), so a proxy that dies leaves no ban behind for longer than it would
have lasted; the lift is written all the same when the limiter lifts it. Sources that are not
IP addresses (a Unix peer's uid) stay in user space, as with classic BPF.
"""

from __future__ import annotations

import time

from sockgate.bans import BannedPrefix, Origin
from sockgate.kernel import Kernel, Loaded
from sockgate.proxy.admission import Admission
from sockgate.proxy.limits import as_network


def kernel_bans(admission: Admission, now: float) -> list[BannedPrefix]:
    """The bans ``admission`` holds at ``now`` (monotonic seconds), as the kernel takes them."""
    out = []
    for source, until in admission.banned_until(now).items():
        network = as_network(source)
        if network is not None:
            out.append(BannedPrefix(network, max(1, round(until * 1e9)), Origin.LIMIT))
    return sorted(out, key=lambda b: (b.network.version, b.network))


def in_maps(loaded: Loaded | None) -> bool:
    """Whether ``loaded`` reads its bans from maps (eBPF) rather than holding them."""
    return loaded is not None and loaded.compiled.backend == "ebpf"


def sync(kernel: Kernel, loaded: Loaded | None, admission: Admission) -> bool:
    """``loaded``'s ban maps made ``admission``'s bans; False (nothing done) when it holds
    its bans in its program. Raises SockgateError when the maps cannot be written."""
    if not in_maps(loaded):
        return False
    assert loaded is not None
    kernel.update_bans(loaded, kernel_bans(admission, time.monotonic()))
    return True
