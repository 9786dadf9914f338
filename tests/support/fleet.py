"""A CrowdSec fleet on one machine: N hosts as N network namespaces, one real LAPI, and a prober
that sees every host from outside, as a client on the network would.

Layout (nothing in the machine's own namespace: every address is in namespaces made here)::

    LAN namespace: bridge sgbr 198.18.0.1/16 — the LAPI listens there (support/crowdsec.py,
                   run in the namespace); the prober's sources 198.18.0.66 (the attacker a
                   decision bans) and 198.18.0.67 (a bystander that stays allowed)
    host i:        its own namespace, eth0 198.18.1.(i+1)/16 veth-joined to the bridge; a TCP
                   service (accepts and closes) on PORT, in a cgroup of its own; and
                   ``sockgate agent --backend ebpf --crowdsec http://198.18.0.1:P`` run in the
                   namespace (``nsenter --net``: the mount namespace stays, so its control
                   socket, key file and bpffs are plain paths), its own bouncer key, cgroup
                   and bpffs directory

A probe is a non-blocking TCP connect from the LAN namespace to every host at once: a
completed handshake (or a reset) means the host let the source in, a SYN with no answer within
``wait`` means its guard dropped it — confirmed by a second, longer probe before it counts, so
a slow scheduler on a loaded machine is not taken for a ban. Readiness is each agent's
``READY=1`` and its status saying the LAPI is up; every wait has a bound. ``fleet()`` tears
down everything it made — agents, services, the LAPI, namespaces, cgroups, the bpffs — even
when the body fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sockgate.agent.client import call
from sockgate.agent.protocol import Status
from sockgate.errors import SockgateError
from sockgate.linux import cgroupbpf
from support import crowdsec, netlab
from support.agentlab import joining
from support.pinned import private_bpffs

LAN_ADDR = "198.18.0.1"
ATTACKER = "198.18.0.66"
BYSTANDER = "198.18.0.67"
PORT = 8022
START_TIMEOUT = 60.0  # seconds for every agent to be ready and pulling (N agents start at once)
STOP_TIMEOUT = 10.0

# The service: accept and close, so probes never fill the backlog.
SERVICE = r"""
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1024)
print(os.getpid(), flush=True)
while True:
    try:
        c, _ = s.accept()
    except OSError:  # ended before its accept (a ban's SOCK_DESTROY)
        continue
    c.close()
"""


def host_addr(i: int) -> str:
    return f"198.18.1.{i + 1}"


@dataclass
class Host:
    index: int
    netns: str
    addr: str
    cgroup: str
    control: str
    service: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    log: str = ""

    def status(self) -> dict[str, Any]:
        return dict(call(self.control, Status()).result or {})

    def bouncer(self) -> dict[str, Any]:
        """What the agent's status says of its bouncer and bans (for a failure's message)."""
        try:
            st = self.status()
            return {"crowdsec": st["sources"]["crowdsec"], "bans": st["bans"]["items"]}
        except (SockgateError, KeyError, TypeError) as e:
            return {"status": str(e)}

    def pulling(self) -> bool:
        try:
            return bool(self.status()["sources"]["crowdsec"]["state"] == "up")
        except (SockgateError, KeyError, TypeError):
            return False


@dataclass
class Fleet:
    lan: str
    lapi: crowdsec.Lapi
    hosts: list[Host] = field(default_factory=list)
    interval: float = 1.0

    def reachable(self, hosts: list[Host], src: str, wait: float) -> dict[int, bool]:
        """Which of ``hosts`` answer a TCP connect from ``src`` within ``wait`` s (probed at once)."""
        return probe(self.lan, [(h.index, h.addr) for h in hosts], src, wait)

    def dropped(self, hosts: list[Host], src: str = ATTACKER, wait: float = 0.05, confirm: float = 0.5) -> set[int]:
        """The hosts whose guard drops ``src``: silent for ``wait`` s, and again for ``confirm`` s."""
        first = self.reachable(hosts, src, wait)
        silent = [h for h in hosts if not first[h.index]]
        if not silent:
            return set()
        again = self.reachable(silent, src, confirm)
        return {i for i, ok in again.items() if not ok}

    def until(self, banned: bool, t0: float, timeout: float, src: str = ATTACKER) -> dict[int, float]:
        """Seconds from ``t0`` until each host drops ``src`` (``banned``) or lets it in again;
        AssertionError naming the hosts left when ``timeout`` passes first."""
        left = list(self.hosts)
        seen: dict[int, float] = {}
        deadline = t0 + timeout
        while left:
            at = time.monotonic()
            assert at < deadline, f"hosts {[h.index for h in left]} did not {'drop' if banned else 'readmit'} {src}" \
                                  f" within {timeout} s: {[h.bouncer() for h in left]}"
            if banned:
                hit = self.dropped(left, src)
            else:
                answered = self.reachable(left, src, 0.3)
                hit = {i for i, ok in answered.items() if ok}
            for h in [h for h in left if h.index in hit]:
                seen[h.index] = at - t0
            left = [h for h in left if h.index not in hit]
            if left:
                time.sleep(0.01)
        return seen

    def lapi_cpu_s(self) -> float:
        assert self.lapi.proc is not None
        return _cpu_s(self.lapi.proc.pid)


def probe(netns: str, targets: list[tuple[int, str]], src: str, wait: float, port: int = PORT) -> dict[int, bool]:
    """From ``netns``: which ``(key, address)`` targets answer a TCP connect from ``src`` to
    ``port`` within ``wait`` s (connected or reset), all probed at once."""
    return netlab.inside(netns, lambda: _probe(targets, src, wait, port))


def _probe(targets: list[tuple[int, str]], src: str, wait: float, port: int) -> dict[int, bool]:
    socks: dict[int, socket.socket] = {}
    out = {i: False for i, _ in targets}
    sel = selectors.DefaultSelector()
    try:
        for i, addr in targets:
            s = socket.socket()
            s.setblocking(False)
            s.bind((src, 0))
            code = s.connect_ex((addr, port))
            socks[i] = s
            if code in (0, errno.ECONNREFUSED):
                out[i] = True
            elif code == errno.EINPROGRESS:
                sel.register(s, selectors.EVENT_WRITE, i)
            else:
                raise OSError(code, f"connect to {addr}: {os.strerror(code)}")
        deadline = time.monotonic() + wait
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                out[key.data] = True  # a handshake done, or a reset: the host answered
                sel.unregister(key.fileobj)
        return out
    finally:
        sel.close()
        for s in socks.values():
            s.close()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def available() -> str | None:
    """Why a fleet cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, cgroups, eBPF)"
    for why in (netlab.can_netns(), crowdsec.available()):
        if why is not None:
            return why
    if shutil.which("nsenter") is None:
        return "needs nsenter (util-linux)"
    if cgroupbpf.cgroup2_root() is None:
        return "needs cgroup2 mounted"
    return None


def _policy(root: str) -> str:
    path = f"{root}/fleet.conf"
    Path(path).write_text(f"service web tcp/{PORT} {{\n    allow 0.0.0.0/0\n    default deny\n}}\n")
    return path


def _lan(name: str) -> None:
    netlab.sh("ip", "netns", "add", name)
    ip = ("ip", "-n", name)
    netlab.sh(*ip, "link", "set", "lo", "up")
    netlab.sh(*ip, "link", "add", "sgbr", "type", "bridge")
    for a in (LAN_ADDR, ATTACKER, BYSTANDER):
        netlab.sh(*ip, "address", "add", f"{a}/16", "dev", "sgbr")
    netlab.sh(*ip, "link", "set", "sgbr", "up")


def _host(i: int, lan: str, cgroups: str, root: str) -> Host:
    name = f"sgt{secrets.token_hex(4)}"
    netlab.sh("ip", "netns", "add", name)
    h = Host(i, name, host_addr(i), f"{cgroups}/h{i}", f"{root}/run{i}/agent.sock", log=f"{root}/agent-{i}.log")
    netlab.sh("ip", "link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", f"h{i}", "netns", lan)
    netlab.sh("ip", "-n", name, "link", "set", "lo", "up")
    netlab.sh("ip", "-n", name, "address", "add", f"{h.addr}/16", "dev", "eth0")
    netlab.sh("ip", "-n", name, "link", "set", "eth0", "up")
    netlab.sh("ip", "-n", lan, "link", "set", f"h{i}", "master", "sgbr")
    netlab.sh("ip", "-n", lan, "link", "set", f"h{i}", "up")
    os.mkdir(h.cgroup)
    return h


def start_service(netns: str, cgroup: str, port: int = PORT, argv0: str | None = None) -> subprocess.Popen[bytes]:
    """The TCP service (accepts and closes) on ``port`` in ``netns``, its process in ``cgroup``;
    returns once it listens. ``argv0``: the name it runs under."""
    exe = ["bash", "-c", f'exec -a {argv0} "$0" "$@"', sys.executable] if argv0 else [sys.executable]
    p = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{netns}", *exe, "-c", SERVICE, str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         preexec_fn=joining(cgroup), start_new_session=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip(), f"the service in {netns} did not start"
    return p


def start_agent(netns: str, args: list[str], control: str, bpffs: str, cgroup: str, log: str,
                notify_path: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """``sockgate agent ARGS`` in ``netns`` (``nsenter --net``: the mount namespace stays), and
    the socket its ``READY=1`` arrives on (``wait_ready``)."""
    os.makedirs(bpffs, exist_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    with open(log, "wb") as err:
        p = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-m", "sockgate", "agent", *args,
             "--control", control, "--bpffs", bpffs, "--cgroup", cgroup, "--notify"],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "NOTIFY_SOCKET": notify_path},
            start_new_session=True)
    return p, notify


def _start_agent(h: Host, lapi: crowdsec.Lapi, interval: float, policy: str, bpffs: str, root: str) -> socket.socket:
    key = f"{root}/h{h.index}.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(lapi.bouncer_key(f"fleet-host-{h.index}"))
    h.agent, notify = start_agent(h.netns, [policy, "--backend", "ebpf", "--crowdsec", lapi.url, "--crowdsec-key-file", key,
                                            "--crowdsec-interval", f"{interval:g}"],
                                  h.control, f"{bpffs}/h{h.index}", h.cgroup, h.log, f"{root}/notify-{h.index}")
    return notify


def wait_ready(agents: list[tuple[subprocess.Popen[bytes], socket.socket, str]], timeout: float = START_TIMEOUT) -> None:
    """Every agent's ``READY=1`` (``(process, notify socket, log path)``), within ``timeout``."""
    deadline = time.monotonic() + timeout
    waiting = dict(enumerate(agents))
    got = {i: b"" for i in waiting}
    while waiting:
        left = deadline - time.monotonic()
        for i, (p, _, log) in waiting.items():
            assert p.poll() is None, f"agent {i} exited ({p.poll()}): {_tail(log)}"
        assert left > 0, f"agents {sorted(waiting)} not ready within {timeout} s: {_tail(agents[min(waiting)][2])}"
        with selectors.DefaultSelector() as sel:
            for i, (_, s, _) in waiting.items():
                sel.register(s, selectors.EVENT_READ, i)
            for key, _ in sel.select(min(left, 0.5)):
                got[key.data] += agents[key.data][1].recv(4096) + b"\n"
        waiting = {i: a for i, a in waiting.items() if b"READY=1" not in got[i]}


def _tail(log: str) -> str:
    return Path(log).read_text(errors="replace")[-2000:] if os.path.exists(log) else ""


def _wait_pulling(hosts: list[Host]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not all(h.pulling() for h in hosts):
        assert time.monotonic() < deadline, \
            f"hosts {[h.index for h in hosts if not h.pulling()]} not pulling from the LAPI within {START_TIMEOUT} s"
        time.sleep(0.05)


def stop(p: subprocess.Popen[bytes] | None) -> None:
    if p is None or p.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def fleet(n: int, interval: float = 1.0) -> Iterator[Fleet]:
    """N hosts guarded by N agents pulling one LAPI every ``interval`` s; all torn down after."""
    cg_root = cgroupbpf.cgroup2_root()
    assert cg_root is not None
    cgroups = f"{cg_root}/sg-fleet-{secrets.token_hex(4)}"
    lan = f"sgt{secrets.token_hex(4)}"
    hosts: list[Host] = []
    notifies: list[socket.socket] = []
    os.mkdir(cgroups)
    try:
        with tempfile.TemporaryDirectory(prefix="sg-fleet-") as root, private_bpffs() as bpffs:
            try:
                _lan(lan)
                with crowdsec.lapi(Path(root) / "lapi", host=LAN_ADDR, netns=lan) as lapi:
                    the_fleet = Fleet(lan, lapi, hosts, interval)
                    try:
                        policy = _policy(root)
                        for i in range(n):
                            hosts.append(_host(i, lan, cgroups, root))
                            hosts[-1].service = start_service(hosts[-1].netns, hosts[-1].cgroup)
                        notifies = [_start_agent(h, lapi, interval, policy, bpffs, root) for h in hosts]
                        wait_ready([(h.agent, s, h.log) for h, s in zip(hosts, notifies) if h.agent is not None])
                        _wait_pulling(hosts)
                        yield the_fleet
                    finally:
                        for h in hosts:
                            stop(h.agent)
                            stop(h.service)
                            if h.service is not None and h.service.stdout is not None:
                                h.service.stdout.close()
                        for s in notifies:
                            s.close()
            finally:
                for h in hosts:
                    netlab.sh("ip", "netns", "del", h.netns, check=False)
                netlab.sh("ip", "netns", "del", lan, check=False)
    finally:
        for h in hosts:
            with contextlib.suppress(OSError):
                os.rmdir(h.cgroup)
        os.rmdir(cgroups)
