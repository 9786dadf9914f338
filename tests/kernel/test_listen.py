"""Opening listeners from URLs, for real: options, dual stack, Unix files, long paths, stale files."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from sockgate.errors import AdapterError, UsageError
from sockgate.linux import listen, sockfile
from sockgate.linux.listen import SUN_PATH_MAX, Listener, open_listener, open_listeners, take_over
from sockgate.linux.sockfile import is_live
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
    assert is_live(str(path))  # through the file's descriptor, whatever the name's length
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


# --- a local user who can write the socket's directory -------------------------------------
# Root binds in a directory user `nobody` owns; `nobody` swaps names there (a real process of
# that user, through the real kernel), and root must never act on what the swapped name reaches.

NOBODY = 65534


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sgt-listen-"))  # under /tmp: reachable by nobody
    os.chmod(d, 0o755)
    os.chown(d, NOBODY, NOBODY)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    f = tmp_path / "secret"
    f.write_text("root only")
    os.chmod(f, 0o600)
    return f


def _as_nobody(*argv: str) -> None:
    subprocess.run(list(argv), user=NOBODY, group=NOBODY, extra_groups=[], check=True, timeout=30)


def _untouched(secret: Path) -> None:
    st = os.stat(secret)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    assert secret.read_text() == "root only"


@needs_root
def test_take_over_never_chmods_through_a_planted_symlink(nobody_dir: Path, secret: Path) -> None:
    """A proxy reload hands the name to another service: no race needed, the symlink is there."""
    path = nobody_dir / "app.sock"
    lst = open_listener(parse_url(f"unix:{path}?mode=0600"))
    try:
        _as_nobody("ln", "-sfn", str(secret), str(path))
        with pytest.raises(AdapterError, match="no longer the socket file bound here"):
            take_over(lst, parse_url(f"unix:{path}?mode=0666&owner=nobody"), owns_file=True)
        _untouched(secret)
    finally:
        lst.close()
    assert path.is_symlink()  # not ours: left alone


@needs_root
@pytest.mark.parametrize("query", ["?mode=0666&owner=nobody&group=nogroup", ""])
def test_bind_then_swap_is_refused(nobody_dir: Path, secret: Path, monkeypatch: pytest.MonkeyPatch, query: str) -> None:
    """The race in `run`: the name is swapped between bind and the mode being applied (or,
    with no mode to apply, before the listener is handed out as listening on that name)."""
    path = nobody_dir / "app.sock"
    real_bind = listen.bind_unix

    def bind_then_swap(sock: socket.socket, where: str) -> None:
        real_bind(sock, where)
        _as_nobody("ln", "-sfn", str(secret), where)

    monkeypatch.setattr(listen, "bind_unix", bind_then_swap)
    with pytest.raises(AdapterError, match="no longer the socket file bound here"):
        open_listener(parse_url(f"unix:{path}{query}"))
    _untouched(secret)
    assert path.is_symlink()  # the failed open removed nothing that was not its own


@needs_root
def test_file_is_born_with_no_more_than_the_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before owner and mode are applied, the new file already allows no more than asked."""
    seen: list[int] = []
    real_bind = listen.bind_unix

    def bind_and_look(sock: socket.socket, where: str) -> None:
        real_bind(sock, where)
        seen.append(stat.S_IMODE(os.lstat(where).st_mode))

    monkeypatch.setattr(listen, "bind_unix", bind_and_look)
    old = os.umask(0)
    try:
        lst = open_listener(parse_url(f"unix:{tmp_path}/m.sock?mode=0600"))
    finally:
        os.umask(old)
    lst.close()
    assert seen == [0o600]


@needs_root
def test_close_never_removes_another_socket_through_a_swapped_directory(nobody_dir: Path, tmp_path: Path) -> None:
    """`nobody` swaps a directory on the path for a symlink to where another service's socket
    has the same name: closing must not remove that socket."""
    _as_nobody("mkdir", str(nobody_dir / "sub"))
    lst = open_listener(parse_url(f"unix:{nobody_dir}/sub/app.sock"))
    victim_dir = tmp_path / "run"
    victim_dir.mkdir()
    victim = socket.socket(socket.AF_UNIX)
    victim.bind(str(victim_dir / "app.sock"))
    victim.listen()
    try:
        _as_nobody("mv", str(nobody_dir / "sub"), str(nobody_dir / "old"))
        _as_nobody("ln", "-s", str(victim_dir), str(nobody_dir / "sub"))
        lst.close()
        assert stat.S_ISSOCK(os.lstat(victim_dir / "app.sock").st_mode)
        assert is_live(str(victim_dir / "app.sock"))
    finally:
        victim.close()


@needs_root
def test_stale_removal_stays_in_the_directory_it_checked(nobody_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory is swapped while the stale socket is being tested: the unlink happens in
    the directory that was checked, never in the one the name now reaches."""
    _as_nobody("mkdir", str(nobody_dir / "sub"))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(nobody_dir / "sub" / "app.sock"))
    stale.close()
    victim_dir = tmp_path / "run"
    victim_dir.mkdir()
    victim = socket.socket(socket.AF_UNIX)
    victim.bind(str(victim_dir / "app.sock"))  # not listening: looks stale too
    real_answers = sockfile._answers

    def answers_then_swap(fd: int, kind: int) -> bool:
        _as_nobody("mv", str(nobody_dir / "sub"), str(nobody_dir / "old"))
        _as_nobody("ln", "-s", str(victim_dir), str(nobody_dir / "sub"))
        return real_answers(fd, kind)

    monkeypatch.setattr(sockfile, "_answers", answers_then_swap)
    try:
        with contextlib.suppress(AdapterError):
            open_listener(parse_url(f"unix:{nobody_dir}/sub/app.sock")).close()
        assert not (nobody_dir / "old" / "app.sock").exists()  # the stale file it checked
        assert stat.S_ISSOCK(os.lstat(victim_dir / "app.sock").st_mode)  # not the other one
    finally:
        victim.close()
