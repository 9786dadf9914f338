"""``sockgate attach`` / ``detach`` on the sockets of other, running processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from sockgate import guard as guard_mod
from sockgate import load as sockgate_load
from sockgate.cli.main import main
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.linux import filter as kfilter
from sockgate.linux import pidfd
from support.children import reap
from support.fakekernel import failing_attach
from support.launch import open_from, still_echoes
from support.pinned import private_bpffs
from support.verdicts import local_sockets, tcp_reach

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only")

POLICY = """
service web {
    allow { 127.0.0.1, 127.0.0.3 }
    default deny
}
service strict {
    allow 127.0.0.1
    default deny
}
service named {
    allow host .example.com
    default deny
}
"""

# A stand-in service: makes the sockets named on its command line, reports them as JSON, then
# obeys stdin: "accept" accepts what is queued and reports how many; EOF exits.
CHILD = r"""
import json, socket, sys, threading
specs, out = sys.argv[1:], {"socks": []}
for spec in specs:
    kind, *opts = spec.split(",")
    if kind == "fork":
        continue
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX)
        s.bind("\0sgt-attach-%d" % id(s))
        s.listen(8)
        out["socks"].append({"fd": s.fileno(), "kind": kind})
        globals().setdefault("keep", []).append(s)
        continue
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    if "reuseport" in opts:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    p = next((int(o[5:]) for o in opts if o.startswith("port=")), 0)
    s.bind(("127.0.0.1", p))
    if kind == "tcp":
        s.listen(4096)
    if "connect" in opts:
        s.connect(("127.0.0.1", 9))  # a client's UDP socket: not a service to guard
    if "autoaccept" in opts:
        def serve(lst=s):
            while True:
                lst.accept()[0].close()
        threading.Thread(target=serve, daemon=True).start()
    out["socks"].append({"fd": s.fileno(), "port": s.getsockname()[1], "kind": kind, "opts": opts})
    globals().setdefault("keep", []).append(s)
if "fork" in specs:  # a pre-forked worker sharing the listeners; dies with its parent
    import ctypes, os, signal, time
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        time.sleep(300)
        os._exit(0)
print(json.dumps(out), flush=True)
for line in sys.stdin:
    if line.strip() == "accept":
        n = 0
        for s in keep:
            if s.type == socket.SOCK_STREAM:
                s.setblocking(False)
                while True:
                    try:
                        c, _ = s.accept()
                    except BlockingIOError:
                        break
                    c.close()
                    n += 1
        print(n, flush=True)
"""

Spawn = Callable[..., tuple[subprocess.Popen[str], list[dict[str, Any]]]]


@pytest.fixture
def policy_file() -> Iterator[str]:
    # world-readable, so the test run as another user can read it
    d = tempfile.mkdtemp(prefix="sgt-attach-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "attach.policy")
    with open(path, "w") as f:
        f.write(POLICY)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    procs: list[subprocess.Popen[str]] = []

    def start(*specs: str) -> tuple[subprocess.Popen[str], list[dict[str, Any]]]:
        p = subprocess.Popen([sys.executable, "-c", CHILD, *specs], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None
        return p, json.loads(p.stdout.readline())["socks"]

    yield start
    reap(procs)


def sockgate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def state(pid: int, fd: int) -> guard_mod.GuardInfo:
    with pidfd.borrowed(pid, fd) as dup:
        return guard_mod.guard_of(dup)


def reach(port: int, *sources: str) -> dict[str, bool]:
    return tcp_reach({socket.AF_INET: ("127.0.0.1", port)}, sources, local_sockets(), wait=0.8)


def accept_all(p: subprocess.Popen[str]) -> int:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("accept\n")
    p.stdin.flush()
    return int(p.stdout.readline())


def test_attach_by_pid_and_fd_then_reload_and_detach(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    p, (s,) = spawn("tcp")
    pid, fd, port = str(p.pid), str(s["fd"]), s["port"]
    rc, out, err = sockgate(capsys, "attach", "--policy", policy_file, "--service", "strict", "--pid", pid, "--fd", fd)
    assert (rc, err) == (0, "")
    assert out.startswith(f"attached pid {pid} fd {fd} tcp 127.0.0.1:{port}: service strict")
    assert state(p.pid, s["fd"]).service == "strict"
    assert reach(port, "127.0.0.1", "127.0.0.3") == {"127.0.0.1": True, "127.0.0.3": False}
    assert accept_all(p) == 1

    # reload in place: queued connections and the listener survive the swap
    queued = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(3)]
    rc, out, _ = sockgate(capsys, "attach", "--policy", policy_file, "--service", "web", "--pid", pid, "--fd", fd, "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["service"] == "web" and doc["command"] == "attach"
    assert [(x["action"], x["before"]["service"]) for x in doc["sockets"]] == [("reloaded", "strict")]
    assert accept_all(p) == 3
    for c in queued:
        c.close()
    assert reach(port, "127.0.0.3", "127.0.0.4") == {"127.0.0.3": True, "127.0.0.4": False}

    rc, out, _ = sockgate(capsys, "detach", "--pid", pid, "--fd", fd)
    assert rc == 0 and out.startswith(f"detached pid {pid} fd {fd}")
    assert state(p.pid, s["fd"]).state == "none"
    assert reach(port, "127.0.0.4") == {"127.0.0.4": True}
    rc, out, _ = sockgate(capsys, "detach", "--pid", pid, "--fd", fd)
    assert rc == 0 and out.startswith("unchanged")


def test_attach_by_pid_guards_tcp_and_udp(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    p, (*socks, client) = spawn("tcp", "udp", "udp,connect")
    rc, out, _ = sockgate(capsys, "attach", "--policy", policy_file, "--service", "web", "--pid", str(p.pid), "--json")
    assert rc == 0
    assert state(p.pid, client["fd"]).state == "none"
    done = json.loads(out)["sockets"]
    assert sorted((d["fd"], d["proto"], d["action"]) for d in done) == sorted(
        (s["fd"], s["kind"], "attached") for s in socks
    )
    assert all(state(p.pid, s["fd"]).service == "web" for s in socks)
    rc, out, _ = sockgate(capsys, "detach", "--pid", str(p.pid), "--proto", "udp")
    assert rc == 0 and out.count("detached") == 1
    assert [state(p.pid, s["fd"]).state for s in socks] == ["sockgate", "none"]


def test_attach_by_port_reuseport_group(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    a, (sa,) = spawn("tcp,reuseport")
    b, (sb,) = spawn(f"tcp,reuseport,port={sa['port']}")
    port = sa["port"]
    rc, out, _ = sockgate(capsys, "attach", "--policy", policy_file, "--service", "strict", "--port", str(port), "--json")
    assert rc == 0
    assert sorted(d["pid"] for d in json.loads(out)["sockets"]) == sorted([a.pid, b.pid])
    assert state(a.pid, sa["fd"]).service == state(b.pid, sb["fd"]).service == "strict"
    # the kernel spreads SYNs over the group by hash: from many sources, none gets through
    denied = [f"127.0.1.{i}" for i in range(1, 40)]
    got = reach(port, "127.0.0.1", *denied)
    assert got.pop("127.0.0.1") and not any(got.values())
    rc, out, _ = sockgate(capsys, "detach", "--port", str(port))
    assert rc == 0 and out.count("detached") == 2


def test_part_of_a_reuseport_group_is_refused(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    """Guarding one member would let through every client the kernel hands to the others."""
    a, (sa,) = spawn("tcp,reuseport")
    b, (sb,) = spawn(f"tcp,reuseport,port={sa['port']}")
    port = sa["port"]
    for target in (["--pid", str(a.pid)], ["--pid", str(a.pid), "--fd", str(sa["fd"])]):
        rc, out, err = sockgate(capsys, "attach", "--policy", policy_file, "--service", "strict", *target)
        assert rc == 1 and out == "", (target, out)
        assert err == (
            f"sockgate: pid {a.pid} fd {sa['fd']} (tcp 127.0.0.1:{port}) shares tcp 127.0.0.1:{port} with pid {b.pid}"
            f" fd {sb['fd']} (an SO_REUSEPORT group: the kernel spreads clients over all of its sockets); nothing was"
            f" changed: guard the whole group with --port {port}\n"
        ), err
        assert state(a.pid, sa["fd"]).state == state(b.pid, sb["fd"]).state == "none"
    rc, out, _ = sockgate(capsys, "attach", "--policy", policy_file, "--service", "strict", "--port", str(port))
    assert rc == 0 and out.count("attached") == 2


def test_udp_group_hint_names_the_protocol(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    a, (sa,) = spawn("udp,reuseport")
    spawn(f"udp,reuseport,port={sa['port']}")
    rc, _, err = sockgate(capsys, "attach", "--policy", policy_file, "--service", "strict", "--pid", str(a.pid))
    assert rc == 1 and err.rstrip().endswith(f"guard the whole group with --port {sa['port']} --proto udp"), err


def test_listener_shared_by_forked_workers_attached_by_pid(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    """A listener inherited across fork is one socket, not a group: --pid of either is enough."""
    p, (s,) = spawn("tcp", "fork")
    rc, out, err = sockgate(capsys, "attach", "--policy", policy_file, "--service", "web", "--pid", str(p.pid))
    assert rc == 0 and out.count("attached") == 1, err


def test_listener_shared_by_forked_workers_counted_once(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    p, (s,) = spawn("tcp", "fork")
    rc, out, _ = sockgate(capsys, "attach", "--policy", policy_file, "--service", "web", "--port", str(s["port"]), "--json")
    assert rc == 0
    assert len(json.loads(out)["sockets"]) == 1
    assert state(p.pid, s["fd"]).service == "web"


def test_port_group_all_or_nothing(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    a, (sa,) = spawn("tcp,reuseport")
    b, (sb,) = spawn(f"tcp,reuseport,port={sa['port']}")
    port = str(sa["port"])
    with pidfd.borrowed(b.pid, sb["fd"]) as dup:
        kfilter.attach(dup, kfilter.SOCK_FILTER.pack(0x06, 0, 0, 0xFFFFFFFF))
    # refused before anything is touched
    rc, _, err = sockgate(capsys, "attach", "--policy", policy_file, "--service", "strict", "--backend", "cbpf", "--port", port)
    assert rc == 1 and "foreign filter" in err and "--force" in err and err.count("\n") == 1
    assert state(a.pid, sa["fd"]).state == "none" and state(b.pid, sb["fd"]).state == "foreign"

    # a failure half-way is rolled back: every socket gets its previous program back (classic
    # programs: the failure is injected into the classic backend)
    # (a's "web" filter is put on through the library: attach refuses part of a group)
    with pidfd.borrowed(a.pid, sa["fd"]) as dup:
        guard_mod.guard(sockgate_load(policy_file), dup, "web", backend="cbpf")
    with failing_attach(ClassicBackend, 2) as calls:
        rc, _, err = sockgate(capsys, "attach", "--policy", policy_file, "--service", "strict", "--backend", "cbpf", "--port", port, "--force")
    assert rc == 1 and "injected failure" in err and len(calls) == 2
    assert state(a.pid, sa["fd"]).service == "web" and state(b.pid, sb["fd"]).state == "foreign"

    rc, out, _ = sockgate(capsys, "attach", "--policy", policy_file, "--service", "strict", "--backend", "cbpf", "--port", port, "--force")
    assert rc == 0 and "replaced" in out and "reloaded" in out
    # detach leaves foreign filters alone unless forced; ours is sockgate's now
    rc, out, _ = sockgate(capsys, "detach", "--port", port)
    assert rc == 0 and out.count("detached") == 2


def test_detach_refuses_foreign_without_force(capsys: Any, spawn: Spawn) -> None:
    p, (s,) = spawn("udp")
    with pidfd.borrowed(p.pid, s["fd"]) as dup:
        kfilter.attach(dup, kfilter.SOCK_FILTER.pack(0x06, 0, 0, 0xFFFFFFFF))
    rc, _, err = sockgate(capsys, "detach", "--pid", str(p.pid), "--fd", str(s["fd"]))
    assert rc == 1 and "foreign filter (1 instructions)" in err
    assert state(p.pid, s["fd"]).state == "foreign"
    rc, out, _ = sockgate(capsys, "detach", "--pid", str(p.pid), "--fd", str(s["fd"]), "--force")
    assert rc == 0 and "detached" in out and state(p.pid, s["fd"]).state == "none"


def test_modified_sockgate_filter_is_treated_as_foreign(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    """A genuine marker in front of an allow-all body: neither reloaded nor detached as ours."""
    from sockgate.bpf import BPF_K, BPF_RET, compile_service, encode, stmt

    program = compile_service(sockgate_load(policy_file).service("web"))
    forged = encode(program.insns[: program.insns[0].k + 1] + (stmt(BPF_RET | BPF_K, 0xFFFFFFFF),))
    p, (s,) = spawn("udp")
    with pidfd.borrowed(p.pid, s["fd"]) as dup:
        kfilter.attach(dup, forged)
    assert state(p.pid, s["fd"]).state == "modified"
    target = ["--pid", str(p.pid), "--fd", str(s["fd"])]
    rc, _, err = sockgate(capsys, "attach", "--policy", policy_file, "--service", "web", *target)
    assert rc == 1 and "modified sockgate filter" in err and "--force" in err
    rc, _, err = sockgate(capsys, "detach", *target)
    assert rc == 1 and "modified sockgate filter" in err
    rc, out, _ = sockgate(capsys, "attach", "--policy", policy_file, "--service", "web", *target, "--force")
    assert rc == 0 and "replaced" in out and state(p.pid, s["fd"]).state == "sockgate"


def test_locked_filter_refused(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    p, (s,) = spawn("tcp")
    args = ["--policy", policy_file, "--service", "web", "--pid", str(p.pid), "--fd", str(s["fd"])]
    assert sockgate(capsys, "attach", *args)[0] == 0
    with pidfd.borrowed(p.pid, s["fd"]) as dup:
        kfilter.lock(dup)
    rc, _, err = sockgate(capsys, "attach", *args[:3], "strict", *args[4:], "--force")
    assert rc == 1 and "locked (SO_LOCK_FILTER)" in err
    rc, _, err = sockgate(capsys, "detach", *args[4:])
    assert rc == 1 and "locked" in err
    assert state(p.pid, s["fd"]).service == "web"


def test_refusals(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    p, (s,) = spawn("tcp")
    base = ["attach", "--policy", policy_file, "--service", "web"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    cases = {
        ("--pid", str(dead.pid)): f"no such process: pid {dead.pid}",
        ("--pid", str(p.pid), "--fd", "99"): f"process {p.pid} has no fd 99",
        ("--pid", str(p.pid), "--fd", "0"): f"pid {p.pid} fd 0 is not a socket",
        ("--port", str(free_port)): f"no TCP listener is bound to port {free_port}",
        ("--port", str(free_port), "--proto", "udp"): f"no UDP socket is bound to port {free_port}",
        ("--fd", "3"): "one of the arguments --pid --port is required",
    }
    u, (us,) = spawn("unix")
    cases[("--pid", str(u.pid), "--fd", str(us["fd"]))] = "guards TCP and UDP sockets only"
    for extra, message in cases.items():
        rc, out, err = sockgate(capsys, *base, *extra)
        assert (rc, out) != (0, "") and message in err, (extra, err)
        assert err.count("\n") == 1, err
    # a policy error: exit 2, nothing changes
    rc, _, err = sockgate(capsys, *base[:4], "named", "--pid", str(p.pid))
    assert rc == 2 and "host name" in err and "sockgate proxy" in err, err
    rc, _, err = sockgate(capsys, *base[:4], "nope", "--pid", str(p.pid))
    assert rc == 2 and "no service 'nope'" in err
    assert state(p.pid, s["fd"]).state == "none"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run sockgate as another user")
def test_permission_refused_for_another_user(spawn: Spawn, policy_file: str) -> None:
    p, (s,) = spawn("tcp")
    exe = shutil.which("sockgate") or str(Path(sys.executable).with_name("sockgate"))
    argv = [exe, "attach", "--policy", policy_file, "--service", "web"]
    for target in (["--pid", str(p.pid), "--fd", str(s["fd"])], ["--pid", str(p.pid)], ["--port", str(s["port"])]):
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv, *target],
            capture_output=True, text=True, timeout=60, cwd="/",
        )
        assert r.returncode == 1, (target, r.stdout, r.stderr)
        assert "permission denied" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert state(p.pid, s["fd"]).state == "none"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_port_owned_by_another_user_without_cap_sys_ptrace_is_a_permission_error(policy_file: str) -> None:
    """Root without CAP_SYS_PTRACE (a container's root) cannot see another user's descriptors:
    that is a permission problem, not "a socket that belongs to no process"."""
    p = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", CHILD, "tcp"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
    )
    try:
        assert p.stdout is not None
        (s,) = json.loads(p.stdout.readline())["socks"]
        exe = shutil.which("sockgate") or str(Path(sys.executable).with_name("sockgate"))
        r = subprocess.run(
            ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace", exe, "attach",
             "--policy", policy_file, "--service", "web", "--port", str(s["port"])],
            capture_output=True, text=True, timeout=60, cwd="/",
        )
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "permission denied (needs root with CAP_SYS_PTRACE" in r.stderr, r.stderr
        assert "belongs to no process" not in r.stderr
    finally:
        reap([p])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to drop CAP_NET_ADMIN")
def test_attach_tcp_without_cap_net_admin_says_so_once(policy_file: str) -> None:
    code = (
        "import socket, subprocess, sys, os\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "r = subprocess.run([sys.argv[1], 'attach', '--policy', sys.argv[2], '--service', 'web',"
        " '--backend', 'cbpf', '--pid', str(os.getpid())], capture_output=True, text=True, timeout=60)\n"
        "print(r.returncode); sys.stdout.write(r.stderr)\n"
    )
    exe = shutil.which("sockgate") or str(Path(sys.executable).with_name("sockgate"))
    r = subprocess.run(
        ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", sys.executable, "-c", code, exe, policy_file],
        capture_output=True, text=True, timeout=60,
    )
    rc, *err = r.stdout.splitlines()
    if rc == "0":
        pytest.skip("this kernel lets anybody attach a filter to a TCP socket")
    assert rc == "1" and len(err) == 1, r.stdout
    assert err[0].count("CAP_NET_ADMIN") == 1 and "run `sockgate attach` as root or with that capability" in err[0], err


def test_sees_every_process_reads_the_effective_capabilities(tmp_path: Path) -> None:
    from sockgate.linux.procfs import sees_every_process

    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t000001ffffffffff\n")
    assert sees_every_process(str(status))
    status.write_text("Name:\tx\nCapEff:\t000001fffff7ffff\n")  # all but bit 19
    assert not sees_every_process(str(status))
    assert not sees_every_process(str(tmp_path / "missing"))


def test_hosts_access_pair(capsys: Any, spawn: Spawn, tmp_path: Path) -> None:
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    allow.write_text("echod: 127.0.0.1 127.0.0.7\n")
    deny.write_text("ALL: ALL\n")
    p, (s,) = spawn("tcp")
    rc, out, err = sockgate(
        capsys, "attach", "--hosts-allow", str(allow), "--hosts-deny", str(deny), "--service", "echod", "--pid", str(p.pid)
    )
    assert rc == 0, err
    assert state(p.pid, s["fd"]).service == "echod"
    assert reach(s["port"], "127.0.0.7", "127.0.0.8") == {"127.0.0.7": True, "127.0.0.8": False}


HAMMER = r"""
import json, socket, sys, threading, time
port, counts, errors = int(sys.argv[1]), {"ok": 0, "failed": 0}, []
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("ready", flush=True)
while not stop.is_set():
    try:
        # 3 s: a loaded CI machine may starve the accept loop long enough for the backlog to
        # overflow (a SYN retransmit after 1 s); a source a filter wrongly denied would get no answer at all.
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            counts["ok"] += 1
    except OSError as e:
        counts["failed"] += 1
        errors.append(repr(e))
print(json.dumps({**counts, "errors": errors[:5]}), flush=True)
"""


def test_fifty_reloads_under_load(capsys: Any, spawn: Spawn, policy_file: str) -> None:
    """Connections from a source both policies allow never fail while the filter is swapped
    50 times; the source only one of them allows is dropped from the next connection on."""
    p, (s,) = spawn("tcp,autoaccept")
    target = ["--pid", str(p.pid), "--fd", str(s["fd"])]
    hammer = subprocess.Popen([sys.executable, "-c", HAMMER, str(s["port"])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert hammer.stdin is not None and hammer.stdout is not None
    try:
        assert hammer.stdout.readline() == "ready\n"
        for i in range(50):
            service = "web" if i % 2 == 0 else "strict"
            rc, out, err = sockgate(capsys, "attach", "--policy", policy_file, "--service", service, *target)
            assert rc == 0, err
            assert out.startswith("attached" if i == 0 else "reloaded")
        hammer.stdin.close()
        counts = json.loads(hammer.stdout.readline())
    finally:
        hammer.kill()
        hammer.wait()
        hammer.stdout.close()
    assert counts["failed"] == 0 and counts["ok"] > 50, counts
    assert state(p.pid, s["fd"]).service == "strict"
    assert reach(s["port"], "127.0.0.3") == {"127.0.0.3": False}


# A service that keeps each accepted connection and echoes lines on it until the peer goes.
ECHO_KEEPER = r"""
import socket, sys, threading
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.fileno(), s.getsockname()[1], flush=True)
def echo(c):
    with c:
        while (data := c.recv(100)):
            c.sendall(data)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("backend", ["cbpf", "ebpf"])
def test_a_reload_that_denies_a_source_ends_its_established_connections(
        capsys: Any, policy_file: str, monkeypatch: pytest.MonkeyPatch, backend: str, keep: bool) -> None:
    """Accepted connections keep the filter they were accepted with: a reload denying
    127.0.0.3 must end .3's open connection (and only that), unless --keep-established."""
    with private_bpffs() as bpffs:
        monkeypatch.setenv("SOCKGATE_BPFFS", bpffs)
        p = subprocess.Popen([sys.executable, "-c", ECHO_KEEPER], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None
            fd, port = p.stdout.readline().split()
            base = ["attach", "--policy", policy_file, "--pid", str(p.pid), "--fd", fd, "--backend", backend]
            assert sockgate(capsys, *base, "--service", "web")[0] == 0
            one, three = open_from("127.0.0.1", int(port)), open_from("127.0.0.3", int(port))
            with one, three:
                assert still_echoes(one) and still_echoes(three)
                rc, out, err = sockgate(capsys, *base, "--service", "strict", *(["--keep-established"] if keep else []))
                assert (rc, err) == (0, "")
                assert ("ended 1 established connection(s) the policy denies" in out) != keep
                assert still_echoes(three) == keep
                assert still_echoes(one)
                assert reach(int(port), "127.0.0.3") == {"127.0.0.3": False}
        finally:
            p.kill()
            p.wait(10)
            if p.stdout is not None:
                p.stdout.close()
