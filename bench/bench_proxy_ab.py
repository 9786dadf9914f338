"""Short connections through two versions of the proxy, side by side, against haproxy.

    .venv/bin/python bench/bench_proxy_ab.py --old REV [--new REV] [--runs 5] [--seconds 3]

Measures what a change to the per-connection path gave. ``REV`` is a git revision of this
repository; its ``src/`` is taken with ``git archive`` into a temporary directory (``--new``
defaults to the working tree). Both proxies run with the same explicit ``--backend`` (default
``ebpf`` as root, else ``cbpf``; printed) and a private bpf filesystem (bench_proxy.py's
``private_bpffs``: nothing pinned in the host's /sys/fs/bpf). Both proxies (one worker each, ``--listen``/``--forward`` in
front of the C echo server of bench/proxy_tools.c) and haproxy run at the same time; each run
measures them with the same 4-thread connect / 64-byte echo / close loop, interleaved in slices
shuffled per slice (``--slice``, ``--seed``: bench_proxy.py's ``measure_interleaved``), and the
ratios to haproxy are taken per run, so the machine's drift cancels. Also reported: each proxy's CPU time (user + system) per connection.
Traffic: 127.0.0.1 only; every loop is bounded by its duration.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import (PY, ROOT, Bench, Proc, add_backend_arg, add_slice_args, build_tools, echo_server,  # noqa: E402
                         free_port, machine, measure_interleaved, med, private_bpffs, slice_args_error, slices_of)


def checkout(rev: str, into: Path) -> Path:
    """``src/`` of ``rev``, extracted under ``into``, with its C relay built as setup.py builds it
    (an archive holds no compiled module: without it that proxy would relay in Python)."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    lane = into / "src" / "sockgate" / "proxy" / "_lane.c"
    if lane.exists():
        out = lane.with_name("_lane" + str(sysconfig.get_config_var("EXT_SUFFIX")))
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-std=gnu11", f"-I{sysconfig.get_paths()['include']}",
                        str(lane), "-o", str(out)], check=True)
    return into / "src"


def proxy(b: Bench, src: Path) -> Proc:
    port = free_port()
    argv = [PY, "-m", "sockgate", "proxy", "--listen", f"tcp://127.0.0.1:{port}?backlog=4096", "--forward", f"tcp://127.0.0.1:{b.backend}",
            "--backend", b.kernel]
    p = Proc(argv, port, env={"PYTHONPATH": str(src)})
    b.procs.append(p.start())
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="git revision to compare against")
    ap.add_argument("--new", help="git revision (default: the working tree)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    add_backend_arg(ap)
    add_slice_args(ap)
    args = ap.parse_args()
    error = slice_args_error(args)
    if error is not None:
        print(f"bench_proxy_ab: {error}", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    print(f"command: .venv/bin/python bench/bench_proxy_ab.py --old {args.old}"
          f"{f' --new {args.new}' if args.new else ''} --runs {args.runs} --seconds {args.seconds:g}"
          f" --slice {args.slice:g} --seed {args.seed} --backend {args.backend}")
    print(f"proxy kernel filter: --backend {args.backend} (both versions)")
    with private_bpffs(), tempfile.TemporaryDirectory(prefix="sgab") as d:
        tmp = Path(d)
        tools = build_tools(tmp)
        srcs = {"old": checkout(args.old, tmp / "old"), "new": checkout(args.new, tmp / "new") if args.new else ROOT / "src"}
        echo, echo_port = echo_server(tools)
        b = Bench(tools, tmp, echo_port, args.backend)
        try:
            procs = {name: proxy(b, src) for name, src in srcs.items()}
            procs["haproxy"] = b.haproxy()
            rate: dict[str, list[float]] = {}
            cpu: dict[str, list[float]] = {}
            ports = {name: p.port for name, p in procs.items()}
            groups = {name: p.p.pid for name, p in procs.items() if p.p is not None}
            for run in range(args.runs):
                got, used = measure_interleaved(tools, ports, groups, args.seconds, slices_of(args), args.seed + run)
                for name, r in got.items():
                    cpu.setdefault(name, []).append(used[name] * 1e6 / max(1, r.conns))
                    rate.setdefault(name, []).append(r.rate)
                    print(f"run {run + 1} {name}: {r.rate:.0f} conn/s, {cpu[name][-1]:.1f} µs CPU per connection", file=sys.stderr)
            print("\n| proxy | conn/s | × haproxy (per run) | × haproxy (median) | CPU µs per connection |")
            print("|---|---|---|---|---|")
            for name in ("old", "new", "haproxy"):
                ratios = [x / h for x, h in zip(rate[name], rate["haproxy"])]
                label = {"old": f"old ({args.old})", "new": f"new ({args.new or 'working tree'})", "haproxy": "haproxy 2.6 mode tcp"}[name]
                print(f"| {label} | {med(rate[name]):,.0f} | {', '.join(f'{x:.2f}' for x in ratios)} | {med(ratios):.2f} | {med(cpu[name]):.1f} |")
        finally:
            b.close()
            echo.terminate()
            echo.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
