"""Socket activation both ways (fds from 3, LISTEN_* variables) and sd_notify, with real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sockgate.errors import UsageError
from sockgate.linux import activation

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sockets")

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Run in the child: report what sockgate's receiving side finds, and what the fds are.
RECEIVER = """
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from sockgate.linux import activation
if sys.argv[2] == "mine":
    os.environ["LISTEN_PID"] = str(os.getpid())
got = activation.listen_fds()
out = []
for fd, name in got:
    s = socket.socket(fileno=fd)
    out.append([fd, name, s.getsockname()[1] if s.family != socket.AF_UNIX else s.getsockname(),
                os.get_inheritable(fd)])
    s.detach()
print(json.dumps({"fds": out, "env": [k for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES") if k in os.environ]}))
"""


def test_listen_env_and_child_env() -> None:
    assert activation.listen_env(["web", "admin"], 42) == {
        "LISTEN_FDS": "2",
        "LISTEN_PID": "42",
        "LISTEN_FDNAMES": "web:admin",
    }
    env = activation.child_env({"PATH": "/bin", "LISTEN_FDS": "9", "LISTEN_PID": "1"}, [], 5)
    assert env == {"PATH": "/bin"}
    with pytest.raises(UsageError, match="fd name 'a:b': 1-255 characters, no ':'"):
        activation.listen_env(["a:b"], 1)


def _run_receiver(socks: list[socket.socket], names: list[str], mode: str) -> dict[str, object]:
    fds = [s.fileno() for s in socks]
    env = activation.child_env(os.environ, names, 1)  # LISTEN_PID=1: not the child
    out = subprocess.run(
        [sys.executable, "-c", RECEIVER, SRC, mode],
        preexec_fn=lambda: activation.place_fds(fds),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        close_fds=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_passed_sockets_arrive_from_fd_3_in_order_with_names() -> None:
    socks = [socket.socket() for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
            s.listen()
        ports = [s.getsockname()[1] for s in socks]
        got = _run_receiver(socks, ["web", "admin", "metrics"], "mine")
        assert got["fds"] == [[3, "web", ports[0], False], [4, "admin", ports[1], False], [5, "metrics", ports[2], False]]
        assert got["env"] == []  # unset after reading, as sd_listen_fds(1) does
    finally:
        for s in socks:
            s.close()


def test_listen_pid_of_another_process_means_nothing() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        got = _run_receiver([s], ["x"], "other")
        assert got["fds"] == [] and got["env"] == []
    finally:
        s.close()


def test_listen_fds_checks_names_count() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}
    with pytest.raises(UsageError, match="LISTEN_FDNAMES has 1 names for LISTEN_FDS=2"):
        activation.listen_fds(environ=env)
    assert env == {}


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_path_and_abstract(tmp_path: Path, abstract: bool) -> None:
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if abstract:
            name = f"sockgate-notify-{os.getpid()}"
            rx.bind("\0" + name)
            where = "@" + name
        else:
            where = str(tmp_path / "notify")
            rx.bind(where)
        rx.settimeout(5)
        env = {"NOTIFY_SOCKET": where}
        assert activation.ready(env)
        assert rx.recv(4096) == b"READY=1"
        assert activation.reloading(env)
        lines = rx.recv(4096).decode().split("\n")
        assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
        assert activation.stopping(env)
        assert rx.recv(4096) == b"STOPPING=1"
    finally:
        rx.close()


def test_notify_without_socket_is_a_no_op() -> None:
    assert activation.notify("READY=1", {}) is False
    with pytest.raises(UsageError, match="expected an absolute path or @abstract name"):
        activation.notify("READY=1", {"NOTIFY_SOCKET": "relative"})
