"""What putting N bans into the kernel costs: the eBPF backend's pinned ban tries
(kernel/banmaps.py) against ``nft -f`` loading the same addresses into an nftables set, and how
many bans classic BPF holds at all and what its recompile costs.

Usage (root): python bench/bench_bans.py [--bans 100000] [--runs 5]

* eBPF: a service program is loaded (not attached; the maps are what a ban writes) in a private
  bpf filesystem mounted on a temporary directory; ``apply`` of N bans into the empty tries, of
  the same set again (a no-op diff), of a set with 10 % replaced, ``list`` and ``sweep``.
* nftables: in a private network namespace (``ip netns``), ``nft -f`` of a file declaring
  ``table inet sgbench`` with a set ``{ type ipv4_addr; flags timeout; }`` holding the N
  addresses with a timeout each (what fail2ban's and CrowdSec's nftables actions build), after
  ``nft flush ruleset``; the process's wall time.
* classic BPF: the largest number of these bans one classic program carries (bisected over
  ``bpf.program.compile_service(..., banned=)``), and the recompile (compile + encode) of that
  program, as each ban would need.

Medians of ``--runs``; ratios printed. The addresses are random distinct IPv4 hosts from a fixed
seed. Nothing outside the temporary mount and the namespace is touched; both are removed.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path[:0] = [str(SRC), str(SRC.parent / "tests")]

from _kernel_bench import classic_capacity  # noqa: E402
from sockgate.bpf import program as cbpf_program  # noqa: E402
from sockgate.ebpf.layout import Origin  # noqa: E402
from sockgate.kernel import Kernel  # noqa: E402
from sockgate.kernel.bpfops import LinuxBpf  # noqa: E402
from sockgate.kernel.cbpf import ClassicBackend  # noqa: E402
from sockgate.kernel.ebpf import EbpfBackend  # noqa: E402
from sockgate.kernel.sockets import LINUX_OPS  # noqa: E402
from sockgate.policy.parser import parse_policy  # noqa: E402
from sockgate.resolve import resolve_service  # noqa: E402
from support.pinned import private_bpffs  # noqa: E402

POLICY = "service bench {\n    allow 0.0.0.0/0\n    default deny\n}\n"
HOUR_NS = 3600 * 10**9


@dataclass(frozen=True)
class Ban:
    network: ipaddress.IPv4Network
    expires_ns: int
    origin: int = Origin.CROWDSEC


def hosts(n: int, seed: int) -> list[ipaddress.IPv4Address]:
    rng = random.Random(seed)
    picked: set[int] = set()
    while len(picked) < n:
        picked.add(rng.randrange(0x01000000, 0xE0000000))
    return [ipaddress.IPv4Address(a) for a in sorted(picked)]


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def ebpf(addrs: list[ipaddress.IPv4Address], runs: int) -> dict[str, float]:
    with private_bpffs() as mount:
        backend = EbpfBackend(LinuxBpf(), mount)
        kernel = Kernel([ClassicBackend(LINUX_OPS), backend], LINUX_OPS)
        kernel.load(kernel.compile(resolve_service(parse_policy(POLICY).require_service("bench")), backend="ebpf"))
        maps = backend.bans("bench")
        now = time.monotonic_ns()
        bans = [Ban(ipaddress.IPv4Network(a), now + HOUR_NS) for a in addrs]
        fresh = [Ban(ipaddress.IPv4Network((0xF0000000 + i, 32)), now + HOUR_NS) for i in range(len(bans) // 10)]
        changed = bans[len(bans) // 10:] + fresh  # 240/4 is never in ``hosts``
        out: dict[str, list[float]] = {k: [] for k in ("apply", "again", "tenth", "list", "sweep", "one")}
        for _ in range(runs):
            maps.apply([])
            out["apply"].append(timed(lambda: maps.apply(bans)))
            out["again"].append(timed(lambda: maps.apply(bans)))
            out["tenth"].append(timed(lambda: maps.apply(changed)))
            out["list"].append(timed(maps.list))
            out["sweep"].append(timed(lambda: maps.sweep(now + 2 * HOUR_NS)))
            assert maps.list() == [], "sweep left entries"
            maps.apply(bans)
            one = [timed(lambda: maps.put(ipaddress.IPv4Network((0xF1000000 + i, 32)), now + HOUR_NS, Origin.FAIL2BAN))
                   for i in range(50)]
            out["one"].append(median(one))  # one more ban into 100,000: what fail2ban's action costs in the kernel
        return {k: median(v) for k, v in out.items()}


def nft(addrs: list[ipaddress.IPv4Address], runs: int) -> tuple[float, float] | None:
    """``nft -f`` of the whole set, and ``nft add element`` of one more (medians)."""
    if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        return None
    ns = f"sgbench{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
            f.write("table inet sgbench {\n  set bans4 {\n    type ipv4_addr\n    flags timeout\n    elements = {\n")
            f.write(",\n".join(f"      {a} timeout 3600s" for a in addrs))
            f.write("\n    }\n  }\n}\n")
            path = f.name
        times, ones = [], []
        for _ in range(runs):
            subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
            t = time.perf_counter()
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", path], check=True)
            times.append(time.perf_counter() - t)
            for i in range(10):  # one more element, as fail2ban's nftables action adds it
                t = time.perf_counter()
                subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "element", "inet", "sgbench", "bans4",
                                f"{{ 241.0.0.{i} timeout 3600s }}"], check=True)
                ones.append(time.perf_counter() - t)
        os.unlink(path)
        return median(times), median(ones)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def classic(addrs: list[ipaddress.IPv4Address], runs: int) -> tuple[int, float, float]:
    """The most bans one classic program holds, its recompile time, and its attach time."""
    svc = parse_policy(POLICY).require_service("bench")
    lo = classic_capacity(svc, list(addrs))
    compile_times = [timed(lambda: cbpf_program.compile_service(svc, banned=addrs[:lo]).encode()) for _ in range(runs)]
    raw = cbpf_program.compile_service(svc, banned=addrs[:lo]).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        attach_times = [timed(lambda: LINUX_OPS.attach_classic(s.fileno(), raw, "bench")) for _ in range(runs)]
    return lo, median(compile_times), median(attach_times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bans", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=15)
    a = ap.parse_args()
    addrs = hosts(a.bans, a.seed)
    e = ebpf(addrs, a.runs)
    n = nft(addrs, a.runs)
    fit, recompile, attach = classic(addrs, a.runs)
    print(f"{a.bans:,} IPv4 bans, medians of {a.runs} runs")
    print(f"  eBPF maps: apply into empty tries {e['apply']:.3f} s | same set again {e['again']:.3f} s"
          f" | 10 % replaced {e['tenth']:.3f} s | list {e['list']:.3f} s | sweep all {e['sweep']:.3f} s"
          f" | one more ban (put) {e['one'] * 1e3:.3f} ms")
    if n is None:
        print("  nft -f: nft not installed")
    else:
        print(f"  nft -f into a set (private netns): {n[0]:.3f} s — {n[0] / e['apply']:.2f}x the eBPF apply;"
              f" nft add element (one more) {n[1] * 1e3:.1f} ms — {n[1] / e['one']:.0f}x the eBPF put")
    print(f"  classic BPF: at most {fit:,} of these bans in one program; recompile {recompile * 1e3:.1f} ms,"
          f" attach {attach * 1e6:.0f} µs per socket, for every ban change; the other {a.bans - fit:,} do not fit")


if __name__ == "__main__":
    main()
