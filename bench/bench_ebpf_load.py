"""A blocklist from set file to enforced: sockgate's eBPF backend against `nft -f`, 100,000 and
1,000,000 prefixes (issue 13: < 1 s and < 10 s).

Writes, from a fixed seed, a set file of N distinct prefixes (9 in 10 IPv4 — a third /24s,
the rest hosts — and 1 in 10 IPv6 /58s) and a policy denying it on one service; then, RUNS
times per size, interleaved so both see the same machine load:

* sockgate, in a fresh interpreter (imports excluded: it guards a socket with a one-rule policy
  first), through the eBPF backend as ``run``, ``attach`` and the library use it, in a private
  bpf filesystem: ``sockgate.load`` (read, parse) → ``resolve`` and ``Kernel.compile`` (first-match
  intervals, prefixes, packed trie entries, program) → ``Kernel.load`` (service maps, the
  tries created and filled by ``BPF_MAP_UPDATE_BATCH`` before the program that names them is
  loaded and pinned) → ``Kernel.apply`` (``SO_ATTACH_BPF`` on a TCP listener, recorded). The
  child reports each phase in wall and CPU time (``time.process_time``: user + system of the
  process, so the kernel's work in ``bpf(2)`` counts), and its peak RSS; the parent checks the
  socket reads back as guarded by the service;
* `nft -f` of an inet table holding the same prefixes in two interval sets (IPv4, IPv6) and a
  chain dropping them on the same port, in a network namespace the bench creates and deletes
  (``ip netns add``/``del``), timed around the one `nft` process (wall, and its CPU from
  ``wait4``).

Prints medians [min, max], the ratios sockgate / nft, and the command that reproduces them.
CPU time is the measure to compare on a shared machine; wall time is the target's.

    sudo .venv/bin/python bench/bench_ebpf_load.py [--sizes 100000,1000000] [--runs 5]

Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for the namespace and the mount) and nft.
No traffic.
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
sys.path[:0] = [str(SRC), str(SRC.parent / "tests")]

from support.pinned import private_bpffs  # noqa: E402

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


PHASES = ("parse", "compile", "load", "attach")


def child(policy: str, mount: str) -> None:
    """One sockgate run, in this fresh interpreter: each phase's wall and CPU seconds, the
    peak RSS, as JSON."""
    import socket

    import sockgate
    from sockgate.kernel import Kernel, Slot, Step
    from sockgate.kernel.bpfops import LinuxBpf
    from sockgate.kernel.ebpf import EbpfBackend
    from sockgate.kernel.sockets import LINUX_OPS
    from sockgate.resolve import resolve

    kernel = Kernel([EbpfBackend(LinuxBpf(), mount)], LINUX_OPS)

    def enforce(path: str, sock: socket.socket) -> tuple[dict[str, float], object]:
        marks = [(time.perf_counter(), time.process_time())]
        policy = sockgate.load(path)
        marks.append((time.perf_counter(), time.process_time()))
        program = kernel.compile(resolve(policy, "ssh"), backend="ebpf")
        marks.append((time.perf_counter(), time.process_time()))
        loaded = kernel.load(program)
        marks.append((time.perf_counter(), time.process_time()))
        kernel.apply([Step(Slot(sock.fileno(), "bench listener"), loaded)])
        marks.append((time.perf_counter(), time.process_time()))
        out = {}
        for name, (w0, c0), (w1, c1) in zip(PHASES, marks, marks[1:]):
            out[name], out[name + "_cpu"] = w1 - w0, c1 - c0
        out["total"], out["total_cpu"] = marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]
        return out, program

    warm = Path(policy).with_name("warm.conf")
    warm.write_text(f"service ssh tcp/{PORT} {{\n    deny 192.0.2.1\n    default allow\n}}\n")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        enforce(str(warm), s)  # imports, and the service maps pinned once (a restart finds them)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        s.listen()
        got, program = enforce(policy, s)
        info = kernel.read(s.fileno())
        if (info.service, info.digest, info.backend) != ("ssh", getattr(program, "digest"), "ebpf"):
            sys.exit(f"the listener does not read back as guarded: {info}")
    print(json.dumps({**got, "prefixes": getattr(program, "prefixes"), "digest": getattr(program, "digest"),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``cmd``: its wall seconds, its CPU seconds (user + system, from wait4) and stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])}...: exit status {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, out


def run_sockgate(policy: Path, mount: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    _, _, out = measured([sys.executable, __file__, "--child", str(policy), mount], env)
    got: dict[str, float] = json.loads(out)
    return got


def run_nft(nft: Path) -> tuple[float, float]:
    """``nft -f`` in a fresh namespace: wall and CPU seconds."""
    ns = f"sgbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        wall, cpu, _ = measured(["ip", "netns", "exec", ns, "nft", "-f", str(nft)])
        return wall, cpu
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def spread(xs: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    return f"{statistics.median(xs) * scale:{fmt}} [{min(xs) * scale:{fmt}}, {max(xs) * scale:{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--child", nargs=2, metavar=("POLICY", "BPFFS"))
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_ebpf_load: terminated"))  # cleanups run
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"medians [min, max] of {a.runs} runs; seconds")
    rows = []
    with tempfile.TemporaryDirectory() as d, private_bpffs() as mount:
        for n in (int(x) for x in a.sizes.split(",")):
            policy, nft = write_inputs(Path(d), n)
            ours: list[dict[str, float]] = []
            theirs: list[tuple[float, float]] = []
            for _ in range(a.runs):
                ours.append(run_sockgate(policy, mount))
                theirs.append(run_nft(nft))
            col = {k: [r[k] for r in ours] for k in ours[0] if k != "digest"}
            nft_wall, nft_cpu = [w for w, _ in theirs], [c for _, c in theirs]
            med = {k: statistics.median(v) for k, v in col.items()}
            print(f"\n{n:,} prefixes ({int(ours[0]['prefixes']):,} trie entries, digest {ours[0]['digest']}):")
            print(f"  sockgate eBPF, file → enforced: wall {spread(col['total'])}, CPU {spread(col['total_cpu'])}; "
                  f"peak RSS {med['rss_mb']:.0f} MB")
            print("    CPU by phase: " + ", ".join(f"{k} {med[k + '_cpu']:.2f}" for k in PHASES))
            print(f"  nft -f, same set: wall {spread(nft_wall)}, CPU {spread(nft_cpu)}")
            print(f"  sockgate / nft: wall {med['total'] / statistics.median(nft_wall):.2f}, "
                  f"CPU {med['total_cpu'] / statistics.median(nft_cpu):.2f}")
            rows.append(f"| {n:,} | {spread(col['total'])} | {spread(col['total_cpu'])} | "
                        + " / ".join(f"{med[k + '_cpu']:.2f}" for k in PHASES)
                        + f" | {spread(nft_wall)} | {spread(nft_cpu)} | {med['total'] / statistics.median(nft_wall):.2f}"
                        f" / {med['total_cpu'] / statistics.median(nft_cpu):.2f} | {med['rss_mb']:.0f} MB |")
    print("\n| prefixes | sockgate wall | sockgate CPU | CPU: parse / compile / load / attach | `nft -f` wall "
          "| `nft -f` CPU | sockgate / nft, wall / CPU | peak RSS |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n"
          f"reproduce: sudo .venv/bin/python bench/bench_ebpf_load.py --sizes {a.sizes} --runs {a.runs}")


if __name__ == "__main__":
    main()
