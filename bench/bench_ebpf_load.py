"""A blocklist from set file to enforced: sockgate's eBPF backend against `nft -f`, 100,000 and
1,000,000 prefixes (issue 13: < 1 s and < 10 s).

Writes, from a fixed seed, a set file of N distinct prefixes (9 in 10 IPv4 — a third /24s,
the rest hosts — and 1 in 10 IPv6 /58s) and a policy denying it on one service; then, RUNS
times per size, interleaved so both see the same machine load:

* sockgate, in a fresh interpreter (imports excluded: it loads a one-rule policy first): load the policy file (read, parse,
  resolve) → ``ebpf.compile_service`` (first-match intervals, prefixes, packed trie entries,
  program) → create and fill the tries (``BPF_MAP_UPDATE_BATCH``) and load the program →
  attach it to a TCP socket. The child reports each phase and its peak RSS;
* `nft -f` of an inet table holding the same prefixes in two interval sets (IPv4, IPv6) and a
  chain dropping them on the same port, in a network namespace the bench creates and deletes
  (``ip netns add``/``del``), timed around the one `nft` process.

Prints medians, the ratio sockgate / nft, and the command that reproduces them.

    sudo .venv/bin/python bench/bench_ebpf_load.py [--sizes 100000,1000000] [--runs 3]

Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for the namespace) and nft. No traffic.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PORT = 22


def prefixes(n: int) -> tuple[list[str], list[str]]:
    """``n`` distinct, disjoint prefixes (IPv4, IPv6) from a fixed seed."""
    v4, v6 = [], []
    for i, p in enumerate(random.Random(13).sample(range(1 << 24), n)):
        if i % 10 == 9:
            v6.append(str(ipaddress.IPv6Network(((0x2001_0DB8 << 96) | (p << 70), 58))))
        elif i % 3 == 0:
            v4.append(f"{ipaddress.IPv4Address(p << 8)}/24")
        else:
            v4.append(str(ipaddress.IPv4Address((p << 8) | 7)))
    return v4, v6


def write_inputs(tmp: Path, n: int) -> tuple[Path, Path]:
    v4, v6 = prefixes(n)
    (tmp / f"set{n}.txt").write_text("# blocklist\n" + "\n".join(v4 + v6) + "\n")
    policy = tmp / f"policy{n}.conf"
    policy.write_text(f'set blocklist < "set{n}.txt"\nservice ssh tcp/{PORT} {{\n    deny @blocklist\n    default allow\n}}\n')
    elements = ["\n".join(f"  set bl{f} {{ type ipv{f}_addr; flags interval;\n   elements = {{ {', '.join(nets)} }} }}"
                          for f, nets in ((4, v4), (6, v6)))]
    nft = tmp / f"set{n}.nft"
    nft.write_text(f"table inet sgbench {{\n{elements[0]}\n  chain input {{ type filter hook input priority 0; policy accept;\n"
                   f"   tcp dport {PORT} ip saddr @bl4 drop\n   tcp dport {PORT} ip6 saddr @bl6 drop\n  }}\n}}\n")
    return policy, nft


def child(policy: str) -> None:
    """One sockgate run, in this fresh interpreter: phases in seconds and peak RSS, as JSON."""
    import socket

    import sockgate
    from sockgate.ebpf import compile_service
    from sockgate.linux import bpfsys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.ebpfstate import Loaded

    warm = Path(policy).with_name("warm.conf")  # imports the parser and loader load lazily
    warm.write_text(f"service ssh tcp/{PORT} {{\n    deny 192.0.2.1\n    default allow\n}}\n")
    compile_service(sockgate.load(str(warm)).services[0])
    t0 = time.perf_counter()
    svc = sockgate.load(policy).services[0]
    t1 = time.perf_counter()
    prog = compile_service(svc)
    t2 = time.perf_counter()
    lo = Loaded(prog)
    t3 = time.perf_counter()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        bpfsys.attach(s, lo.fd)
        t4 = time.perf_counter()
    lo.close()
    print(json.dumps({"parse": t1 - t0, "compile": t2 - t1, "maps+load": t3 - t2, "attach": t4 - t3, "total": t4 - t0,
                      "prefixes": prog.prefixes, "digest": prog.digest,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_sockgate(policy: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, __file__, "--child", str(policy)], check=True, capture_output=True,
                         text=True, env=env, timeout=600)
    got: dict[str, float] = json.loads(out.stdout)
    return got


def run_nft(nft: Path) -> float:
    ns = f"sgbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        start = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(nft)], check=True, timeout=600)
        return time.perf_counter() - start
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_ebpf_load: terminated"))  # cleanups run
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"medians of {a.runs} runs")
    with tempfile.TemporaryDirectory() as d:
        for n in (int(x) for x in a.sizes.split(",")):
            policy, nft = write_inputs(Path(d), n)
            ours: list[dict[str, float]] = []
            theirs: list[float] = []
            for _ in range(a.runs):
                ours.append(run_sockgate(policy))
                theirs.append(run_nft(nft))
            med = {k: statistics.median(r[k] for r in ours) for k in ("parse", "compile", "maps+load", "attach", "total", "rss_mb")}
            nft_s = statistics.median(theirs)
            print(f"\n{n:,} prefixes ({int(ours[0]['prefixes']):,} trie entries, digest {ours[0]['digest']}):")
            print(f"  sockgate eBPF, file → enforced: {med['total']:.2f} s [{min(r['total'] for r in ours):.2f}, "
                  f"{max(r['total'] for r in ours):.2f}] = parse {med['parse']:.2f} + compile {med['compile']:.2f} + "
                  f"maps and load {med['maps+load']:.2f} + attach {med['attach'] * 1000:.1f} ms; peak RSS {med['rss_mb']:.0f} MB")
            print(f"  nft -f, same set: {nft_s:.2f} s [{min(theirs):.2f}, {max(theirs):.2f}]; "
                  f"ratio sockgate / nft {med['total'] / nft_s:.2f}")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n"
          f"reproduce: sudo .venv/bin/python bench/bench_ebpf_load.py --sizes {a.sizes} --runs {a.runs}")


if __name__ == "__main__":
    main()
