"""The agent lab: ``sockgate agent`` as its own process, and services it is to guard, all torn
down even on failure. Shared by the agent's kernel tests and bench/bench_agent.py.

``agent_lab()`` makes a child cgroup (the agent's watch hooks go there, and every service the
lab starts is put in it, so the host's other processes are never watched), a private bpffs
(pins vanish with it) and a temporary directory (policies, control socket, logs). On exit it
kills every service and agent it started, unmounts the bpffs, checks that the watch hooks were
released, and removes the cgroup.

A service is a real process (``SERVER`` below, or a script of the caller's) that prints one
JSON line with ``pid`` and ``fd`` of its socket once it listens; a ``prefix`` runs it through
another command first (``nsenter --net=...`` for a network namespace, ``setpriv`` for another
user). What a test checks is the kernel's truth: the filter read back from the service's own
descriptor through ``pidfd_getfd`` + ``Kernel.read`` (``guard``, ``guarded_by``).

Readiness is ``READY=1`` on a NOTIFY_SOCKET of the lab's and the control socket answering
``status``; every wait is a bounded poll of a condition (``until``). Nothing here imports
pytest: a failed wait raises AssertionError, so benchmarks use the lab too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from sockgate.agent.client import call
from sockgate.agent.protocol import Status
from sockgate.agent.watcher import HOOKS
from sockgate.errors import SockgateError
from sockgate.kernel import default_kernel
from sockgate.kernel.reading import GuardInfo
from sockgate.linux import cgroupbpf, pidfd
from support.pinned import private_bpffs

WAIT = 5.0  # seconds: the bound on any wait for the agent to act
START = 15.0  # seconds: the bound on the agent's start (imports, compile, hooks)

# Prepended to every service script: bind, retried while the port is still held — the agent may
# hold its duplicate of the old socket for a moment after a restart.
BIND_RETRY = r"""
import time as _time
def bind_retry(s, port, tries=200):
    for _ in range(tries):
        try:
            s.bind(("0.0.0.0", port))
            return
        except OSError as e:
            if e.errno != 98:
                raise
            _time.sleep(0.01)
    s.bind(("0.0.0.0", port))
"""

# A service: listens (tcp) or binds (udp) on 0.0.0.0:PORT, prints {"pid","fd","t"} (t: the
# CLOCK_MONOTONIC time right after listen), echoes; "fork PORT" on stdin makes a child that
# listens on PORT too (and prints its own line).
SERVER = r"""
import json, os, select, socket, sys, time
proto, port = sys.argv[1], int(sys.argv[2])
def listen(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sys.argv[3:] == ["lock"]:  # a foreign filter (accept all), locked
        import ctypes, struct
        code = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0xFFFFFFFF))
        s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", 1, ctypes.addressof(code)))
        s.setsockopt(socket.SOL_SOCKET, 44, 1)
    bind_retry(s, port)
    if proto == "tcp":
        s.listen(64)
    print(json.dumps({"pid": os.getpid(), "fd": s.fileno(), "t": time.monotonic()}), flush=True)
    return s
def serve(s, commands=True):
    conns = []
    while True:
        r, _, _ = select.select([sys.stdin, s, *conns] if commands else [s, *conns], [], [])
        for x in r:
            if x is sys.stdin:
                line = sys.stdin.readline()
                if not line:
                    return
                cmd = line.split()
                if cmd[0] == "fork" and os.fork() == 0:
                    serve(listen(int(cmd[1])), False)
            elif x is s and proto == "tcp":
                try:
                    conns.append(s.accept()[0])
                except OSError:  # ended before its accept (a ban's SOCK_DESTROY): not the service's end
                    pass
            elif x is s:
                data, addr = s.recvfrom(2048)
                s.sendto(data, addr)
            else:
                try:  # (a ban's SOCK_DESTROY may end it between recv and send: not the service's end)
                    data = x.recv(2048)
                    if data:
                        x.sendall(data)
                except OSError:
                    data = b""
                if not data:
                    conns.remove(x)
                    x.close()
serve(listen(port))
"""


def until(what: str, check: Callable[[], Any], timeout: float = WAIT, every: float = 0.005) -> Any:
    """``check()``'s first true value, polled until ``timeout``; fails naming the last one."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


@dataclass
class Server:
    proc: subprocess.Popen[str]
    info: dict[str, Any]
    log: str = ""

    def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            with open(self.log, errors="replace") as f:
                raise AssertionError(f"the service did not answer (status {self.proc.poll()}): {f.read()[-2000:]}")
        got: dict[str, Any] = json.loads(line)
        return got

    def ask(self, command: str) -> dict[str, Any]:
        """Send one command line on the service's stdin; its one-line JSON answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n")
        self.proc.stdin.flush()
        return self.line()

    def fork(self, port: int) -> dict[str, Any]:
        return self.ask(f"fork {port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@dataclass
class AgentProc:
    proc: subprocess.Popen[bytes]
    control: str
    log: str

    def status(self) -> dict[str, Any]:
        return dict(call(self.control, Status()).result or {})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)

    def stderr(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-3000:]


@dataclass
class Lab:
    tmp: str
    cgroup: str
    bpffs: str
    servers: list[Server] = field(default_factory=list)
    agents: list[AgentProc] = field(default_factory=list)

    def path(self, name: str, text: str | None = None) -> str:
        p = os.path.join(self.tmp, name)
        if text is not None:
            with open(p, "w") as f:
                f.write(text)
        return p

    def server(self, proto: str, port: int, argv0: str | None = None, lock: bool = False,
               prefix: tuple[str, ...] = (), script: str = SERVER) -> Server:
        """A service in the lab's cgroup; ``argv0``: run through a link of that name (so its
        comm and argv[0] are that name, as a daemon's are); ``script``: Python source run with
        the arguments PROTO PORT [lock], which prints its first line as ``SERVER`` does."""
        exe = sys.executable
        if argv0 is not None:
            exe = self.path(argv0)
            if not os.path.exists(exe):
                os.symlink(os.path.realpath(sys.executable), exe)
        argv = [*prefix, exe, "-I", "-c", BIND_RETRY + script, proto, str(port), *(["lock"] if lock else [])]
        s = Server(self.spawn(argv), {}, self.path(f"server-{len(self.servers)}.log"))
        self.servers.append(s)
        s.info = s.line()
        return s

    def spawn(self, argv: list[str]) -> subprocess.Popen[str]:
        """A process in the lab's cgroup, in a session of its own (``Server.stop`` kills the
        group), stdin and stdout piped, stderr to the next server log."""
        with open(self.path(f"server-{len(self.servers)}.log"), "wb") as err:
            return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                    preexec_fn=joining(self.cgroup), start_new_session=True)

    def hosts_agent(self, allow: str, deny: str = "ALL: ALL\n", *args: str, prefix: tuple[str, ...] = ()) -> AgentProc:
        """The agent over the lab's hosts.allow and hosts.deny, written first with ``allow`` and
        ``deny`` (``path("hosts.allow")``, ``path("hosts.deny")``: theirs to edit later)."""
        files = ("--hosts-allow", self.path("hosts.allow", allow), "--hosts-deny", self.path("hosts.deny", deny))
        return self.agent(*files, *args, prefix=prefix)

    def agent(self, *args: str, ready: bool = True, prefix: tuple[str, ...] = ()) -> AgentProc:
        control = os.path.join(self.tmp, "run", "agent.sock")
        notify_path = self.path(f"notify-{uuid.uuid4().hex[:6]}")
        log = self.path(f"agent-{len(self.agents)}.log")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, open(log, "wb") as err:
            notify.bind(notify_path)
            env = {**os.environ, "NOTIFY_SOCKET": notify_path}
            proc = subprocess.Popen([*prefix, sys.executable, "-m", "sockgate", "agent", *args, "--control", control,
                                     "--bpffs", self.bpffs, "--cgroup", self.cgroup, "--notify"],
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
            a = AgentProc(proc, control, log)
            self.agents.append(a)
            if not ready:
                return a
            deadline = time.monotonic() + START
            got = b""
            while b"READY=1" not in got:
                left = deadline - time.monotonic()
                assert left > 0 and proc.poll() is None, f"agent not ready (status {proc.poll()}): {a.stderr()}"
                r, _, _ = select.select([notify], [], [], min(left, 0.2))
                if r:
                    got += notify.recv(4096) + b"\n"
        until("the control socket answers", lambda: _answers(a))
        return a


def _answers(a: AgentProc) -> bool:
    try:
        a.status()
    except SockgateError:
        return False
    return True


@contextlib.contextmanager
def child_cgroup(prefix: str) -> Iterator[str]:
    """A fresh child of the cgroup2 root (``prefix`` and a random suffix), removed afterwards:
    what a test watches, so that the host's other processes never are."""
    root = cgroupbpf.cgroup2_root()
    assert root is not None, "no cgroup2 mounted"
    cgroup = f"{root}/{prefix}-{uuid.uuid4().hex[:8]}"
    os.mkdir(cgroup)
    try:
        yield cgroup
    finally:
        os.rmdir(cgroup)


def joining(cgroup: str) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the new process into ``cgroup`` before it runs anything."""
    procs = f"{cgroup}/cgroup.procs"

    def enter() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return enter


@contextlib.contextmanager
def agent_lab() -> Iterator[Lab]:
    with child_cgroup("sg-agent") as cgroup:
        with tempfile.TemporaryDirectory(prefix="sg-agent-") as tmp, private_bpffs() as bpffs:
            lab = Lab(tmp, cgroup, bpffs)
            saved = os.environ.get("SOCKGATE_BPFFS")
            os.environ["SOCKGATE_BPFFS"] = bpffs  # where this process recognises the agent's eBPF guards (auto)
            try:
                yield lab
            finally:
                if saved is None:
                    os.environ.pop("SOCKGATE_BPFFS", None)
                else:
                    os.environ["SOCKGATE_BPFFS"] = saved
                for s in lab.servers:
                    s.stop()
                for a in lab.agents:
                    a.stop(signal.SIGKILL)
        assert_detached(cgroup)


def assert_detached(cgroup: str, timeout: float = WAIT) -> None:
    """No program left on the cgroup's watch hooks. A link whose last pin is removed (the
    bpffs gone with its pins) is released by a kernel work item (bpf_link_put), so its
    detachment is awaited, bounded."""
    fd = cgroupbpf.open_cgroup(cgroup)
    try:
        until("the watch hooks released", lambda: all(not cgroupbpf.attached(fd, h.attach_type) for h in HOOKS),
              timeout)
    finally:
        os.close(fd)


def guard(pid: int, fd: int) -> GuardInfo:
    with pidfd.borrowed(pid, fd) as dup:
        return default_kernel().read(dup)


def guarded_by(s: dict[str, Any], service: str) -> GuardInfo | None:
    """The socket's guard when it is ``service``'s, as compared between readings: without the
    refusal count an eBPF guard carries (it changes with traffic, the guard does not)."""
    g = guard(s["pid"], s["fd"])
    return dataclasses.replace(g, refused=None) if g.state == "sockgate" and g.service == service else None


def in_netns(name: str) -> tuple[str, ...]:
    """The prefix that runs a command in the network namespace ``name`` (made by ``ip netns
    add``) and nothing else: unlike ``ip netns exec`` it keeps the mount namespace, so the
    cgroup2 tree and the lab's bpffs stay where they are."""
    return ("nsenter", f"--net=/var/run/netns/{name}", "--")
