"""`sockgate demo`, the README's first command: runs, agrees with the engine, needs no root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sockgate import demo

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _check_service(out: str, proto: str) -> None:
    kernel = "open +handshake" if proto == "tcp" else "open +reply"
    denied = r"filtered +no answer in 0\.\d s: the SYN" if proto == "tcp" else r"open\|filtered +no answer in 0\.\d s: the datagrams"
    found = re.search(rf"^{proto} echo service on 127\.0\.0\.1:\d+\n(  .*\n)+", out, re.M)
    assert found, out
    text = found.group(0)
    assert re.search(r"filter read back from the socket: sockgate service echo \(digest [0-9a-f]{16}, \d+ instructions\)", text)
    assert re.search(rf"from 127\.0\.0\.1 +engine: allow +demo\.policy:3: allow 127\.0\.0\.1\n +kernel: {kernel} in [\d.]+ ms; the echo came back", text), text
    assert re.search(rf"from 127\.0\.0\.2 +engine: deny +demo\.policy:4: default deny\n +kernel: {denied}", text), text


def _check_output(out: str, tcp: bool = True) -> None:
    assert "policy demo.policy (built in):" in out
    _check_service(out, "udp")
    if tcp:
        _check_service(out, "tcp")
    else:
        assert "tcp echo service: not shown: " in out and "CAP_NET_ADMIN" in out
    assert "the kernel did what the decision engine said, for every source" in out
    assert "MISMATCH" not in out


def test_demo_command() -> None:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "sockgate", "demo"], capture_output=True, text=True, timeout=60, env=_env())
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    _check_output(done.stdout)
    assert elapsed < 10  # a second or two here; generous for a loaded CI machine


# Import everything while privileged (the interpreter may live where nobody cannot read), then
# become nobody and run the demo for real.
AS_NOBODY = """
import contextlib, importlib, io, os, pkgutil, sys
import sockgate
from sockgate.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["demo"]) == 0
for m in pkgutil.walk_packages(sockgate.__path__, "sockgate."):  # lazy imports on other paths
    if m.name.endswith("__main__"):
        continue
    with contextlib.suppress(Exception):
        importlib.import_module(m.name)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
assert os.geteuid() == 65534
sys.exit(main(["demo"]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody (as nobody it is the plain test above)")
def test_demo_needs_no_root() -> None:
    done = subprocess.run([sys.executable, "-c", AS_NOBODY], capture_output=True, text=True, timeout=60, env=_env(), cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
    # Newer kernels keep TCP filters for CAP_NET_ADMIN; the demo must then say so and still
    # show UDP, which any user may guard.
    _check_output(done.stdout, tcp="tcp echo service on" in done.stdout)


def test_report_disagreement_is_a_failure() -> None:
    policy = demo.demo_policy()
    allowed = demo.decide(policy, "echo", demo.Peer.parse("127.0.0.1"))
    look = demo.Look("tcp", "127.0.0.1", allowed, "x", "filtered", None, 0.5, None)
    report = demo.Report((demo.Shown("tcp", "127.0.0.1:1", "no filter"),), (look,), 0.5)
    assert not report.ok
    assert "MISMATCH: the kernel disagreed with the engine for tcp from 127.0.0.1." in demo.render(report)
    assert demo.Look("udp", "127.0.0.1", allowed, "x", "open", 0.001, 0.0, False).agrees is False  # echo lost
    denied = demo.decide(policy, "echo", demo.Peer.parse("127.0.0.2"))
    assert demo.Look("udp", "127.0.0.2", denied, "x", "open|filtered", None, 0.5, None).agrees
    assert not demo.Look("udp", "127.0.0.2", denied, "x", "closed", 0.001, 0.0, None).agrees
    assert not demo.Report((), (), 0.5).ok
