"""The eBPF backend for real: ``run --backend ebpf`` and ``attach --backend ebpf`` on real
sockets, ``ls`` naming the guard after its loader exited, a reload and a failed transaction
on every socket, ``--backend auto`` for a policy classic BPF cannot hold, and the clean-up of
pins. Each test has its own bpf filesystem (a directory sockgate mounts itself, through
``$SOCKGATE_BPFFS``), unmounted afterwards whatever happened."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from sockgate.ebpf import layout
from sockgate.errors import AdapterError
from sockgate.kernel import Kernel, Slot, Step
from sockgate.kernel.bpfops import LinuxBpf
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.ebpf import EbpfBackend
from sockgate.kernel.sockets import LINUX_OPS
from sockgate.linux import bpfsys
from sockgate.policy.parser import parse_policy
from sockgate.resolve import resolve
from support.children import reap
from support.fakekernel import failing_attach
from support.launch import SRC, Launched, echo_command, ls_guard, port_of, sockgate_cli, tcp_echo, tcp_filtered, udp_echo, wait_for_file
from support.pinned import mounted

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF and mounting bpffs need root"),
    pytest.mark.root,
]

POLICY = "service echo {\n    allow 127.0.0.1\n    default deny\n}\n"
SWAPPED = "service echo {\n    allow 127.0.0.2\n    default deny\n}\n"
NOBODY = 65534


def pins(root: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if "debug" not in p.name)



# ------------------------------------------------------------------------------- run


def run_echo(tmp_path: Path, launch: Callable[..., Launched], text: str, *args: str) -> tuple[Launched, Path, Path]:
    """``sockgate run`` of the echo service under the policy ``text`` (service echo) with
    ``args``; with the policy file and the service's report file."""
    policy = tmp_path / "p.conf"
    policy.write_text(text)
    command, report = echo_command(tmp_path)
    return launch("--policy", str(policy), "--service", "echo", *args, *command), policy, report


def test_run_backend_ebpf_guards_reloads_and_ls_names_it(bpffs: str, tmp_path: Path, launch: Callable[..., Launched]) -> None:
    lr, policy, report = run_echo(tmp_path, launch, POLICY, "--backend", "ebpf",
                                  "--listen", "tcp://127.0.0.1:0", "--listen", "udp://127.0.0.1:0")
    addrs, _ = lr.started(2)
    assert all("backend ebpf" in line for line in lr.lines if "listening on" in line), lr.lines
    wait_for_file(report)
    tcp, udp = port_of(addrs[0]), port_of(addrs[1])
    assert tcp_echo("127.0.0.1", tcp) == b"ping\n"
    assert tcp_filtered("127.0.0.2", tcp)
    assert udp_echo("127.0.0.1", udp) == b"dgram" and udp_echo("127.0.0.2", udp, timeout=0.5) is None
    g = ls_guard(tcp)
    assert (g["status"], g["service"], g["backend"]) == ("sockgate", "echo", "ebpf")
    assert g["text"].startswith(f"sockgate echo {g['digest']} (ebpf")
    assert ls_guard(udp, "-u")["digest"] == g["digest"]
    assert any(p.startswith(f"sockgate/services/echo/prog-{g['digest']}") for p in pins(bpffs))

    # a reload swaps the program on every socket: both now enforce the new policy
    policy.write_text(SWAPPED)
    lr.signal(signal.SIGHUP)
    new = lr.wait_line(r"reloaded: service echo, digest ([0-9a-f]+), \d+ instructions, backend ebpf, on 2 socket").group(1)
    assert new != g["digest"] and ls_guard(tcp)["digest"] == new and ls_guard(udp, "-u")["digest"] == new
    assert tcp_echo("127.0.0.2", tcp) == b"ping\n" and tcp_filtered("127.0.0.1", tcp)
    assert udp_echo("127.0.0.2", udp) == b"dgram" and udp_echo("127.0.0.1", udp, timeout=0.5) is None


def test_the_guard_outlives_a_killed_run(bpffs: str, tmp_path: Path, launch: Callable[..., Launched]) -> None:
    """``run`` (the loader) killed outright: the command keeps the sockets, the program stays
    on them, and ls in another process still names it."""
    lr, policy, report = run_echo(tmp_path, launch, POLICY, "--backend", "ebpf", "--listen", "tcp://127.0.0.1:0")
    (addr,), pid = lr.started(1)
    assert pid is not None
    try:
        wait_for_file(report)
        port = port_of(addr)
        digest = ls_guard(port)["digest"]
        lr.proc.kill()
        lr.proc.wait(timeout=10)
        g = ls_guard(port)
        assert (g["status"], g["service"], g["digest"], g["backend"]) == ("sockgate", "echo", digest, "ebpf")
        assert tcp_echo("127.0.0.1", port) == b"ping\n" and tcp_filtered("127.0.0.2", port)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_backend_ebpf_unavailable_is_one_line(tmp_path: Path) -> None:
    d = Path(tempfile.mkdtemp(prefix="sgt-nobody-"))
    try:
        os.chmod(d, 0o755)
        policy = d / "p.conf"
        policy.write_text(POLICY)
        os.chmod(policy, 0o644)
        r = sockgate_cli("run", "--policy", str(policy), "--service", "echo", "--backend", "ebpf",
                         "--listen", "udp://127.0.0.1:0", "--", "true", user=NOBODY)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert "--backend ebpf" in r.stderr and "CAP_BPF" in r.stderr
    finally:
        shutil.rmtree(d)


def test_auto_takes_ebpf_for_what_classic_cannot_hold(bpffs: str, tmp_path: Path, launch: Callable[..., Launched]) -> None:
    hosts = "\n".join(f"    allow 10.{i >> 8}.{i & 255}.1" for i in range(6000))
    policy = tmp_path / "big.conf"
    policy.write_text(f"service echo {{\n    allow 127.0.0.1\n{hosts}\n    default deny\n}}\n")
    r = sockgate_cli("run", "--policy", str(policy), "--service", "echo", "--backend", "cbpf",
                     "--listen", "udp://127.0.0.1:0", "--", "true")
    assert r.returncode != 0 and "ebpf would take it (--backend ebpf or auto)" in r.stderr, r.stderr
    lr = launch("--policy", str(policy), "--service", "echo", "--listen", "udp://127.0.0.1:0", "--", "sleep", "30")
    (addr,), _ = lr.started(1)
    assert "backend ebpf" in lr.lines[-2] or any("backend ebpf" in line for line in lr.lines)
    assert ls_guard(port_of(addr), "-u")["backend"] == "ebpf"


# ----------------------------------------------------------------------------- attach


CHILD = "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(64)\nprint(s.fileno(),s.getsockname()[1],flush=True)\nsys.stdin.read()\n"


@pytest.fixture
def holder() -> Iterator[tuple[int, int, int]]:
    """A process holding a TCP listener: (pid, fd, port); killed afterwards."""
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        fd, port = map(int, p.stdout.readline().split())
        yield p.pid, fd, port
    finally:
        reap([p])


def test_attach_ebpf_outlives_its_loader(bpffs: str, tmp_path: Path, holder: tuple[int, int, int]) -> None:
    pid, fd, port = holder
    policy = tmp_path / "p.conf"
    policy.write_text(POLICY + SWAPPED.replace("echo", "other"))
    r = sockgate_cli("attach", "--policy", str(policy), "--service", "echo", "--backend", "ebpf",
                     "--pid", str(pid), "--fd", str(fd), "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["backend"] == "ebpf" and done["sockets"][0]["action"] == "attached"
    # the loader has exited: the guard stays, and ls (another process) still names it
    assert tcp_echo_or_accept(port, "127.0.0.1") and tcp_filtered("127.0.0.2", port)
    g = ls_guard(port)
    assert (g["status"], g["service"], g["digest"], g["backend"]) == ("sockgate", "echo", done["digest"], "ebpf")
    # a second loader recognises it as ours: a reload, no --force needed
    r = sockgate_cli("attach", "--policy", str(policy), "--service", "other", "--backend", "ebpf",
                     "--pid", str(pid), "--fd", str(fd), "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)["sockets"][0]
    assert again["action"] == "reloaded" and again["before"]["service"] == "echo"
    assert ls_guard(port)["service"] == "other"
    assert sockgate_cli("detach", "--pid", str(pid), "--fd", str(fd)).returncode == 0
    assert ls_guard(port)["status"] == "none"


def test_attach_auto_takes_ebpf_for_a_rate_limited_service(bpffs: str, tmp_path: Path, holder: tuple[int, int, int]) -> None:
    """Rate limits were refused (and sent to the proxy); with eBPF usable ``attach`` enforces
    them in the kernel; concurrent limits are still refused, naming the proxy."""
    pid, fd, port = holder
    policy = tmp_path / "p.conf"
    policy.write_text(POLICY.replace("    default", "    limit rate 2/minute per source\n    default"))
    r = sockgate_cli("attach", "--policy", str(policy), "--service", "echo", "--pid", str(pid), "--fd", str(fd), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "ebpf"
    assert tcp_echo_or_accept(port, "127.0.0.1") and tcp_echo_or_accept(port, "127.0.0.1")
    assert tcp_filtered("127.0.0.1", port)  # the third new connection in a minute
    policy.write_text(POLICY.replace("    default", "    limit concurrent 2\n    default"))
    r = sockgate_cli("attach", "--policy", str(policy), "--service", "echo", "--pid", str(pid), "--fd", str(fd))
    assert r.returncode == 2 and "`sockgate proxy`" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert ls_guard(port)["backend"] == "ebpf"  # the refused policy changed nothing


def tcp_echo_or_accept(port: int, source: str) -> bool:
    """A connect from ``source`` completes (the holder never accepts: the handshake is enough)."""
    with socket.socket() as c:
        c.settimeout(2)
        c.bind((source, 0))
        c.connect(("127.0.0.1", port))
        return True


# ------------------------------------------------------------------------ transaction


def test_a_failed_transaction_puts_the_ebpf_programs_back(bpffs: str) -> None:
    backend = EbpfBackend(LinuxBpf(), bpffs)
    kernel = Kernel([ClassicBackend(LINUX_OPS), backend], LINUX_OPS)
    old = kernel.load(kernel.compile(resolve(parse_policy(POLICY), "echo"), backend="ebpf"))
    new = kernel.load(kernel.compile(resolve(parse_policy(SWAPPED), "echo"), backend="ebpf"))
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        kernel.apply([Step(Slot(s.fileno(), f"sock {i}"), old) for i, s in enumerate(socks)])
        with failing_attach(EbpfBackend, 3) as calls, pytest.raises(AdapterError, match="injected failure"):
            kernel.apply([Step(Slot(s.fileno(), f"sock {i}"), new) for i, s in enumerate(socks)])
        assert len(calls) == 3
        assert [kernel.read(s.fileno()).digest for s in socks] == [old.compiled.digest] * 3
        for s in socks:  # the old program decides again: 127.0.0.1 in, 127.0.0.2 out
            assert udp_echo_to(s, "127.0.0.1") and not udp_echo_to(s, "127.0.0.2")
    finally:
        for s in socks:
            s.close()


def udp_echo_to(server: socket.socket, source: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind((source, 0))
        c.sendto(b"x", server.getsockname())
        server.settimeout(0.3)
        try:
            return server.recvfrom(16)[1][0] == source
        except TimeoutError:
            return False


# ---------------------------------------------------------------------------- clean-up


def programs(service_dir: str) -> list[str]:
    """The program directories of a service (its state maps beside them stay for good)."""
    return sorted(n for n in os.listdir(service_dir) if n.startswith("prog-"))


def test_pins_of_closed_sockets_are_collected(bpffs: str) -> None:
    kernel = Kernel([ClassicBackend(LINUX_OPS), EbpfBackend(LinuxBpf(), bpffs)], LINUX_OPS)
    collector = EbpfBackend(LinuxBpf(), bpffs, grace=0)
    kept, dropped = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    with kept, dropped:
        kept.bind(("127.0.0.1", 0))
        dropped.bind(("127.0.0.1", 0))
        a = kernel.load(kernel.compile(resolve(parse_policy(POLICY), "echo"), backend="ebpf"))
        b = kernel.load(kernel.compile(resolve(parse_policy(SWAPPED), "echo"), backend="ebpf"))
        kernel.apply([Step(Slot(kept.fileno(), "kept"), a)])
        kernel.apply([Step(Slot(dropped.fileno(), "dropped"), b)])
        root = f"{bpffs}/sockgate/services/echo"
        assert programs(root) == sorted([f"prog-{a.compiled.digest}", f"prog-{b.compiled.digest}"])
        dropped.close()
        assert collector.collect() == (1, 1)
        assert programs(root) == [f"prog-{a.compiled.digest}"]
        info = kernel.read(kept.fileno())
        assert (info.state, info.digest, info.backend) == ("sockgate", a.compiled.digest, "ebpf")
    assert collector.collect() == (1, 1) and programs(root) == []


def test_entries_of_a_namespace_that_is_gone_are_collected(bpffs: str, tmp_path: Path) -> None:
    """A guard recorded from another network namespace stays while that namespace lives and is
    collected (entry and program pins) once it is gone."""
    policy = tmp_path / "p.conf"
    policy.write_text(POLICY)
    ns = f"sgt-reg-{os.getpid()}"
    collector = EbpfBackend(LinuxBpf(), bpffs, grace=0)
    assert collector.unavailable() is None and mounted(bpffs)  # mounted here, seen in the namespace
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "sockgate", "run", "--backend", "ebpf",
                            "--policy", str(policy), "-s", "echo", "-l", "tcp://127.0.0.1:0", "--", "true"],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=SRC), cwd="/")
        assert r.returncode == 0, r.stderr
        assert collector.collect() == (0, 0)  # its namespace still exists (ip netns holds it)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)
    assert collector.collect() == (1, 1)
    assert not [n for n in os.listdir(f"{bpffs}/sockgate/services/echo") if n.startswith("prog-")]  # service state stays


def test_planted_root_is_refused(bpffs: str) -> None:
    backend = EbpfBackend(LinuxBpf(), bpffs)
    assert backend.unavailable() is None and mounted(bpffs)
    os.chown(f"{bpffs}/sockgate", NOBODY, NOBODY)
    why = EbpfBackend(LinuxBpf(), bpffs).unavailable()
    assert why is not None and "owned by uid 65534, not root" in why
    os.chown(f"{bpffs}/sockgate", 0, 0)
    os.rmdir(f"{bpffs}/sockgate")
    os.symlink("/tmp", f"{bpffs}/sockgate")
    why = EbpfBackend(LinuxBpf(), bpffs).unavailable()
    assert why is not None and "a symlink or not a directory" in why


def test_refused_sums_the_services_pinned_counters(bpffs: str) -> None:
    """``guard.refused`` reads the whole LRU map (batched lookups: thousands of sources)."""
    backend = EbpfBackend(LinuxBpf(), bpffs)
    kernel = Kernel([ClassicBackend(LINUX_OPS), backend], LINUX_OPS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        kernel.apply([Step(Slot(s.fileno(), "s"), kernel.load(kernel.compile(resolve(parse_policy(POLICY), "echo"), backend="ebpf")))])
        assert kernel.read(s.fileno()).refused == 0  # the load pinned the service's empty counters
        os.unlink(f"{bpffs}/sockgate/services/echo/counts")
        assert kernel.read(s.fileno()).refused is None  # no counters pinned: nothing counted
        spec = layout.counts_spec(10_000)
        fd = bpfsys.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, spec.name)
        try:
            n = 6000
            bpfsys.map_update_many(fd, [layout.SourceKey(4, i).pack() for i in range(n)],
                                   [layout.Count(i % 5, 1, 2).pack() for i in range(n)])
            bpfsys.pin(fd, f"{bpffs}/sockgate/services/echo/counts")
        finally:
            os.close(fd)
        info = kernel.read(s.fileno())
        assert (info.refused, info.backend) == (sum(i % 5 for i in range(6000)), "ebpf")


# ------------------------------------------- run: rate limits in the kernel, the refusal log


RATED = """\
service echo {
    allow 127.0.0.1
    allow 127.0.0.2
    limit rate 4/minute per source ban 10m
    default deny
}
"""


def refused_json(service: str) -> list[dict[str, Any]]:
    r = sockgate_cli("refused", "--service", service, "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_run_enforces_rate_limits_and_bans_in_the_kernel(bpffs: str, tmp_path: Path, launch: Callable[..., Launched]) -> None:
    """``auto`` takes eBPF for a rate-limited service; one program guards the TCP and the UDP
    socket. A burst from 127.0.0.2 past its rate is dropped and bans it (TCP and UDP alike);
    127.0.0.1 keeps its own bucket; ``ls`` and ``refused`` show the guard's counts and the ban."""
    lr, policy, report = run_echo(tmp_path, launch, RATED, "--listen", "tcp://127.0.0.1:0", "--listen", "udp://127.0.0.1:0")
    addrs, _ = lr.started(2)
    assert all("backend ebpf" in line for line in lr.lines if "listening on" in line), lr.lines
    wait_for_file(report)
    tcp, udp = port_of(addrs[0]), port_of(addrs[1])
    assert [tcp_echo("127.0.0.2", tcp) for _ in range(3)] == [b"ping\n"] * 3
    assert udp_echo("127.0.0.2", udp) == b"dgram"  # the fourth new connection: the same bucket
    assert tcp_filtered("127.0.0.2", tcp)  # the fifth: over the rate, and banned
    assert udp_echo("127.0.0.2", udp, timeout=0.5) is None  # banned: every packet
    assert tcp_echo("127.0.0.1", tcp) == b"ping\n" and udp_echo("127.0.0.1", udp) == b"dgram"
    rows = refused_json("echo")
    bans = [r for r in rows if r["type"] == "ban"]
    assert [(b["source"], b["origin"]) for b in bans] == [("127.0.0.2/32", "limit")], rows
    counted = {r["source"]: r["count"] for r in rows if r["type"] == "refused"}
    assert counted.get("127.0.0.2", 0) >= 2 and "127.0.0.1" not in counted, rows  # the SYN, its retries, the datagram
    g = ls_guard(tcp)
    assert (g["backend"], g["refused"]) == ("ebpf", sum(counted.values()))
    assert ls_guard(udp, "-u")["refused"] == g["refused"]  # one service, one set of counters


def knock(source: str, port: int) -> None:
    """One SYN from ``source``, and nothing more (closing a connecting socket sends nothing)."""
    with socket.socket() as c:
        c.setblocking(False)
        c.bind((source, 0))
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass


COMMON = Path("/etc/fail2ban/filter.d/common.conf")
FILTER = Path(__file__).resolve().parents[2] / "contrib/fail2ban/filter.d/sockgate.conf"


def fail2ban_finds(line: str, tmp_path: Path) -> list[str]:
    """The hosts ``fail2ban-regex`` finds in ``line`` with contrib's filter (the oracle)."""
    conf = tmp_path / "filter.d"
    conf.mkdir()
    shutil.copy(COMMON, conf / "common.conf")
    shutil.copy(FILTER, conf / "sockgate.conf")
    log = tmp_path / "refusals.log"
    log.write_text(line + "\n")
    r = subprocess.run(["fail2ban-regex", "--out", "ip", str(log), str(conf / "sockgate.conf")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_run_writes_the_refusal_log(fmt: str, bpffs: str, tmp_path: Path, launch: Callable[..., Launched]) -> None:
    """A denied client knocks five times: one line with its count arrives on stderr, which
    fail2ban's filter matches (text) or which parses with the documented keys (JSON)."""
    policy = tmp_path / "p.conf"
    policy.write_text(POLICY)
    lr = launch("--policy", str(policy), "--service", "echo", "--backend", "ebpf", "--refusal-interval", "2",
                "--log-format", fmt, "--listen", "tcp://127.0.0.1:0", "--", "sleep", "60")
    (addr,), _ = lr.started(1)
    port = port_of(addr)
    for _ in range(5):
        knock("127.0.0.3", port)
    if fmt == "json":
        line = lr.wait_line(r'"source": ?"127\.0\.0\.3"').string
        record = json.loads(line)
        assert {"service", "source", "count", "first_seen", "last_seen"} <= set(record), record
        assert (record["service"], record["count"], record["reason"], record["rule"]) == ("echo", 5, "rule", None)
        assert record["first_seen"].endswith("Z") and record["first_seen"] <= record["last_seen"]
        return
    m = lr.wait_line(r"echo: refused connect from 127\.0\.0\.3 \((\d+) times in \d+ s, default\)")
    assert m.group(1) == "5", m.string
    assert "sockgate[" in m.string
    if shutil.which("fail2ban-regex") is not None and COMMON.exists():
        assert fail2ban_finds(m.string, tmp_path) == ["127.0.0.3"]
    elif os.environ.get("CI") == "true":
        pytest.fail("fail2ban-regex (Debian package fail2ban) is not installed")


@pytest.mark.parametrize("inetd", [False, True], ids=["activation", "inetd"])
def test_the_refusal_log_runs_from_the_start_and_through_a_reload(inetd: bool, bpffs: str, tmp_path: Path,
                                                                  launch: Callable[..., Launched]) -> None:
    """``auto`` is eBPF from the start (no limits needed), so the refusal log runs from the
    start; a reload that adds a rate limit keeps the backend and the log, in both process
    models."""
    policy = tmp_path / "p.conf"
    policy.write_text(POLICY)
    lr = launch("--policy", str(policy), "--service", "echo", "--refusal-interval", "1", "--listen", "tcp://127.0.0.1:0",
                *(["--inetd", "--", "cat"] if inetd else ["--", "sleep", "60"]))
    (addr,), _ = lr.started(1, supervised=not inetd)
    if inetd:
        lr.wait_line(r"running cat per connection")  # the server's signals are set up
    assert any("backend ebpf" in line for line in lr.lines if "listening on" in line), lr.lines
    lr.seen_line(r"refusal log: text to stderr, one line per refused source per 1 s")  # the reader is there
    port = port_of(addr)
    policy.write_text(POLICY.replace("    default", "    limit rate 100/minute per source\n    default"))
    lr.signal(signal.SIGHUP)
    lr.wait_line(r"reloaded: service echo, digest [0-9a-f]+, \d+ instructions, backend ebpf, on 1 socket")
    for _ in range(3):
        knock("127.0.0.3", port)
    m = lr.wait_line(r"echo: refused connect from 127\.0\.0\.3 \((\d+) times? in \d+ s, default\)")
    assert m.group(1) == "3", m.string
