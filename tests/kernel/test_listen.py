"""Opening listeners from URLs, for real: options, dual stack, Unix files, long paths, stale files."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from sockgate.errors import AdapterError, UsageError
from sockgate.linux.listen import SUN_PATH_MAX, Listener, is_live, open_listener, open_listeners
from sockgate.urls import parse_url

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sockets")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to another user)")


@pytest.fixture
def opened() -> Iterator[list[Listener]]:
    out: list[Listener] = []
    yield out
    for lst in out:
        lst.close()


def _open(opened: list[Listener], text: str) -> Listener:
    lst = open_listener(parse_url(text))
    opened.append(lst)
    return lst


def test_tcp_loopback_listens_with_reuseaddr(opened: list[Listener]) -> None:
    lst = _open(opened, "tcp://127.0.0.1:0?backlog=7")
    s = lst.sock
    assert s.family == socket.AF_INET and s.type == socket.SOCK_STREAM
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    port = s.getsockname()[1]
    assert lst.address() == f"tcp://127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_all_addresses_is_one_dual_stack_socket(opened: list[Listener]) -> None:
    lst = _open(opened, "tcp://:0")
    s = lst.sock
    assert s.family == socket.AF_INET6
    assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    port = s.getsockname()[1]
    for host in ("127.0.0.1", "::1"):
        with socket.create_connection((host, port), timeout=2):
            conn, peer = s.accept()
            conn.close()
            assert peer[0] in ("::ffff:127.0.0.1", "::1")


def test_specific_ipv6_is_v6only_and_reuseport(opened: list[Listener]) -> None:
    lst = _open(opened, "udp://[::1]:0?reuseport=1&name=dns")
    s = lst.sock
    assert s.type == socket.SOCK_DGRAM and lst.name == "dns"
    assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0


def test_hostname_is_resolved(opened: list[Listener]) -> None:
    lst = _open(opened, "tcp://localhost:0")
    assert lst.sock.getsockname()[0] in ("127.0.0.1", "::1")


def test_before_listen_runs_before_listen(opened: list[Listener]) -> None:
    seen: list[int] = []

    def hook(s: socket.socket) -> None:
        seen.append(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))

    opened.extend(open_listeners([parse_url("tcp://127.0.0.1:0")], before_listen=hook))
    assert seen == [0]
    assert opened[0].sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        busy = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(AdapterError, match="Address already in use"):
            open_listeners([parse_url(f"unix:{path}"), parse_url(busy)])
    finally:
        taken.close()
    assert not path.exists()  # the first socket's file went with it


def test_unix_mode_and_file(opened: list[Listener], tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    lst = _open(opened, f"unix:{path}?mode=0640")
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(path))
    lst.close()
    assert not path.exists()


@needs_root
def test_unix_owner_and_group(opened: list[Listener], tmp_path: Path) -> None:
    path = tmp_path / "owned.sock"
    _open(opened, f"unix:{path}?owner=nobody&group=nogroup&mode=0660")
    st = os.lstat(path)
    nobody = pwd.getpwnam("nobody")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o660)


def test_unknown_owner_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such user: 'no-such-user-sgt'"):
        open_listener(parse_url(f"unix:{tmp_path}/x.sock?owner=no-such-user-sgt"))
    assert not (tmp_path / "x.sock").exists()


def _long_dir(tmp_path: Path, total: int, base: str) -> Path:
    d = tmp_path
    while len(str(d / base)) < total:
        d = d / ("d" * min(60, total - len(str(d / base))))
    d.mkdir(parents=True, exist_ok=True)
    return d / base


@pytest.mark.parametrize("base", ["s.sock", "b" * 100 + ".sock"])
def test_long_unix_paths(opened: list[Listener], tmp_path: Path, base: str) -> None:
    path = _long_dir(tmp_path, 300, base)
    assert len(str(path)) > SUN_PATH_MAX
    lst = _open(opened, f"unix:{path}?mode=0600")
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    # a client in the directory connects by the bare name and is accepted by our listener
    out = subprocess.run(
        [sys.executable, "-c", "import os,socket,sys;os.chdir(sys.argv[1]);"
         "s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[2]);s.sendall(b'hi')", str(path.parent), path.name],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lst.sock.settimeout(5)
    conn, _ = lst.sock.accept()
    with conn:
        assert conn.recv(2) == b"hi"
    if len(base) < 80:  # the stale/live test connects through the short alias
        assert is_live(str(path))
    else:
        with pytest.raises(AdapterError, match="cannot test whether this socket is in use"):
            is_live(str(path))
    lst.close()
    assert not path.exists()


def test_stale_socket_is_replaced(opened: list[Listener], tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(path))
    old.close()  # the file stays, nobody listens
    assert path.exists() and not is_live(str(path))
    _open(opened, f"unix:{path}")
    assert is_live(str(path))


def test_live_socket_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(AdapterError, match="another process is listening on this socket"):
            open_listener(parse_url(f"unix:{path}"))
        assert is_live(str(path))
    finally:
        live.close()


def test_non_socket_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    with pytest.raises(AdapterError, match="exists and is not a socket; not replacing it"):
        open_listener(parse_url(f"unix:{path}"))
    assert path.read_text() == "keep me"


def test_abstract_socket(opened: list[Listener]) -> None:
    name = f"sockgate-test-{os.getpid()}"
    lst = _open(opened, f"unix:@{name}")
    with socket.socket(socket.AF_UNIX) as c:
        c.connect("\0" + name)
    assert lst.path is None and lst.address() == f"unix:@{name}"
