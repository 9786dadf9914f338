"""How long the bouncer takes to turn a CrowdSec startup answer into bans, before the kernel.

Builds, from a fixed seed, a ``/v1/decisions/stream?startup=true`` body of N decisions (default
100,000) as the LAPI writes them — IPv4 and IPv6 ``Ip`` decisions, some ``Range``, a few
``captcha`` — then times, RUNS times (default 3), the three pure steps: ``parse`` (JSON and every
entry checked), ``apply`` (the state by id), ``bans`` (the desired set), and prints the medians
of wall-clock and CPU time (CPU is steadier on a shared machine).

    python bench/bench_crowdsec_stream.py [--decisions 100000] [--runs 3]

Budget (issue 15): 100,000 decisions at start-up applied in < 5 s with eBPF, the kernel's map
updates included; this is the part before them. No sockets, no root.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import time

from sockgate.crowdsec.stream import StreamState, parse


def body(n: int, seed: int = 15) -> bytes:
    rng = random.Random(seed)
    new = []
    for i in range(n):
        r = rng.random()
        if r < 0.7:
            scope, value = "Ip", str(ipaddress.IPv4Address(rng.getrandbits(32)))
        elif r < 0.9:
            scope, value = "Ip", str(ipaddress.IPv6Address(0x2001_0DB8 << 96 | rng.getrandbits(96)))
        else:
            scope, value = "Range", str(ipaddress.IPv4Network((rng.getrandbits(24) << 8, 24)))
        secs = rng.randrange(60, 4 * 3600)
        new.append({"duration": f"{secs // 3600}h{secs // 60 % 60}m{secs % 60}.{rng.randrange(10**9):09d}s",
                    "id": i + 1, "origin": "crowdsec", "scenario": "crowdsecurity/ssh-bf", "scope": scope,
                    "type": "captcha" if rng.random() < 0.01 else "ban", "value": value})
    return json.dumps({"new": new, "deleted": []}).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    raw = body(args.decisions)
    times: dict[str, list[tuple[float, float]]] = {"parse": [], "apply": [], "bans": [], "total": []}
    for _ in range(args.runs):
        w0, c0 = time.perf_counter(), time.process_time()
        batch = parse(raw, 0, startup=True, max_entries=args.decisions)
        w1, c1 = time.perf_counter(), time.process_time()
        state = StreamState(capacity=args.decisions)
        state.apply(batch)
        w2, c2 = time.perf_counter(), time.process_time()
        held = state.bans(1)
        w3, c3 = time.perf_counter(), time.process_time()
        for name, w, c in (("parse", w1 - w0, c1 - c0), ("apply", w2 - w1, c2 - c1), ("bans", w3 - w2, c3 - c2),
                           ("total", w3 - w0, c3 - c0)):
            times[name].append((w, c))
    print(f"{args.decisions} decisions, {len(raw) / 1e6:.1f} MB of JSON, {len(held)} networks banned")
    for name, runs in times.items():
        print(f"  {name:6} wall {statistics.median(w for w, _ in runs):.2f} s  cpu {statistics.median(c for _, c in runs):.2f} s")
    print(f"reproduce: python bench/bench_crowdsec_stream.py --decisions {args.decisions} --runs {args.runs}")


if __name__ == "__main__":
    main()
