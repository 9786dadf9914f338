"""The eBPF filter against the classic one: program size, per-packet cost and load time for
the same policy, with 1,000 and 100,000 prefixes, and `nft -f` loading the same set.

Policy: N allowed /32 hosts spread over 10.0.0.0/8 plus 127.0.0.1, default deny (N prefixes
in the eBPF trie; N disjoint ranges for the classic compiler, which takes about 4,000).

* per packet, eBPF: BPF_PROG_TEST_RUN ``--repeat`` times on one Ethernet frame (the kernel's
  mean ns per run, no socket), for an allowed and a refused source, the program without
  service state and with it (bans, counters, events; the refused frame is a counted SYN).
  The classic program has no eBPF fd, so BPF_PROG_TEST_RUN cannot run it:
* per packet, on a socket: ``--datagrams`` UDP datagrams from a refused source
  (127.0.0.9) sent over loopback by udpburst.c (sendmmsg) to a socket whose filter drops
  them; the time per datagram minus that with a one-instruction ``ret 0`` classic filter,
  measured right before, is the filter's own cost (loopback delivers in the sender's
  context), classic and eBPF alike;
* load: compile → enforced on a socket (eBPF: compile, create and fill the maps, load,
  attach; classic: compile, attach), and `nft -f` of an inet table with an interval set of
  the same prefixes in a new network namespace (``unshare -n``). bench_ebpf_load.py times a
  set file of 100,000 and 1,000,000 prefixes from file to enforced, against `nft -f`.

Medians over ``--runs`` runs.

    .venv/bin/python bench/bench_ebpf_filter.py [--runs 5] [--repeat 100000] [--sizes 1000,100000]

Needs root (CAP_BPF, CAP_NET_ADMIN) and a C compiler. Traffic: 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import charts  # noqa: E402
from sockgate import bpf  # noqa: E402
from sockgate.ebpf import Options, compile_service  # noqa: E402
from sockgate.errors import CompileError  # noqa: E402
from sockgate.linux import bpfsys, filter as cfilter  # noqa: E402
from sockgate.policy.ir import Action, AddrMatch, Rule, Service  # noqa: E402
from sockgate.policy.source import Span  # noqa: E402
from support.ebpfstate import Loaded, frame  # noqa: E402

RET0 = struct.pack("=HBBI", 0x06, 0, 0, 0)  # classic BPF_RET | BPF_K 0


def policy(n: int) -> Service:
    step = (1 << 24) // n
    hosts = [ipaddress.IPv4Network(((10 << 24) | (i * step + 1), 32)) for i in range(n)]
    hosts.append(ipaddress.IPv4Network("127.0.0.1/32"))
    r = Rule(Action.ALLOW, AddrMatch(tuple(hosts)), Span("bench", 1, 1), "allow")
    return Service("bench", (r,), Action.DENY)


def median_of(runs: int, f: Callable[[], float]) -> float:
    return statistics.median(f() for _ in range(runs))


def test_run_ns(lo: Loaded, src: str, repeat: int) -> float:
    return float(bpfsys.prog_test_run(lo.fd, frame(src), repeat)[1])


def send_ns(sender: str, attach: Callable[[socket.socket], None], datagrams: int) -> float:
    """ns per datagram from the refused 127.0.0.9 to a socket carrying ``attach``'s filter."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        attach(u)
        out = subprocess.run([sender, "127.0.0.9", str(u.getsockname()[1]), str(datagrams)], check=True,
                             capture_output=True, text=True, timeout=120)
        return float(out.stdout)


def build_sender(tmpdir: str) -> str:
    exe = os.path.join(tmpdir, "udpburst")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("bench_ebpf_filter: needs a C compiler for udpburst.c")
    subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "udpburst.c")], check=True, timeout=120)
    return exe


def load_ebpf(svc: Service, options: Options | None) -> float:
    start = time.perf_counter()
    lo = Loaded(compile_service(svc, options=options))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        bpfsys.attach(u, lo.fd)
        took = time.perf_counter() - start
    lo.close()
    return took


def load_cbpf(svc: Service) -> float:
    start = time.perf_counter()
    prog = bpf.compile_service(svc)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        cfilter.attach(u, prog.encode())
        return time.perf_counter() - start


def load_nft(svc: Service) -> float:
    nets = [str(n) for n in svc.rules[0].match.nets]  # type: ignore[attr-defined]
    text = ("table inet bench {\n set allowed { type ipv4_addr; flags interval; elements = { " + ", ".join(nets)
            + " } }\n chain input { type filter hook input priority 0; policy accept;\n"
            "  tcp dport 22 ip saddr != @allowed drop\n }\n}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
        f.write(text)
        f.flush()
        start = time.perf_counter()
        subprocess.run(["unshare", "-n", "nft", "-f", f.name], check=True)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=100_000)
    ap.add_argument("--datagrams", type=int, default=200_000)
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--chart", default=str(charts.DOCS / "filter-cost.png"), help="the PNG chart written (bench/charts.py)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        points = run(a, build_sender(tmp))
    sizes = sorted({n for p in points.values() for n in p})
    charts.lines(Path(a.chart), "Per-packet cost of a refused packet against the number of prefixes", sizes,
                 {name: [p.get(n) for n in sizes] for name, p in points.items()}, "prefixes in the policy",
                 "ns per refused packet (median)",
                 charts.caption(f"bench/bench_ebpf_filter.py --runs {a.runs} --sizes {a.sizes}; test run: BPF_PROG_TEST_RUN,"
                                " no socket; on a socket: over a `ret 0` filter"))


def run(a: argparse.Namespace, sender: str) -> dict[str, dict[int, float]]:
    """Prints the results; returns the per-packet costs of a refused packet by series and size."""
    points: dict[str, dict[int, float]] = {}
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs; medians of {a.runs} runs")
    for n in (int(x) for x in a.sizes.split(",")):
        svc = policy(n)
        try:
            cprog: bpf.Program | None = bpf.compile_service(svc)
        except CompileError:
            cprog = None
        bare, state = compile_service(svc), compile_service(svc, options=Options(protocol="udp"))
        print(f"\n{n} prefixes: instructions classic {len(cprog) if cprog else 'does not fit'}, "
              f"eBPF {len(bare)} (rules only), {len(state)} (with service state)")
        loaded = {"eBPF rules only": Loaded(bare), "eBPF with state": Loaded(state)}
        try:
            for name, lo in loaded.items():
                ok = median_of(a.runs, lambda: test_run_ns(lo, "127.0.0.1", a.repeat))
                no = median_of(a.runs, lambda: test_run_ns(lo, "10.0.0.2", a.repeat))
                print(f"  test run, {name}: allowed {ok:.0f} ns, refused {no:.0f} ns per packet")
                points.setdefault(f"test run, {name}", {})[n] = no
            filters: dict[str, Callable[[socket.socket], None]] = {
                name: (lambda u, fd=lo.fd: bpfsys.attach(u, fd)) for name, lo in loaded.items()}
            if cprog is not None:
                filters["classic"] = lambda u: cfilter.attach(u, cprog.encode())
            diffs: dict[str, list[float]] = {name: [] for name in filters}
            for _ in range(a.runs):  # interleaved, so each difference sees the same machine load
                for name, attach in filters.items():
                    base = send_ns(sender, lambda u: cfilter.attach(u, RET0), a.datagrams)
                    diffs[name].append(send_ns(sender, attach, a.datagrams) - base)
            print("  on a socket, per refused datagram over `ret 0` (median [min, max]): "
                  + ", ".join(f"{name} {statistics.median(d):+.0f} [{min(d):+.0f}, {max(d):+.0f}] ns"
                              for name, d in diffs.items()))
            for name, d in diffs.items():
                points.setdefault(f"on a socket, {name}", {})[n] = statistics.median(d)
        finally:
            for lo in loaded.values():
                lo.close()
        print(f"  load: eBPF {median_of(a.runs, lambda: load_ebpf(svc, None)) * 1000:.0f} ms (rules only), "
              f"{median_of(a.runs, lambda: load_ebpf(svc, Options(protocol='udp'))) * 1000:.0f} ms (with state); "
              f"classic {f'{median_of(a.runs, lambda: load_cbpf(svc)) * 1000:.0f} ms' if cprog else 'does not fit'}; "
              f"nft -f {median_of(a.runs, lambda: load_nft(svc)) * 1000:.0f} ms")
    return points


if __name__ == "__main__":
    main()
