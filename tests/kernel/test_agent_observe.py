"""agent/observe for real: who a holder is (uid, executable) is read only for a holder whose
name an enrolled daemon has — after the name match, never for every process on the host —
and under a pidfd that still names the process when the read is done, so a holder that exited
meanwhile (its pid free for another) is never taken for the daemon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from sockgate.agent import observe
from sockgate.agent.model import HolderInfo
from sockgate.kernel import default_kernel
from sockgate.linux import pidfd, procfs
from support.children import reap

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="pidfd and sock_diag are Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="borrowing another process's socket needs root"),
    pytest.mark.root,
]

LISTEN = ("import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
          "print(s.getsockname()[1], flush=True); sys.stdin.read()")


def listener(exe: str) -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen([exe, "-I", "-c", LISTEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, int(p.stdout.readline())


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[tuple[subprocess.Popen[str], int], tuple[subprocess.Popen[str], int]]]:
    daemon = tmp_path / "sgdaemon"
    os.symlink(os.path.realpath(sys.executable), daemon)
    procs = [listener(str(daemon)), listener(sys.executable)]
    try:
        yield procs[0], procs[1]
    finally:
        reap(p for p, _ in procs)


def test_who_a_holder_is_is_read_only_after_its_name_matched(
        two: tuple[tuple[subprocess.Popen[str], int], tuple[subprocess.Popen[str], int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (daemon, dport), (other, oport) = two
    read: list[int] = []
    real = procfs.identity

    def spy(pid: int, proc: str = procfs.PROC) -> procfs.Identity:
        read.append(pid)
        return real(pid, proc)

    monkeypatch.setattr(procfs, "identity", spy)
    o = observe.Observer(default_kernel(), named=lambda h: h.argv0 == "sgdaemon")
    with o.scan({dport, oport}) as look:
        holders = {h.observed.port: h.observed.holders[0] for h in look.held.values()}
    assert read == [daemon.pid]
    assert holders[dport].pid == daemon.pid and holders[dport].euid == 0 and holders[dport].exe
    assert holders[oport].pid == other.pid and (holders[oport].euid, holders[oport].exe) == (None, None)


def test_a_holder_that_exited_before_its_identity_was_confirmed_keeps_none(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-I", "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        with pidfd.PidfdCache() as pidfds:
            h = HolderInfo(child.pid, 0, "python3", "python3")
            alive = observe._identified(h, pidfds, procfs.PROC)
            assert alive.euid == 0 and alive.exe is not None  # (the same code path, the process alive)
            child.send_signal(signal.SIGKILL)
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # a zombie: /proc/PID still reads
            assert procfs.identity(child.pid).euid == 0
            gone = observe._identified(h, pidfds, procfs.PROC)
            assert (gone.euid, gone.exe, gone.exe_root_owned) == (None, None, False)
    finally:
        child.kill()
        child.wait()
        if child.stdin is not None:
            child.stdin.close()


def test_a_socket_of_this_process_is_never_identified_unless_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        o = observe.Observer(default_kernel(), named=lambda h: False)
        with o.scan({port}) as look:
            (held,) = look.held.values()
        assert held.observed.holders[0].pid == os.getpid() and held.observed.holders[0].euid is None
