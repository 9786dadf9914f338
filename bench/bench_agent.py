"""What the agent costs and how fast it guards: the guard gap over many restarts, and its CPU
while idle on a host with many sockets.

Usage (root): PYTHONPATH=src python bench/bench_agent.py [gap] [idle] [--restarts 100]
              [--sockets 10000] [--seconds 30] [--watch cgroup-bpf,poll] [--udp] [--runs 3]

Both run in the agent lab (tests/support/agentlab.py): the agent is its own process with a
private bpffs, watching a child cgroup this bench makes; every process the bench starts is put
in that cgroup; everything is stopped and removed at the end, also on failure.

* **gap** — a service listens on 0.0.0.0:PORT, the agent (classic BPF, policy ``allow
  127.0.0.1``) guards it; the service itself times from just before ``listen()`` to its own
  socket carrying a filter (``SO_GET_FILTER`` asked every 0.2 ms — a sleep that lasts 1–2 ms
  on a loaded machine; no other process polls, so the measurement does not compete with the
  agent for the CPUs; on a loaded machine the service's own wake-up adds to it: an upper
  bound); then it is killed and started again, RESTARTS
  times. p50, p99 (nearest rank) and max, and the agent's CPU time (utime+stime from
  /proc/PID/stat) per restart — the steadier number on a shared machine.
* **idle** — in a network namespace of its own (the agent's "host": other work's sockets on
  this machine stay out of the poll's view), a child process opens N sockets (half TCP listeners, half bound UDP sockets, on
  127.0.0.1, ephemeral ports) after the agent is ready, so the agent sees them arrive; once it
  has settled (its watcher delivered their events — a ring overflow or a poll's burst is one
  rescan — and then none for QUIET_S; at most SETTLE_S), its CPU time is read over SECONDS. Once per watch mode (``cgroup-bpf``: the ring
  buffer; ``poll``: the sock_diag poll every 2 s). Settling time and CPU are printed too. The
  policy is one TCP service; ``--udp`` adds a UDP one, so the poll dumps the UDP sockets too.

Each measurement runs RUNS times; medians are printed, with every run's value.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sockgate.errors import SockgateError  # noqa: E402
from sockgate.kernel.ebpfstore import BPFFS_ENV  # noqa: E402
from support.agentlab import AgentProc, Lab, agent_lab, guard, guarded_by, in_netns  # noqa: E402
from support.netlab import Netns  # noqa: E402

PORT = 28080
TICK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 300.0
QUIET_S = 5.0  # no new event for this long (two poll periods and more): settled
GAP_TARGET_MS = 20.0
IDLE_TARGET = 0.01  # of one core

# The timed service: listen, then ask its own socket for a filter every 0.2 ms until one is
# there (SO_GET_FILTER with room for 0 blocks: 0 when none, an error when one is attached);
# prints {"pid","fd","t","gap"}, then waits for stdin to close.
TIMED = r"""
import json, os, socket, sys, time
port = int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
bind_retry(s, port, 500)
t0 = time.monotonic()  # before listen(): the agent's wake-up may preempt us right after it
s.listen(64)
gap = None
while time.monotonic() - t0 < 5.0:
    try:
        attached = s.getsockopt(socket.SOL_SOCKET, 26) != 0
    except OSError:
        attached = True
    if attached:
        gap = time.monotonic() - t0
        break
    time.sleep(0.0002)
print(json.dumps({"pid": os.getpid(), "fd": s.fileno(), "t": t0, "gap": gap}), flush=True)
sys.stdin.read()
"""

# The crowd: N sockets, half TCP listeners, half bound UDP, on 127.0.0.1; "ready N" once open;
# held until stdin closes.
CROWD = r"""
import resource, socket, sys
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < n + 256:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, max(hard, n + 256)))
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if i % 2 == 0 else socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    if i % 2 == 0:
        s.listen(1)
    socks.append(s)
print(f"ready {len(socks)}", flush=True)
sys.stdin.read()
"""


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def nearest_rank(sorted_values: list[float], q: float) -> float:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def events(agent: AgentProc) -> int:
    """The events the agent's watcher has delivered (status: agent.watch.events); -1 while the
    agent is too busy to answer within the client's timeout."""
    try:
        return int(agent.status()["agent"]["watch"]["events"])
    except SockgateError:
        return -1


def policy(lab: Lab, udp: bool = False) -> str:
    """One TCP service; ``udp``: and a UDP one, so that the poll must watch bound UDP sockets too."""
    dns = f"service dns udp/{PORT} {{\n    allow 127.0.0.1\n    default deny\n}}\n" if udp else ""
    return lab.path("web.conf", f"service web tcp/{PORT} {{\n    allow 127.0.0.1\n    default deny\n}}\n{dns}")


def gap_run(restarts: int) -> tuple[list[float], float]:
    """Each restart's guard gap (s), and the agent's CPU seconds per restart."""
    with agent_lab() as lab:
        agent = lab.agent(policy(lab), "--backend", "cbpf")
        gaps = []
        c0 = cpu_s(agent.proc.pid)
        for _ in range(restarts):
            s = lab.server("tcp", PORT, script=TIMED)
            if s.info["gap"] is None or not guarded_by(s.info, "web"):
                raise SystemExit(f"not guarded within 5 s: {agent.stderr()}")
            gaps.append(s.info["gap"])
            s.stop()
            lab.servers.remove(s)
        return gaps, (cpu_s(agent.proc.pid) - c0) / restarts


def idle_run(sockets: int, seconds: float, watch: str, udp: bool) -> tuple[float, float, float]:
    """(idle CPU as a fraction of one core, seconds to settle, CPU seconds spent settling)."""
    ns = Netns()  # the agent's "host": other work's sockets on this machine stay out of the poll
    try:
        with agent_lab() as lab:
            os.environ[BPFFS_ENV] = lab.bpffs  # this process reads the guard the agent pinned there
            here = in_netns(ns.name)
            agent = lab.agent(policy(lab, udp), "--watch", watch, prefix=here)
            guarded = lab.server("tcp", PORT, prefix=here)  # one service guarded, as on a real host
            crowd = lab.spawn([*here, sys.executable, "-I", "-c", CROWD, str(sockets)])
            try:
                return _settle_and_measure(agent, guarded.info, crowd, seconds)
            finally:
                if crowd.poll() is None:
                    os.killpg(crowd.pid, signal.SIGKILL)
                crowd.wait(10)
                for pipe in (crowd.stdin, crowd.stdout):
                    if pipe is not None:
                        pipe.close()
    finally:
        ns.delete()


def _settle_and_measure(agent: AgentProc, guarded: dict[str, Any], crowd: subprocess.Popen[str],
                        seconds: float) -> tuple[float, float, float]:
    pid = agent.proc.pid
    base = events(agent)
    t0, c0 = time.monotonic(), cpu_s(pid)
    assert crowd.stdout is not None
    line = crowd.stdout.readline()
    if not line.startswith("ready"):
        raise SystemExit(f"the crowd did not open its sockets: {line!r}")
    last, still, busy = -1, 0.0, 0
    while True:  # settled: the crowd was noticed, then no event for QUIET_S
        if time.monotonic() - t0 > SETTLE_S:
            raise SystemExit(f"the agent did not settle within {SETTLE_S} s ({events(agent)} events)")
        time.sleep(0.5)
        n = events(agent)
        busy += n < 0
        still = still + 0.5 if n == last else 0.0
        last = n
        if n > base and still >= QUIET_S:
            break
    settle, settle_cpu = time.monotonic() - t0 - QUIET_S, cpu_s(pid) - c0
    w0, m0 = time.monotonic(), cpu_s(pid)
    time.sleep(seconds)
    idle = (cpu_s(pid) - m0) / (time.monotonic() - w0)
    if not guarded_by(guarded, "web"):
        raise SystemExit(f"the guarded service lost its guard: {guard(guarded['pid'], guarded['fd'])}")
    if busy:
        print(f"  (the control socket did not answer {busy} status calls while settling)", flush=True)
    return idle, settle, settle_cpu


def fmt(values: list[float], unit: str, scale: float = 1.0, digits: int = 2) -> str:
    return f"{statistics.median(values) * scale:.{digits}f} {unit} [" + ", ".join(
        f"{v * scale:.{digits}f}" for v in values) + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="*", help="gap, idle (default: both)")
    ap.add_argument("--restarts", type=int, default=100)
    ap.add_argument("--sockets", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--watch", default="cgroup-bpf,poll")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--udp", action="store_true", help="idle: a UDP service in the policy too (the poll then dumps UDP)")
    a = ap.parse_args()
    a.what = a.what or ["gap", "idle"]
    if set(a.what) - {"gap", "idle"}:
        ap.error(f"what: gap or idle, not {' '.join(a.what)}")
    if os.geteuid() != 0:
        raise SystemExit("needs root (the agent: CAP_BPF, CAP_NET_ADMIN, CAP_SYS_PTRACE)")
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs", flush=True)
    if "gap" in a.what:
        p50s, p99s, maxes, cpus = [], [], [], []
        for _ in range(a.runs):
            gaps, cpu = gap_run(a.restarts)
            gaps.sort()
            p50s.append(nearest_rank(gaps, 0.50))
            p99s.append(nearest_rank(gaps, 0.99))
            maxes.append(gaps[-1])
            cpus.append(cpu)
            print(f"  run: p50 {p50s[-1] * 1e3:.2f} ms, p99 {p99s[-1] * 1e3:.2f} ms, max {gaps[-1] * 1e3:.2f} ms, "
                  f"agent CPU {cpu * 1e3:.2f} ms per restart", flush=True)
        print(f"guard gap listen() -> guarded, {a.restarts} restarts x {a.runs} runs: p50 {fmt(p50s, 'ms', 1e3)}, "
              f"p99 {fmt(p99s, 'ms', 1e3)} (target < {GAP_TARGET_MS:g} ms), max {fmt(maxes, 'ms', 1e3)}, "
              f"agent CPU per restart {fmt(cpus, 'ms', 1e3)}", flush=True)
    if "idle" in a.what:
        for watch in a.watch.split(","):
            idles, settles, settle_cpus = [], [], []
            for _ in range(a.runs):
                idle, settle, settle_cpu = idle_run(a.sockets, a.seconds, watch, a.udp)
                idles.append(idle)
                settles.append(settle)
                settle_cpus.append(settle_cpu)
                print(f"  run ({watch}): idle {idle * 100:.3f} % of a core, settled in {settle:.1f} s "
                      f"({settle_cpu:.2f} s CPU)", flush=True)
            print(f"agent idle CPU, {a.sockets} sockets on the host, watch {watch}{' (+udp service)' if a.udp else ''}, {a.seconds:g} s x {a.runs} runs: "
                  f"{fmt(idles, '% of one core', 100, 3)} (target < {IDLE_TARGET * 100:g} %); settling "
                  f"{fmt(settles, 's', 1, 1)}, {fmt(settle_cpus, 's CPU', 1, 2)}", flush=True)
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"(all children's CPU: {r.ru_utime + r.ru_stime:.1f} s)")


if __name__ == "__main__":
    main()
