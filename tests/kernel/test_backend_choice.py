"""Choosing the kernel backend, for real: ``--backend auto`` is eBPF in a process that may load
it (root here) and classic BPF in one that may not — a child whose bounding set drops CAP_BPF
and CAP_SYS_ADMIN (``support.launch.NO_BPF``), whom bpf(2) itself refuses, no monkeypatch — for
``run``, ``attach``, the proxy and the library; the start-up line names the backend and why,
and ``ls --json`` the guard's ``backend``; in such a child ``--backend ebpf`` is a one-line
error that leaves no socket guarded by something weaker; a policy too large for classic BPF
says that eBPF would take it, or why it cannot here. Every test has its own bpffs (conftest)."""

from __future__ import annotations

import errno
import json
import re
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from sockgate.ebpf.insn import BPF_CALL, BPF_JMP
from sockgate.ebpf.program import compile_service
from sockgate.errors import AdapterError, UnsupportedPlatform
from sockgate.kernel import Kernel, Slot, Step
from sockgate.kernel.bpfops import LinuxBpf
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.ebpf import EbpfBackend
from sockgate.kernel.ebpfopts import OPTIONS, probe_program
from sockgate.kernel.sockets import LINUX_OPS
from sockgate.policy.parser import parse_policy
from sockgate.resolve import resolve_service
from support.children import reap
from support.launch import (NO_BPF, SRC, Launched, echo_command, ls_guard, port_of, sockgate_cli, tcp_echo, tcp_filtered,
                            wait_for_file)
from support.proxyproc import EchoServer, ProxyProc, connect, is_filtered, roundtrip

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF, and a child that drops the capabilities for it, need root"),
    pytest.mark.root,
]

POLICY = "service echo {\n    allow 127.0.0.1\n    default deny\n}\n"
ROOT_WHY = r"backend ebpf \(auto: this process may load ebpf\)"
NO_BPF_WHY = r"backend cbpf \(auto: ebpf unavailable: loading eBPF needs root or CAP_BPF"



@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "p.conf"
    p.write_text(POLICY)
    return p


# ---------------------------------------------------------------------------------- run


@pytest.mark.parametrize("prefix, why, backend", [((), ROOT_WHY, "ebpf"), (NO_BPF, NO_BPF_WHY, "cbpf")],
                         ids=["root", "no-bpf-caps"])
def test_run_auto_names_its_backend_on_start_up_and_guards_with_it(
        prefix: tuple[str, ...], why: str, backend: str, tmp_path: Path, policy: Path, launch: Callable[..., Launched]) -> None:
    command, report = echo_command(tmp_path)
    lr = launch("--policy", str(policy), "--service", "echo", "--listen", "tcp://127.0.0.1:0", *command, prefix=prefix)
    lr.wait_line(why)
    (addr,), _ = lr.started(1)
    wait_for_file(report, lines=lr.lines)
    port = port_of(addr)
    g = ls_guard(port)
    assert (g["status"], g["service"], g["backend"]) == ("sockgate", "echo", backend)
    assert tcp_echo("127.0.0.1", port) == b"ping\n" and tcp_filtered("127.0.0.2", port)


def test_where_ebpf_may_not_be_loaded_asking_for_it_is_one_line_and_guards_nothing(policy: Path) -> None:
    r = sockgate_cli("run", "--policy", str(policy), "--service", "echo", "--backend", "ebpf",
                     "--listen", "tcp://127.0.0.1:0", "--", "true", prefix=NO_BPF)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--backend ebpf: loading eBPF needs root or CAP_BPF" in r.stderr and "listening" not in r.stderr
    r = sockgate_cli("proxy", "--listen", "tcp://127.0.0.1:0", "--forward", "tcp://127.0.0.1:9", "--backend", "ebpf",
                     prefix=NO_BPF)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--backend ebpf: loading eBPF needs root or CAP_BPF" in r.stderr and "listening" not in r.stderr


def test_a_policy_too_large_for_classic_bpf_says_ebpf_would_take_it(tmp_path: Path) -> None:
    hosts = "\n".join(f"    allow 10.{i >> 8}.{i & 255}.1" for i in range(6000))
    big = tmp_path / "big.conf"
    big.write_text(f"service echo {{\n    allow 127.0.0.1\n{hosts}\n    default deny\n}}\n")
    argv = ("run", "--policy", str(big), "--service", "echo", "--listen", "udp://127.0.0.1:0", "--", "true")
    r = sockgate_cli(*argv[:5], "--backend", "cbpf", *argv[5:])
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "does not fit in one BPF program" in r.stderr and "ebpf would take it (--backend ebpf or auto)" in r.stderr
    r = sockgate_cli(*argv, prefix=NO_BPF)  # auto, where eBPF may not be loaded: classic, and why not eBPF
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "ebpf would take it, but not here: loading eBPF needs root or CAP_BPF" in r.stderr


# ------------------------------------------------------------------------------- attach


HOLDER = "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(64)\nprint(s.fileno(),s.getsockname()[1],flush=True)\nsys.stdin.read()\n"


@pytest.fixture
def holders() -> Iterator[Callable[[], tuple[int, int, int]]]:
    """Processes holding a TCP listener, each (pid, fd, port); killed afterwards."""
    procs: list[subprocess.Popen[str]] = []

    def start() -> tuple[int, int, int]:
        p = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None
        fd, port = map(int, p.stdout.readline().split())
        return p.pid, fd, port

    yield start
    reap(procs)


@pytest.mark.parametrize("prefix, why, backend", [((), ROOT_WHY, "ebpf"), (NO_BPF, NO_BPF_WHY, "cbpf")],
                         ids=["root", "no-bpf-caps"])
def test_attach_auto_names_its_backend(prefix: tuple[str, ...], why: str, backend: str, policy: Path,
                                       holders: Callable[[], tuple[int, int, int]]) -> None:
    pid, fd, port = holders()
    r = sockgate_cli("attach", "--policy", str(policy), "--service", "echo", "--pid", str(pid), "--fd", str(fd), "--json",
                     prefix=prefix)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["backend"] == backend and done["sockets"][0]["action"] == "attached"
    assert re.match(why, f"backend {backend} ({done['backend_reason']})"), done
    r = sockgate_cli("attach", "--policy", str(policy), "--service", "echo", "--pid", str(pid), "--fd", str(fd),
                     prefix=prefix)  # again, as text: a reload, the backend and why on its line
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert re.search(f"^reloaded pid {pid} fd {fd} .*, {why}", r.stdout), r.stdout
    assert ls_guard(port)["backend"] == backend
    assert tcp_filtered("127.0.0.2", port)


# -------------------------------------------------------------------------------- proxy


@pytest.mark.parametrize("prefix, why, backend", [((), ROOT_WHY, "ebpf"), (NO_BPF, NO_BPF_WHY, "cbpf")],
                         ids=["root", "no-bpf-caps"])
def test_proxy_auto_names_its_backend_on_start_up(prefix: tuple[str, ...], why: str, backend: str, tmp_path: Path,
                                                  echo: EchoServer, procs: list[ProxyProc]) -> None:
    p = ProxyProc(["--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}", "--policy",
                   str(_written(tmp_path, POLICY))], tmp_path / "proxy.log", prefix=prefix)
    procs.append(p)
    p.ready()
    ready = p.find(event="notice", message="listening")[-1]
    assert re.match(why, ready["backend"]), ready
    port = p.tcp_port()
    assert ls_guard(port)["backend"] == backend
    with connect(port, "127.0.0.1") as s:
        assert roundtrip(s, b"a") == b"a"
    assert is_filtered(port, "127.0.0.2")


def _written(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "proxy.conf"
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------ library


LIBRARY = """
import socket, sockgate
from sockgate.policy.parser import parse_policy
p = parse_policy(%r, "p.conf")
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
g = p.guard(s, "echo")
print(g.backend, sockgate.guard_of(s).backend, g.why, sep="|")
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen(8)
try:
    p.guard(t, "echo", backend="ebpf")
except sockgate.SockgateError as e:
    print(type(e).__name__, e, sep="|")
print(sockgate.guard_of(t).state)
"""


def test_the_library_chooses_as_the_commands_do() -> None:
    env = dict(os.environ, PYTHONPATH=SRC)
    r = subprocess.run([*NO_BPF, sys.executable, "-c", LIBRARY % POLICY], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    chosen, refused, state = r.stdout.splitlines()
    assert chosen.split("|")[:2] == ["cbpf", "cbpf"] and chosen.split("|")[2].startswith("auto: ebpf unavailable: ")
    assert refused.startswith("UnsupportedPlatform|--backend ebpf: loading eBPF needs root or CAP_BPF"), refused
    assert state == "none"  # refused before the socket was touched
    r = subprocess.run([sys.executable, "-c", LIBRARY % POLICY], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "ebpf|ebpf|auto: this process may load ebpf"


# ------------------------------------------------ the probe is the program (REVIEW3 R6)


class OldKernel(LinuxBpf):
    """bpf(2) as a kernel that verifies a trivial socket filter but refuses what a service's
    program uses (a ring buffer, cmpxchg: Linux < 5.12): any program longer than two
    instructions is refused as its verifier would."""

    def prog_load(self, prog_type: int, insns: bytes, name: str) -> int:
        if len(insns) > 16:
            raise AdapterError(f"load BPF program {name}: invalid argument (EINVAL)", errno=errno.EINVAL)
        return super().prog_load(prog_type, insns, name)


def test_the_probe_verifies_the_program_a_service_loads(bpffs: str) -> None:
    """``auto`` probes with the program ``load`` loads — every map type and helper of a rated
    service's — so it passes here, and on a kernel that takes a trivial filter but refuses the
    real one it falls back to classic BPF, which then guards a real socket; eBPF asked for by
    name stays a one-line error."""
    loads: list[int] = []

    class Counting(LinuxBpf):
        def prog_load(self, prog_type: int, insns: bytes, name: str) -> int:
            loads.append(len(insns) // 8)
            return super().prog_load(prog_type, insns, name)

    probe = EbpfBackend(Counting(), bpffs)
    assert probe.unavailable() is None and probe.unavailable() is None
    rated = compile_service(parse_policy(RATED_PROBE).services[0], options=OPTIONS)
    assert loads == [len(probe_program().insns)]  # once per process
    assert {m.name for m in probe_program().service_maps} == {m.name for m in rated.service_maps}
    assert [i for i in probe_program().insns if i.code == BPF_JMP | BPF_CALL] == [i for i in rated.insns if i.code == BPF_JMP | BPF_CALL]

    old = EbpfBackend(OldKernel(), bpffs)
    assert (old.unavailable() or "").startswith("bpf(2) does not work here: load BPF program sg_probe")
    kernel = Kernel([ClassicBackend(LINUX_OPS), old], LINUX_OPS)
    assert kernel.choose("auto").name == "cbpf"
    with pytest.raises(UnsupportedPlatform, match="^--backend ebpf: bpf\\(2\\) does not work here"):
        kernel.compile(resolve_service(parse_policy(POLICY).services[0]), backend="ebpf")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        program = kernel.compile(resolve_service(parse_policy(POLICY.replace("127.0.0.1", "127.0.0.2")).services[0]))
        assert program.backend == "cbpf"
        kernel.apply([Step(Slot(srv.fileno(), "the test's socket"), kernel.load(program))])
        assert tcp_filtered("127.0.0.1", srv.getsockname()[1])  # guarded, by classic BPF


RATED_PROBE = """\
service echo {
    allow 127.0.0.1
    limit rate 4/minute per source ban 10m
    default deny
}
"""
