"""100,000 CrowdSec decisions at start-up, the agent's whole path, against nftables loading the
same bans — in one run.

The agent's path, step by step as ``agent/crowdfeed.py`` and ``agent/runtime.py`` take a
startup answer (the cycle collector paused as the feed pauses it): ``received`` (the JSON
parsed, every entry checked, the decisions held by id), ``book`` (the agent's CrowdSec entries
replaced), ``effective`` (one service's bans), ``update_bans`` (the service's pinned eBPF ban
tries written in batches: a real program loaded in a private bpffs mounted on a temporary
directory), ``save`` (the state file, which the agent writes at most every 30 s for CrowdSec:
``bansink.CROWDSEC_SAVE_S``). CPU time (``time.process_time``) is the measure: wall time on a
shared machine measures the neighbours.

The peer: ``nft -f`` of a file with the same networks in two sets (``ipv4_addr`` and
``ipv6_addr``, ``flags interval, timeout``, each element with its own timeout: what CrowdSec's
nftables bouncer keeps), in a private network namespace; its CPU time is its children's rusage.
Classic BPF: how many of these bans one program carries (bisected), and one recompile.

    PYTHONPATH=src python bench/bench_crowdsec_startup.py [--decisions 100000] [--runs 3] [--json PATH]

Root (bpffs, ``ip netns``). The mount, the namespace and the temporary files are removed even
on failure.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _kernel_bench import classic_capacity  # noqa: E402
from bench_crowdsec_stream import body  # noqa: E402

from sockgate.agent import bansink  # noqa: E402
from sockgate.agent.banbook import BanBook, BanEntry  # noqa: E402
from sockgate.bans import BannedPrefix, Origin  # noqa: E402
from sockgate.bpf import program as cbpf_program  # noqa: E402
from sockgate.crowdsec.session import Session  # noqa: E402
from sockgate.crowdsec.stream import Report  # noqa: E402
from sockgate.kernel import Kernel  # noqa: E402
from sockgate.kernel.bpfops import LinuxBpf  # noqa: E402
from sockgate.kernel.cbpf import ClassicBackend  # noqa: E402
from sockgate.kernel.ebpf import EbpfBackend  # noqa: E402
from sockgate.kernel.sockets import LINUX_OPS  # noqa: E402
from sockgate.log import Log  # noqa: E402
from sockgate.policy.parser import parse_policy  # noqa: E402
from sockgate.resolve import resolve_service  # noqa: E402

POLICY = "service web tcp/80 {\n    allow 0.0.0.0/0\n    default deny\n}\n"


def cpu(fn: Callable[[], Any]) -> tuple[Any, float]:
    c = time.process_time()
    out = fn()
    return out, time.process_time() - c


def book_of(session: Session, report: Report, now: int) -> BanBook[BannedPrefix]:
    """``CrowdsecFeed.book`` without a feed (no LAPI client needed)."""
    held = session.state.bans(now)
    return BanBook().replace_origin(Origin.CROWDSEC, (BanEntry(b, None, now, "crowdsec") for b in held.values()))


def agent_path(raw: bytes, kernel: Kernel, loaded: Any, state: str) -> dict[str, float]:
    steps: dict[str, float] = {}
    was = gc.isenabled()
    gc.disable()  # as agent/crowdfeed.py does around an answer
    try:
        now = time.monotonic_ns()
        session = Session(interval_s=1)
        report, steps["received"] = cpu(lambda: session.received(raw, now, startup=True))
        book, steps["book"] = cpu(lambda: book_of(session, report, now))
        bans, steps["effective"] = cpu(lambda: book.effective("web", now))
        _, steps["update_bans"] = cpu(lambda: kernel.update_bans(loaded, bans))
        steps["applied"] = sum(steps.values())
        _, steps["save"] = cpu(lambda: bansink.save_book(state, book, Log("text", open(os.devnull, "w"))))
    finally:
        if was:
            gc.enable()
    return steps


def networks(raw: bytes) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    s = Session(interval_s=1)
    s.received(raw, 0, startup=True)
    return sorted(s.state.bans(1), key=lambda n: (n.version, n))


def nft_cpu(nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network], runs: int) -> list[float]:
    ns = f"sgbench{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    fd, path = tempfile.mkstemp(suffix=".nft")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("table inet sgbench {\n")
            for v in (4, 6):
                mine = uncovered([n for n in nets if n.version == v])
                f.write(f"  set bans{v} {{\n    type ipv{v}_addr\n    flags interval, timeout\n    elements = {{\n")
                f.write(",\n".join(f"      {n} timeout 14400s" for n in mine))
                f.write("\n    }\n  }\n")
            f.write("}\n")
        out = []
        for _ in range(runs):
            subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", path], check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            out.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        return out
    finally:
        os.unlink(path)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def uncovered(nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``nets`` but those inside another one (an interval set refuses overlaps; they add nothing)."""
    wide = {n for n in nets if n.prefixlen < n.max_prefixlen}
    lengths = sorted({n.prefixlen for n in wide})
    return [n for n in nets if not any(l < n.prefixlen and n.supernet(new_prefix=l) in wide for l in lengths)]


def classic_fit(nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> tuple[int, float]:
    svc = parse_policy(POLICY).require_service("web")
    lo = classic_capacity(svc, nets[:20_000])
    _, took = cpu(lambda: cbpf_program.compile_service(svc, banned=nets[:lo]).encode())
    return lo, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args()
    raw = body(a.decisions)
    mount = tempfile.mkdtemp(prefix="sg-bench-bpffs-")
    tmp = tempfile.mkdtemp(prefix="sg-bench-state-")
    runs: list[dict[str, float]] = []
    try:
        subprocess.run(["mount", "-t", "bpf", "bpf", mount], check=True)
        backend = EbpfBackend(LinuxBpf(), mount)
        kernel = Kernel([ClassicBackend(LINUX_OPS), backend], LINUX_OPS)
        loaded = kernel.load(kernel.compile(resolve_service(parse_policy(POLICY).require_service("web")), backend="ebpf"))
        for _ in range(a.runs):
            kernel.update_bans(loaded, [])  # empty tries: a start-up
            runs.append(agent_path(raw, kernel, loaded, f"{tmp}/bans.json"))
        in_maps = len(backend.bans("web").list())
    finally:
        subprocess.run(["umount", "-l", mount], check=False)
        os.rmdir(mount)
        for f in os.listdir(tmp):
            os.unlink(f"{tmp}/{f}")
        os.rmdir(tmp)
    nets = networks(raw)
    nft = nft_cpu(nets, a.runs)
    fit, recompile = classic_fit(nets)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"{a.decisions:,} decisions ({len(raw) / 1e6:.1f} MB of JSON), {len(nets):,} networks banned,"
          f" {in_maps:,} entries in the ban tries; CPU seconds, medians of {a.runs} runs")
    print("  agent, eBPF: " + " | ".join(f"{k} {v:.2f}" for k, v in med.items() if k not in ("applied", "save")))
    print(f"  agent, eBPF: decisions applied {med['applied']:.2f} s CPU (budget 5 s); state file save {med['save']:.2f} s"
          " (deferred: at most every 30 s)")
    print(f"  nft -f, the same {len(uncovered(nets)):,} networks (less those inside a range) in two interval sets with timeouts: {statistics.median(nft):.2f} s CPU")
    print(f"  classic BPF: {fit:,} of these bans fit one program (the other {len(nets) - fit:,} do not);"
          f" one recompile {recompile * 1e3:.0f} ms CPU, for every ban change")
    print(f"reproduce: PYTHONPATH=src python bench/bench_crowdsec_startup.py --decisions {a.decisions} --runs {a.runs}")
    if a.json:
        Path(a.json).write_text(json.dumps({"decisions": a.decisions, "networks": len(nets), "runs": runs,
                                            "median": med, "nft_cpu": nft, "classic_fit": fit,
                                            "classic_recompile_cpu": recompile}, indent=1))


if __name__ == "__main__":
    main()
