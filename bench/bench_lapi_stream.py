"""What the decision stream costs a CrowdSec LAPI: one startup pull, and delta pulls from many
bouncers, against Debian's crowdsec on loopback (the test fixture's LAPI: own port, own SQLite).

Imports DECISIONS ban decisions (default 100,000) with ``cscli decisions import``, registers
HOSTS bouncer keys (default 100, one per simulated host), then times one startup pull through
sockgate's client, and PULLS delta pulls (default 1,000) spread round-robin over the keys. The
LAPI's own CPU time is read from /proc before and after, so "LAPI CPU per delta pull" says how
many hosts one LAPI core serves at a given interval. Bounded loops, loopback only.

    python bench/bench_lapi_stream.py [--decisions 100000] [--hosts 100] [--pulls 1000]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sockgate.crowdsec.lapi import LapiClient  # noqa: E402
from support import crowdsec  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--pulls", type=int, default=1000)
    args = ap.parse_args()
    if (reason := crowdsec.available()) is not None:
        sys.exit(reason)
    with tempfile.TemporaryDirectory() as tmp, crowdsec.lapi(Path(tmp) / "lapi") as lapi:
        csv = Path(tmp) / "decisions.csv"
        base = int(ipaddress.IPv4Address("10.0.0.0"))
        csv.write_text("duration,scope,value\n" + "".join(
            f"4h,ip,{ipaddress.IPv4Address(base + i)}\n" for i in range(args.decisions)))
        t = time.perf_counter()
        lapi.cscli("decisions", "import", "-i", str(csv))
        imported = time.perf_counter() - t
        keys = [lapi.bouncer_key(f"host{i}") for i in range(args.hosts)]
        clients = [LapiClient(lapi.url, k, timeout_s=60, max_body=256 * 1024 * 1024) for k in keys]
        assert lapi.proc is not None
        pid = lapi.proc.pid

        c0, t0 = cpu_s(pid), time.perf_counter()
        body = clients[0].pull(True)
        startup_wall, startup_cpu = time.perf_counter() - t0, cpu_s(pid) - c0
        for c in clients[1:]:
            c.pull(True)  # every host starts once, so the deltas below are deltas

        lat = []
        c0 = cpu_s(pid)
        for i in range(args.pulls):
            t = time.perf_counter()
            clients[i % len(clients)].pull(False)
            lat.append(time.perf_counter() - t)
        delta_cpu = (cpu_s(pid) - c0) / args.pulls
        lat.sort()
        print(f"{args.decisions} decisions imported in {imported:.1f} s")
        print(f"startup pull: {len(body) / 1e6:.1f} MB in {startup_wall:.2f} s, LAPI CPU {startup_cpu:.2f} s")
        print(f"delta pulls ({args.pulls} over {args.hosts} keys, nothing new): median {statistics.median(lat) * 1e3:.1f} ms, "
              f"p99 {lat[int(len(lat) * 0.99) - 1] * 1e3:.1f} ms, LAPI CPU {delta_cpu * 1e3:.2f} ms a pull "
              f"(one core: about {1 / delta_cpu:.0f} pulls/s)" if delta_cpu > 0 else "LAPI CPU not measurable")
        print(f"reproduce: python bench/bench_lapi_stream.py --decisions {args.decisions} --hosts {args.hosts} --pulls {args.pulls}")


if __name__ == "__main__":
    main()
