"""``sockgate agent`` for real: the agent runs as its own process (private bpffs, watching a
child cgroup the test makes, control socket in a temporary directory), services are real
processes the test starts in that cgroup, and what is checked is the kernel's truth — the
filter read back through ``pidfd_getfd`` + ``Kernel.read`` — and real loopback traffic:
127.0.0.1 allowed, 127.0.0.2 denied.

Readiness is ``READY=1`` on the test's NOTIFY_SOCKET and the control socket answering
``status``; every wait is a bounded poll of a condition. Processes, pins (the bpffs is
unmounted) and the watch hooks on the cgroup are cleaned up even on failure, and the hooks are
checked gone.

Guard latency (printed with -s): a service's ``listen()`` → the filter readable on its socket,
over LATENCY_RUNS restarts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
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

import pytest

from sockgate.agent.client import call
from sockgate.agent.protocol import Ban, Reload, Status, Unban, parse_network
from sockgate.agent.watcher import HOOKS
from sockgate.errors import SockgateError
from sockgate.kernel import default_kernel
from sockgate.kernel.reading import GuardInfo
from sockgate.kernel.transaction import Slot, Step
from sockgate.linux import cgroupbpf, pidfd
from support.pinned import private_bpffs

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="cgroup BPF is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_PTRACE)"),
    pytest.mark.root,
]

WAIT = 5.0  # seconds: the bound on any wait for the agent to act
START = 15.0  # seconds: the bound on the agent's start (imports, compile, hooks)
BASE = 21000 + (os.getpid() % 400) * 5  # ports of this run
ALLOWED, DENIED = "127.0.0.1", "127.0.0.2"
LATENCY_RUNS = 30

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
    for _ in range(200):  # the agent may hold its duplicate of the old socket for a moment
        try:
            s.bind(("0.0.0.0", port))
            break
        except OSError as e:
            if e.errno != 98:
                raise
            time.sleep(0.01)
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
                conns.append(s.accept()[0])
            elif x is s:
                data, addr = s.recvfrom(2048)
                s.sendto(data, addr)
            else:
                try:
                    data = x.recv(2048)
                except OSError:
                    data = b""
                if data:
                    x.sendall(data)
                else:
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
    pytest.fail(f"{what}: not within {timeout} s (last: {last!r})")


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
                pytest.fail(f"the service did not say it listens (status {self.proc.poll()}): {f.read()[-2000:]}")
        got: dict[str, Any] = json.loads(line)
        return got

    def fork(self, port: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"fork {port}\n")
        self.proc.stdin.flush()
        return self.line()

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
               prefix: tuple[str, ...] = ()) -> Server:
        """A service in the lab's cgroup; ``argv0``: run through a link of that name (so its
        comm and argv[0] are that name, as a daemon's are)."""
        exe = sys.executable
        if argv0 is not None:
            exe = self.path(argv0)
            if not os.path.exists(exe):
                os.symlink(os.path.realpath(sys.executable), exe)
        procs = f"{self.cgroup}/cgroup.procs"

        def enter() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        log = self.path(f"server-{len(self.servers)}.log")
        with open(log, "wb") as err:
            proc = subprocess.Popen([*prefix, exe, "-I", "-c", SERVER, proto, str(port), *(["lock"] if lock else [])],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                    preexec_fn=enter, start_new_session=True)
        s = Server(proc, {}, log)
        self.servers.append(s)
        s.info = s.line()
        return s

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


@pytest.fixture
def lab(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    root = cgroupbpf.cgroup2_root()
    assert root is not None, "no cgroup2 mounted"
    cgroup = f"{root}/sg-agent-{uuid.uuid4().hex[:8]}"
    os.mkdir(cgroup)
    try:
        with tempfile.TemporaryDirectory(prefix="sg-agent-") as tmp, private_bpffs() as bpffs:
            lab = Lab(tmp, cgroup, bpffs)
            monkeypatch.setenv("SOCKGATE_BPFFS", bpffs)  # where this process recognises the agent's eBPF guards (auto)
            try:
                yield lab
            finally:
                for s in lab.servers:
                    s.stop()
                for a in lab.agents:
                    a.stop(signal.SIGKILL)
        _assert_detached(cgroup)
    finally:
        os.rmdir(cgroup)


def _assert_detached(cgroup: str) -> None:
    """The bpffs is gone with its pins, so the links are released (asynchronously)."""
    fd = cgroupbpf.open_cgroup(cgroup)
    try:
        until("the watch hooks released", lambda: all(not cgroupbpf.attached(fd, h.attach_type) for h in HOOKS))
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


def connects(src: str, port: int, timeout: float = 0.4) -> bool:
    """A TCP connection from ``src`` completes (a filtered SYN is dropped: it times out)."""
    with socket.socket() as c:
        c.bind((src, 0))
        c.settimeout(timeout)
        try:
            c.connect((ALLOWED, port))
        except (TimeoutError, socket.timeout):
            return False
        c.sendall(b"x")
        return c.recv(1) == b"x"


def answers_udp(src: str, port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind((src, 0))
        c.settimeout(timeout)
        c.sendto(b"ping", (ALLOWED, port))
        try:
            return c.recvfrom(16)[0] == b"ping"
        except (TimeoutError, socket.timeout):
            return False


def native(lab: Lab, port: int, proto: str = "tcp", allow: str = ALLOWED, last: int | None = None) -> str:
    ports = f"{port}-{last}" if last else str(port)
    return lab.path("agent.conf", f"service web {proto}/{ports} {{\n    allow {allow}\n    default deny\n}}\n")


def test_a_service_started_after_the_agent_is_guarded_again_after_restarts_and_forks(lab: Lab) -> None:
    port = BASE
    agent = lab.agent(native(lab, port, last=port + 1))
    s = lab.server("tcp", port)
    until("the new listener guarded", lambda: guarded_by(s.info, "web"))
    assert connects(ALLOWED, port)
    assert not connects(DENIED, port)
    s.stop()
    s2 = lab.server("tcp", port)  # a new process, a new socket on the same port
    until("the restarted listener guarded", lambda: guarded_by(s2.info, "web"))
    assert not connects(DENIED, port)
    child = s2.fork(port + 1)
    assert child["pid"] != s2.info["pid"]
    until("the forked listener guarded", lambda: guarded_by(child, "web"))
    assert connects(ALLOWED, port + 1)
    assert not connects(DENIED, port + 1)
    st = agent.status()
    assert st["agent"]["watch"]["mode"] == "cgroup-bpf"
    assert st["agent"]["counters"]["attached"] >= 3
    assert st["unguarded"] == 0
    # the backend auto came to (root: eBPF), named on start-up and in status, never "auto"
    assert (st["agent"]["backend"], st["agent"]["backend_why"]) == ("ebpf", "auto: this process may load ebpf")
    assert "backend ebpf (auto: this process may load ebpf)" in agent.stderr()
    assert [s["backend"] for s in st["services"]] == ["ebpf"]


def test_an_agent_killed_and_restarted_adopts_without_attaching(lab: Lab) -> None:
    port = BASE + 2
    policy = native(lab, port)
    s = lab.server("tcp", port)  # before the agent: found by the scan
    first = lab.agent(policy)
    before = until("guarded by the first agent", lambda: guarded_by(s.info, "web"))
    assert first.status()["agent"]["counters"]["attached"] == 1
    first.stop(signal.SIGKILL)
    assert guarded_by(s.info, "web") == before  # guards never depend on the agent
    second = lab.agent(policy)  # the stale control socket of the first is replaced
    counters = second.status()["agent"]["counters"]
    assert counters["adopted"] == 1
    assert counters["attached"] == counters["reloaded"] == counters["replaced"] == 0
    assert guarded_by(s.info, "web") == before
    assert not connects(DENIED, port)
    second.stop(signal.SIGTERM)
    assert second.proc.returncode == 0
    assert guarded_by(s.info, "web") == before  # a clean stop leaves the guards too


def test_connections_a_new_guard_denies_are_ended_and_allowed_ones_kept(lab: Lab) -> None:
    port = BASE + 8
    s = lab.server("tcp", port)
    denied = socket.create_connection((ALLOWED, port), timeout=WAIT, source_address=(DENIED, 0))
    allowed = socket.create_connection((ALLOWED, port), timeout=WAIT, source_address=(ALLOWED, 0))
    with denied, allowed:
        for c in (denied, allowed):
            c.sendall(b"z")
            assert c.recv(1) == b"z"
        agent = lab.agent(native(lab, port))
        until("guarded", lambda: guarded_by(s.info, "web"))
        until("the denied peer's connection ended", lambda: _ended(denied))
        allowed.sendall(b"w")
        allowed.settimeout(WAIT)
        assert allowed.recv(1) == b"w"
    assert agent.status()["agent"]["counters"]["destroyed"] == 1


def test_keep_established_leaves_them(lab: Lab) -> None:
    port = BASE + 18
    s = lab.server("tcp", port)
    denied = socket.create_connection((ALLOWED, port), timeout=WAIT, source_address=(DENIED, 0))
    with denied:
        agent = lab.agent(native(lab, port), "--keep-established")
        until("guarded", lambda: guarded_by(s.info, "web"))
        denied.sendall(b"k")
        denied.settimeout(WAIT)
        assert denied.recv(1) == b"k"
    assert not connects(DENIED, port)
    assert agent.status()["agent"]["counters"]["destroyed"] == 0


def test_a_filter_removed_behind_the_agents_back_is_put_back_by_the_sweep(lab: Lab) -> None:
    port = BASE + 19
    agent = lab.agent(native(lab, port), "--sweep", "0.5")
    s = lab.server("tcp", port)
    until("guarded", lambda: guarded_by(s.info, "web"))
    with pidfd.borrowed(s.info["pid"], s.info["fd"]) as dup:
        default_kernel().apply([Step(Slot(dup, "the test's detach"), None)])
    assert guard(s.info["pid"], s.info["fd"]).state == "none"
    until("guarded again by the sweep", lambda: guarded_by(s.info, "web"), timeout=WAIT)
    assert agent.status()["agent"]["counters"]["attached"] == 2


def test_map_guards_a_port_as_the_daemons_whoever_holds_it(lab: Lab) -> None:
    port = BASE + 20
    allow = lab.path("hosts.allow", f"sgmapd: {ALLOWED}\n")
    deny = lab.path("hosts.deny", "ALL: ALL\n")
    lab.agent("--hosts-allow", allow, "--hosts-deny", deny, "--map", f"sgmapd=tcp/{port}")
    s = lab.server("tcp", port, argv0="sgsomeone")
    until("the mapped port guarded as the daemon's", lambda: guarded_by(s.info, "sgmapd"))
    assert connects(ALLOWED, port) and not connects(DENIED, port)


def test_a_reload_applies_the_new_policy_and_ends_what_it_now_denies(lab: Lab) -> None:
    port = BASE + 9
    policy = native(lab, port)
    agent = lab.agent(policy)
    s = lab.server("tcp", port)
    before = until("guarded", lambda: guarded_by(s.info, "web"))
    held = socket.create_connection((ALLOWED, port), timeout=WAIT, source_address=(ALLOWED, 0))
    with held:
        native(lab, port, allow=DENIED)
        call(agent.control, Reload())
        after = until("the new program on the socket", lambda: (g := guarded_by(s.info, "web")) and g != before and g)
        assert after.digest != before.digest
        until("the now-denied connection ended", lambda: _ended(held))
    assert connects(DENIED, port) and not connects(ALLOWED, port)
    st = agent.status()
    assert st["agent"]["counters"]["reloaded"] == 1
    assert st["policy"]["last_reload"]["ok"] is True  # (the file watch may have reloaded first)


def test_a_service_the_reload_drops_is_detached_and_an_unselected_socket_never_touched(lab: Lab) -> None:
    port = BASE + 13
    policy = lab.path("two.conf", f"service web tcp/{port} {{ allow {ALLOWED} }}\nservice old tcp/{port + 1} {{ allow {ALLOWED} }}\n")
    agent = lab.agent(policy)
    web, old = lab.server("tcp", port), lab.server("tcp", port + 1)
    bystander = lab.server("tcp", port + 2)
    until("both guarded", lambda: guarded_by(web.info, "web") and guarded_by(old.info, "old"))
    with open(policy, "w") as f:
        f.write(f"service web tcp/{port} {{ allow {ALLOWED} }}\n")
    agent.proc.send_signal(signal.SIGHUP)
    until("the dropped service's filter removed", lambda: guard(old.info["pid"], old.info["fd"]).state == "none")
    assert guarded_by(web.info, "web")
    assert agent.status()["agent"]["counters"]["detached"] == 1
    assert guard(bystander.info["pid"], bystander.info["fd"]).state == "none"
    assert connects(DENIED, port + 1)


def test_a_policy_file_edited_on_disk_is_enforced_without_a_signal(lab: Lab) -> None:
    port = BASE + 14
    policy = native(lab, port)
    agent = lab.agent(policy)
    s = lab.server("tcp", port)
    before = until("guarded", lambda: guarded_by(s.info, "web"))
    native(lab, port, allow=DENIED)  # written in place
    after = until("the edit enforced", lambda: (g := guarded_by(s.info, "web")) and g != before and g)
    assert connects(DENIED, port) and not connects(ALLOWED, port)
    temp = lab.path("agent.conf.tmp", f"service web tcp/{port} {{\n    allow {ALLOWED}\n    allow 127.0.0.9\n}}\n")
    os.rename(temp, policy)  # as editors and sshguard write: a new file renamed over the old
    until("the renamed file enforced", lambda: (g := guarded_by(s.info, "web")) and g not in (before, after) and g)
    assert connects(ALLOWED, port) and not connects(DENIED, port)
    assert agent.status()["policy"]["last_reload"]["trigger"] == "file"


def test_the_poll_fallback_guards_a_later_service(lab: Lab) -> None:
    port = BASE + 10
    agent = lab.agent(native(lab, port), "--watch", "poll")
    s = lab.server("tcp", port)
    until("guarded by polling", lambda: guarded_by(s.info, "web"))
    st = agent.status()
    assert st["agent"]["watch"]["mode"] == "poll"
    assert any("polling" in e for e in st["errors"])


def test_a_bad_policy_at_start_is_an_error_and_touches_nothing(lab: Lab) -> None:
    port = BASE + 11
    s = lab.server("tcp", port)
    policy = lab.path("bad.conf", "service web tcp/%d {\n    allow 127.0.0.1 frobnicate\n}\n" % port)
    a = lab.agent(policy, ready=False)
    assert a.proc.wait(START) == 2
    assert f"{policy}:2" in a.stderr()
    assert "Traceback" not in a.stderr()
    assert guard(s.info["pid"], s.info["fd"]).state == "none"


def test_hosts_access_enrols_the_daemon_by_name_and_nothing_else(lab: Lab) -> None:
    port = BASE + 3
    daemon = lab.server("tcp", port, argv0="sgdaemond")
    other = lab.server("tcp", port + 1, argv0="sgotherd")
    allow = lab.path("hosts.allow", f"sgdaemond: {ALLOWED}\n")
    deny = lab.path("hosts.deny", "ALL: ALL\n")
    agent = lab.agent("--hosts-allow", allow, "--hosts-deny", deny)
    until("the daemon's listener guarded", lambda: guarded_by(daemon.info, "sgdaemond"))
    assert guard(other.info["pid"], other.info["fd"]).state == "none"
    assert connects(ALLOWED, port) and not connects(DENIED, port)
    assert connects(DENIED, port + 1)
    late = lab.server("tcp", port + 2, argv0="sgdaemond")  # a second daemon process, by event
    until("the daemon's new listener guarded", lambda: guarded_by(late.info, "sgdaemond"))
    assert [s["name"] for s in agent.status()["services"]] == ["sgdaemond"]


# an interpreter an unprivileged user may run (the test's own may sit under a private home)
USER_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)


def test_a_user_process_that_takes_the_daemons_name_is_not_enrolled(lab: Lab) -> None:
    port = BASE + 3
    daemon = lab.server("tcp", port, argv0="sgdaemond")
    as_nobody = ("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--")
    fake = lab.server("tcp", port + 1, prefix=(*as_nobody, "bash", "-c", 'exec -a sgdaemond "$0" "${@:2}"', USER_PYTHON))
    with open(f"/proc/{fake.info['pid']}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"sgdaemond"
    allow = lab.path("hosts.allow", f"sgdaemond: {ALLOWED}\n")
    deny = lab.path("hosts.deny", "ALL: ALL\n")
    agent = lab.agent("--hosts-allow", allow, "--hosts-deny", deny)
    until("the root daemon's listener guarded", lambda: guarded_by(daemon.info, "sgdaemond"))
    assert guard(fake.info["pid"], fake.info["fd"]).state == "none"
    rows = [r for svc in agent.status()["services"] for r in svc["sockets"]]
    assert [r["local"].rsplit(":", 1)[1] for r in rows] == [str(port)]
    status = agent.status()
    assert status["unguarded"] == 0
    assert [(i["service"], i["local"].rsplit(":", 1)[1], [h["pid"] for h in i["holders"]], i["holders"][0]["uid"])
            for i in status["impostors"]] == [("sgdaemond", str(port + 1), [fake.info["pid"]], pwd.getpwnam("nobody").pw_uid)]


def test_all_as_the_daemon_list_enrols_nothing(lab: Lab) -> None:
    port = BASE + 3
    s = lab.server("tcp", port, argv0="sgdaemond")
    allow = lab.path("hosts.allow", f"ALL: {ALLOWED}\n")
    deny = lab.path("hosts.deny", "ALL: ALL\n")
    agent = lab.agent("--hosts-allow", allow, "--hosts-deny", deny)
    assert agent.status()["services"] == []
    assert guard(s.info["pid"], s.info["fd"]).state == "none"


def test_sighup_with_a_broken_policy_keeps_the_old_and_says_why(lab: Lab) -> None:
    port = BASE + 4
    policy = native(lab, port)
    agent = lab.agent(policy)
    s = lab.server("tcp", port)
    before = until("guarded", lambda: guarded_by(s.info, "web"))
    with open(policy, "w") as f:
        f.write("service web tcp/%d {\n    allow 127.0.0.1 frobnicate\n}\n" % port)
    agent.proc.send_signal(signal.SIGHUP)
    def failed() -> dict[str, Any] | None:
        r: dict[str, Any] = agent.status()["policy"]["last_reload"]
        return r if r["ok"] is False else None

    reload = until("the failed reload in status", failed)
    assert reload["trigger"] == "signal"
    assert f"{policy}:2" in reload["error"]
    assert guarded_by(s.info, "web") == before
    assert not connects(DENIED, port) and connects(ALLOWED, port)
    assert "reload failed" in agent.stderr()
    with pytest.raises(SockgateError, match="agent.conf:2"):
        call(agent.control, Reload())


def test_ban_drops_new_connections_ends_established_ones_and_unban_restores(lab: Lab) -> None:
    port = BASE + 5
    agent = lab.agent(native(lab, port, allow="127.0.0.0/8"))
    s = lab.server("tcp", port)
    until("guarded", lambda: guarded_by(s.info, "web"))
    assert connects(DENIED, port)
    held = socket.create_connection((ALLOWED, port), timeout=WAIT, source_address=(DENIED, 0))
    with held:
        held.sendall(b"y")
        assert held.recv(1) == b"y"
        call(agent.control, Ban(parse_network(DENIED)))
        ended = until("the banned source's connection ended", lambda: _ended(held))
        assert ended
    assert not connects(DENIED, port)
    assert connects(ALLOWED, port)
    st = agent.status()
    assert st["agent"]["counters"]["destroyed"] >= 1
    assert [b["net"] for b in st["bans"]["items"]] == ["127.0.0.2/32"]
    call(agent.control, Unban(parse_network(DENIED)))
    until("the unbanned source connects again", lambda: connects(DENIED, port))


def test_bans_outlive_the_agent_in_the_state_file_and_a_bad_one_stops_the_start(lab: Lab) -> None:
    port = BASE + 21
    policy, state = native(lab, port, allow="127.0.0.0/8"), lab.path("bans.json")
    first = lab.agent(policy, "--state", state)
    s = lab.server("tcp", port)
    until("guarded", lambda: guarded_by(s.info, "web"))
    call(first.control, Ban(parse_network(DENIED), 3600, reason="test"))
    assert os.stat(state).st_mode & 0o777 == 0o600
    first.stop(signal.SIGKILL)
    second = lab.agent(policy, "--state", state)
    st = second.status()
    assert [(b["net"], b["reason"]) for b in st["bans"]["items"]] == [("127.0.0.2/32", "test")]
    assert st["agent"]["counters"]["attached"] == 0  # the banned program was adopted as it is
    assert not connects(DENIED, port) and connects(ALLOWED, port)
    second.stop()
    with open(state, "w") as f:
        f.write('{"version": 1, "bans": [{"net": "127.0.0.2/24"}]}')
    bad = lab.agent(policy, "--state", state, ready=False)
    assert bad.proc.wait(START) == 1
    assert f"{state}: ban 0" in bad.stderr() and "Traceback" not in bad.stderr()


def _ended(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        return s.recv(1) == b""
    except (TimeoutError, socket.timeout):
        return False
    except OSError:  # ECONNRESET / ECONNABORTED
        return True


def test_a_socket_with_a_locked_foreign_filter_is_reported_never_silently_skipped(lab: Lab) -> None:
    port = BASE + 15
    agent = lab.agent(native(lab, port, last=port + 1))
    locked = lab.server("tcp", port, lock=True)
    fine = lab.server("tcp", port + 1)
    until("the other socket guarded", lambda: guarded_by(fine.info, "web"))

    def reported() -> dict[str, Any] | None:
        rows = [r for svc in agent.status()["services"] for r in svc["sockets"] if r["state"] == "unguarded"]
        return rows[0] if rows else None

    row = until("the locked socket reported", reported)
    assert row["guard"]["state"] == "foreign" and row["guard"]["locked"]
    assert row["error"]
    assert guard(locked.info["pid"], locked.info["fd"]).state == "foreign"
    status = subprocess.run([sys.executable, "-m", "sockgate", "status", "--control", agent.control],
                            capture_output=True, text=True, timeout=START)
    assert status.returncode == 3, status.stdout + status.stderr


UNIT_CAPS = ("setpriv", "--bounding-set=-all,+net_admin,+bpf,+perfmon,+sys_ptrace,+chown", "--")  # the unit's set


def test_the_units_capabilities_are_enough(lab: Lab) -> None:
    port = BASE + 16
    agent = lab.agent(native(lab, port, allow="127.0.0.0/8"), prefix=UNIT_CAPS)
    s = lab.server("tcp", port)
    until("guarded under the unit's capabilities", lambda: guarded_by(s.info, "web"))
    held = socket.create_connection((ALLOWED, port), timeout=WAIT, source_address=(DENIED, 0))
    with held:
        call(agent.control, Ban(parse_network(DENIED)))
        until("the banned source's connection ended", lambda: _ended(held))
    assert not connects(DENIED, port)
    st = agent.status()
    assert st["agent"]["watch"]["mode"] == "cgroup-bpf", st["errors"]


def test_a_service_in_another_network_namespace_is_guarded_by_its_event(lab: Lab) -> None:
    port = BASE + 17
    agent = lab.agent(native(lab, port))
    s = lab.server("tcp", port, prefix=("unshare", "--net", "--"))
    assert os.stat(f"/proc/{s.info['pid']}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    until("the listener in the other namespace guarded", lambda: guarded_by(s.info, "web"))
    call(agent.control, Reload())  # a full scan (of this namespace): it must not drop the other's socket
    st = agent.status()
    assert st["unguarded"] == 0
    assert [r["cookie"] for svc in st["services"] for r in svc["sockets"]], "the other namespace's socket left status"


def test_a_socket_the_agent_may_not_reach_is_reported_and_retried(lab: Lab) -> None:
    port = BASE + 22
    no_ptrace = ("setpriv", "--bounding-set=-all,+net_admin,+bpf,+perfmon,+chown", "--")
    agent = lab.agent(native(lab, port), prefix=no_ptrace)
    s = lab.server("tcp", port, prefix=("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--"))

    def retrying(at_least: int) -> dict[str, Any] | None:
        rows = [r for svc in agent.status()["services"] for r in svc["sockets"]]
        return rows[0] if rows and rows[0]["state"] == "retrying" and rows[0]["attempts"] >= at_least else None

    first = until("the unreachable socket reported", lambda: retrying(1))
    assert first["error"]
    until("retried", lambda: retrying(first["attempts"] + 2))
    assert agent.status()["unguarded"] == 1
    assert guard(s.info["pid"], s.info["fd"]).state == "none"


def test_a_udp_service_is_guarded(lab: Lab) -> None:
    port = BASE + 6
    lab.agent(native(lab, port, proto="udp"))
    s = lab.server("udp", port)
    until("the UDP socket guarded", lambda: guarded_by(s.info, "web"))
    assert answers_udp(ALLOWED, port)
    assert not answers_udp(DENIED, port)


def test_an_ebpf_service_is_guarded_and_banned(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKGATE_BPFFS", lab.bpffs)  # where this process recognises eBPF guards
    port = BASE + 12
    agent = lab.agent(native(lab, port, allow="127.0.0.0/8"), "--backend", "ebpf")
    s = lab.server("tcp", port)
    g = until("guarded by eBPF", lambda: guarded_by(s.info, "web"))
    assert g.backend == "ebpf"
    assert connects(DENIED, port)
    call(agent.control, Ban(parse_network(DENIED)))
    until("the banned source dropped", lambda: not connects(DENIED, port))
    assert connects(ALLOWED, port)


def test_an_ebpf_ban_is_a_map_update_no_recompile_no_reattach(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKGATE_BPFFS", lab.bpffs)
    port = BASE + 23
    agent = lab.agent(native(lab, port, allow="127.0.0.0/8"), "--backend", "ebpf")
    s = lab.server("tcp", port)
    before = until("guarded by eBPF", lambda: guarded_by(s.info, "web"))
    st = agent.status()
    assert st["services"][0]["bans_in"] == "maps"
    counters = {k: st["agent"]["counters"][k] for k in ("attached", "reloaded", "replaced")}
    assert connects(DENIED, port)
    call(agent.control, Ban(parse_network(DENIED)))
    assert not connects(DENIED, port) and connects(ALLOWED, port)  # in force when the answer came
    after = guard(s.info["pid"], s.info["fd"])
    assert (after.state, after.digest, after.instructions) == (before.state, before.digest, before.instructions)
    st = agent.status()
    assert st["services"][0]["digest"] == before.digest and st["services"][0]["bans"] == 1
    assert {k: st["agent"]["counters"][k] for k in counters} == counters  # nothing attached again
    call(agent.control, Unban(parse_network(DENIED)))
    assert connects(DENIED, port)
    assert guard(s.info["pid"], s.info["fd"]).digest == before.digest


def test_a_classic_ban_is_a_recompile_and_says_so(lab: Lab) -> None:
    port = BASE + 24
    agent = lab.agent(native(lab, port, allow="127.0.0.0/8"), "--backend", "cbpf")
    s = lab.server("tcp", port)
    before = until("guarded", lambda: guarded_by(s.info, "web"))
    assert agent.status()["services"][0]["bans_in"] == "program"
    call(agent.control, Ban(parse_network(DENIED)))
    assert not connects(DENIED, port)
    assert guard(s.info["pid"], s.info["fd"]).digest != before.digest


def test_guard_latency(lab: Lab) -> None:
    port = BASE + 7
    lab.agent(native(lab, port))
    gaps = []
    for _ in range(LATENCY_RUNS):
        s = lab.server("tcp", port)
        until("guarded", lambda: guarded_by(s.info, "web"), every=0.0005)
        gaps.append(time.monotonic() - s.info["t"])
        s.stop()
        lab.servers.remove(s)
    gaps.sort()
    p50, p99 = gaps[len(gaps) // 2], gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
    print(f"\nguard latency listen -> guarded over {len(gaps)} restarts: p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {gaps[-1] * 1000:.1f} ms")
    assert p99 < 1.0


@pytest.mark.parametrize("line", ["sgsshd: 127.0.0.2", "ALL : 127.0.0.2"])  # DenyHosts's, and ALL as some writers use
def test_a_line_a_ban_tool_appends_to_hosts_deny_is_enforced_within_a_second_and_its_removal_too(lab: Lab, line: str) -> None:
    port = BASE + 28
    daemon = lab.server("tcp", port, argv0="sgsshd")
    allow = lab.path("hosts.allow", f"sgsshd: {ALLOWED}\n")
    header = "# DenyHosts: Thu Dec  3 10:00:00 2026 | sgsshd: 192.0.2.1\nsgsshd: 192.0.2.1\n"
    deny = lab.path("hosts.deny", header)
    lab.agent("--hosts-allow", allow, "--hosts-deny", deny)
    until("the daemon's listener guarded", lambda: guarded_by(daemon.info, "sgsshd"))
    assert connects(DENIED, port)
    before = guarded_by(daemon.info, "sgsshd")
    with open(deny, "a") as f:  # appended in place, as DenyHosts does
        f.write(f"{line}\n")
    t0 = time.monotonic()
    until("the appended line enforced", lambda: not connects(DENIED, port, timeout=0.1), timeout=WAIT)
    took = time.monotonic() - t0
    print(f"\nhosts.deny line appended -> enforced: {took * 1000:.0f} ms")
    assert connects(ALLOWED, port)
    assert took < 1.0, f"{took:.2f} s"
    assert guarded_by(daemon.info, "sgsshd") != before  # a new program, the line compiled in
    with open(deny, "w") as f:
        f.write(header)
    t0 = time.monotonic()
    until("the removal enforced", lambda: connects(DENIED, port), timeout=WAIT)
    assert time.monotonic() - t0 < 1.0
