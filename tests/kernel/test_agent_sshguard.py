"""sshguard end to end: Debian's sshguard, its hosts.allow backend (``sshg-fw-hosts``), reading a
log file the test owns, and ``sockgate agent`` enforcing what it writes.

sshguard is run whole (``/usr/sbin/sshguard``: logtail → parser → blocker → backend) with its
own configuration. ``sshg-fw-hosts`` writes ``/etc/hosts.allow`` — a path compiled in — so
sshguard runs in a private mount namespace with a test directory bound over ``/etc``: the
machine's files are never touched, and the agent (in the machine's mount namespace) reads the
same file at its real path in the test directory. The failures are forged ``sshd`` lines,
harmless (no service reads them but sshguard), appended to that log; the attacker is a client
namespace's address (sshguard never blocks loopback). The agent runs in the server namespace
(``nsenter --net``) and guards the daemon's port (``--map``); the probe comes from the client
namespace, as from another host.

What is checked: sshguard's block (``ALL : ADDR : DENY`` in its ``###sshguard###`` block) is
enforced within a second of being written (the attacker's SYNs dropped, a bystander still let
in) and ``status`` lists it as a ban of origin ``sshguard``; sshguard's release (after its block
time) is enforced within a second too. Readiness: sshguard's ``tail`` has the log open before
the lines are written; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from sockgate.agent.client import call
from sockgate.agent.protocol import Status
from sockgate.linux import cgroupbpf
from support import fleet, netlab
from support.pinned import private_bpffs

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts, the agent)"), pytest.mark.root]

SSHGUARD = "/usr/sbin/sshguard"
BACKEND = "/usr/libexec/sshguard/sshg-fw-hosts"
PORT = 8022
BYSTANDER = "198.18.0.3"
BLOCK_S = 3  # sshguard's BLOCK_TIME: the release comes some seconds after the block
APPLY_S = 1.0  # the promise: a line written is enforced within a second, its removal too
WAIT = 20.0


@dataclass
class Setup:
    lab: netlab.Lab
    etc: Path
    log: Path
    control: str

    @property
    def allow(self) -> Path:
        return self.etc / "hosts.allow"

    def attacker_in(self, wait: float) -> bool:
        return fleet.probe(self.lab.client.name, [(0, self.lab.server_v4)], self.lab.client_v4, wait, PORT)[0]

    def bystander_in(self) -> bool:
        return fleet.probe(self.lab.client.name, [(0, self.lab.server_v4)], BYSTANDER, 2.0, PORT)[0]


def _available() -> str | None:
    if not (os.path.exists(SSHGUARD) and os.access(BACKEND, os.X_OK)):
        return "needs Debian's sshguard (make setup installs it)"
    if shutil.which("nsenter") is None or shutil.which("unshare") is None:
        return "needs nsenter and unshare (util-linux)"
    return netlab.can_netns()


@pytest.fixture
def setup() -> Iterator[Setup]:
    if (reason := _available()) is not None:
        pytest.skip(reason)
    root = cgroupbpf.cgroup2_root()
    assert root is not None, "no cgroup2 mounted"
    cgroup = f"{root}/sg-sshguard-{uuid.uuid4().hex[:8]}"
    os.mkdir(cgroup)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sg-sshguard-") as tmp, private_bpffs() as bpffs, netlab.lab() as lab:
            lab.add_client_addresses([BYSTANDER])
            etc, log = Path(tmp) / "etc", Path(tmp) / "auth.log"
            (etc / "sshguard").mkdir(parents=True)
            (etc / "hosts.allow").write_text("sgsshd : ALL\n")
            (etc / "hosts.deny").write_text("")
            log.write_text("")
            (etc / "sshguard" / "sshguard.conf").write_text(
                f'BACKEND="{BACKEND}"\nFILES="{log}"\nTHRESHOLD=10\nBLOCK_TIME={BLOCK_S}\nDETECTION_TIME=60\n')
            control = f"{tmp}/run/agent.sock"
            try:
                service = fleet.start_service(lab.server.name, cgroup, PORT)
                procs.append(service)
                agent, notify = fleet.start_agent(
                    lab.server.name, ["--hosts-allow", str(etc / "hosts.allow"), "--hosts-deny", str(etc / "hosts.deny"),
                                      "--map", f"sgsshd=tcp/{PORT}"],
                    control, f"{bpffs}/agent", cgroup, f"{tmp}/agent.log", f"{tmp}/notify")
                procs.append(agent)
                with notify:
                    fleet.wait_ready([(agent, notify, f"{tmp}/agent.log")])
                yield Setup(lab, etc, log, control)
            finally:
                for p in reversed(procs):
                    fleet.stop(p)
                    if p.stdout is not None:
                        p.stdout.close()
    finally:
        os.rmdir(cgroup)


@contextlib.contextmanager
def sshguard(etc: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """sshguard with ``etc`` as its /etc (a private mount namespace), until its tail reads ``log``."""
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          'mount --bind "$0" /etc && exec "$1"', str(etc), SSHGUARD],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT
        while not _tailing(p.pid, log):
            assert p.poll() is None, f"sshguard exited ({p.returncode}): {p.stderr.read() if p.stderr else b''!r}"
            assert time.monotonic() < deadline, "sshguard's tail never opened the log"
            time.sleep(0.01)
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        if p.stderr is not None:
            p.stderr.close()
        deadline = time.monotonic() + 10
        while _session(p.pid):  # the whole pipeline gone
            assert time.monotonic() < deadline, f"sshguard's processes left: {_session(p.pid)}"
            time.sleep(0.01)


def _session(sid: int) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                out.append(int(pid))
    return out


def _tailing(sid: int, log: Path) -> bool:
    for pid in _session(sid):
        with contextlib.suppress(OSError):
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(log) for fd in os.listdir(f"/proc/{pid}/fd")):
                return True
    return False


def until(what: str, check: object, timeout: float = WAIT) -> float:
    """The wall-clock time ``check()`` first held (polled every 5 ms), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        at = time.time()
        if check():  # type: ignore[operator]
            return at
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.005)


def written(path: Path) -> float:
    """When ``path`` was last written (its mtime: sshguard renames a new file over it), on the
    wall clock — not when this process, perhaps descheduled a while, noticed it."""
    return path.stat().st_mtime


def failures(log: Path, src: str, n: int = 3) -> None:
    """Forged sshd failure lines, as syslog writes them (sshguard scores 10 each)."""
    stamp = time.strftime("%b %e %H:%M:%S")
    with open(log, "a") as f:
        for i in range(n):
            f.write(f"{stamp} web sshd[4242]: Failed password for root from {src} port {50000 + i} ssh2\n")


def test_sshguards_block_and_release_are_enforced_within_a_second(setup: Setup) -> None:
    s = setup
    line = f"ALL : {s.lab.client_v4} : DENY"
    until("the daemon's port guarded", lambda: call(s.control, Status()).result["unguarded"] == 0  # type: ignore[index]
          and call(s.control, Status()).result["services"][0]["sockets"])  # type: ignore[index]
    assert s.attacker_in(2.0) and s.bystander_in()
    with sshguard(s.etc, s.log):
        failures(s.log, s.lab.client_v4)
        until("sshguard's block in hosts.allow", lambda: line in s.allow.read_text())
        blocked_at = written(s.allow)
        dropped = until("the block enforced", lambda: not s.attacker_in(0.05) and not s.attacker_in(0.5), timeout=5)
        assert dropped - blocked_at < APPLY_S, f"block enforced {dropped - blocked_at:.2f} s after sshguard wrote it"
        assert s.bystander_in()
        bans = call(s.control, Status()).result["bans"]["items"]  # type: ignore[index]
        assert [(b["net"], b["origin"]) for b in bans] == [(f"{s.lab.client_v4}/32", "sshguard")]
        until("sshguard's release", lambda: line not in s.allow.read_text(), timeout=BLOCK_S + WAIT)
        gone = written(s.allow)
        back = until("the release enforced", lambda: s.attacker_in(0.05), timeout=5)
        assert back - gone < APPLY_S, f"release enforced {back - gone:.2f} s after sshguard wrote it"
        assert call(s.control, Status()).result["bans"]["items"] == []  # type: ignore[index]
    print(f"\nsshguard: block enforced {dropped - blocked_at:.2f} s after written, release {back - gone:.2f} s")
