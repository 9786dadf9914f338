"""Open listening sockets from ``sockgate.urls.SocketURL`` values.

``open_listener(url, before_listen=guard)`` creates, configures and binds the socket, calls
``before_listen(sock)`` and only then ``listen()``s: a filter attached in the hook is on the
socket before the first SYN can be queued, and a Unix socket file gets its mode and owner
before anyone can connect (connecting needs ``listen``). ``open_listeners`` is
all-or-nothing: on any failure the sockets already opened are closed (and their files
removed) before the error propagates.

Internet sockets: ``SO_REUSEADDR`` on stream sockets (a restart does not wait out TIME_WAIT);
"every address" (``tcp://:P``, ``[::]``) is one AF_INET6 socket with ``IPV6_V6ONLY`` off, so
IPv4 peers arrive as ``::ffff:a.b.c.d`` (the BPF compiler handles both headers); where IPv6 is
unavailable it falls back to ``0.0.0.0``. Host names are resolved here with ``getaddrinfo``
(first answer).

Unix socket files (``sockgate.linux.sockfile``: every step after ``bind`` goes through a
descriptor checked to be the file the kernel bound, never through a name another user may
swap):

* A path already there is replaced only when it is a socket nobody listens on: a connect
  answered by ``ECONNREFUSED`` means stale, anything that connects (or a socket of another
  type: ``EPROTOTYPE``) means live and is refused, and a file that is not a socket (a symlink
  included) is never touched.
* The mode is set on the socket before ``bind`` and again, exactly, through the verified
  descriptor with the owner; a name that no longer is the bound socket is refused. ``close``
  removes the file only while its name still is that socket file.
* ``sun_path`` holds 108 bytes (107 and a NUL). Longer paths are bound through a short alias
  of their directory, ``/proc/self/fd/<dirfd>/<basename>``: the kernel resolves the alias to
  the real directory and creates the socket file there. When even the basename does not fit
  behind that alias, a helper process (``python -c``, given the socket fd) ``chdir``\\s into
  the directory and binds the bare basename; a helper rather than ``chdir`` here, because
  the working directory is shared by every thread of this process. The stale test connects
  through the file's descriptor, whatever the length of its name.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from sockgate.errors import AdapterError, UsageError
from sockgate.intlist import is_number, number, numeric_id
from sockgate.linux import sockfile
from sockgate.linux._errors import translated
from sockgate.linux.sockfile import FileId
from sockgate.urls import SocketURL

SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the NUL, <linux/un.h> UNIX_PATH_MAX 108
BeforeListen = Callable[[socket.socket], object]


@dataclass
class Listener:
    """An open socket and the URL it came from. ``path`` is the Unix socket file this listener
    created (removed by ``close(unlink=True)``), else None; ``file`` that file's identity, as
    the kernel gave it at ``bind`` (see ``sockgate.linux.sockfile``)."""

    url: SocketURL
    sock: socket.socket
    path: str | None = None
    file: FileId | None = None

    @property
    def name(self) -> str:
        return self.url.fd_name

    def fileno(self) -> int:
        return self.sock.fileno()

    def address(self) -> str:
        """Where it listens, with the real port when the URL said port 0."""
        if self.url.is_unix:
            return self.url.display()
        host, port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"{self.url.scheme}://{shown}:{port}"

    def close(self, unlink: bool = True) -> None:
        self.sock.close()
        if unlink and self.path is not None:
            sockfile.remove(self.path, self.file)
            self.path = None


def open_listeners(urls: Iterable[SocketURL], before_listen: BeforeListen | None = None) -> list[Listener]:
    """Open every URL, or none: a failure closes what was opened and re-raises."""
    opened: list[Listener] = []
    try:
        for url in urls:
            opened.append(open_listener(url, before_listen))
    except BaseException:
        for lst in opened:
            lst.close()
        raise
    return opened


def open_listener(url: SocketURL, before_listen: BeforeListen | None = None) -> Listener:
    """Create, bind, run ``before_listen`` and listen (stream) for one URL."""
    if url.is_unix:
        return _open_unix(url, before_listen)
    return _open_inet(url, before_listen)


# ---------------------------------------------------------------------------------------------
# TCP and UDP


def _open_inet(url: SocketURL, before_listen: BeforeListen | None) -> Listener:
    kind = socket.SOCK_STREAM if url.scheme == "tcp" else socket.SOCK_DGRAM
    family, sockaddr = _inet_target(url, kind)
    with translated(f"create socket for {url.display()}"):
        sock = socket.socket(family, kind)
    try:
        _inet_options(url, sock, family)
        _bind_inet(url, sock, sockaddr)
        _finish(url, sock, before_listen)
    except BaseException:
        sock.close()
        raise
    return Listener(url, sock)


def _bind_inet(url: SocketURL, sock: socket.socket, sockaddr: tuple[object, ...]) -> None:
    """bind, saying why a privileged port was refused (a bare EACCES tells nobody much)."""
    try:
        with translated(f"bind {url.display()}"):
            sock.bind(sockaddr)
    except AdapterError as e:
        port = sockaddr[1]
        if e.errno == errno.EACCES and isinstance(port, int) and 0 < port < _unprivileged_port_start():
            raise AdapterError(
                f"{e} (port {port} is privileged: bind it as root or with CAP_NET_BIND_SERVICE, and give"
                " --user/--group for the command)",
                errno=e.errno,
                target=e.target,
            ) from e
        raise


def tcp_syncookies(path: str = "/proc/sys/net/ipv4/tcp_syncookies") -> int | None:
    """``net.ipv4.tcp_syncookies`` (0 off, 1 on a full SYN queue, 2 always); None when
    unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _unprivileged_port_start(path: str = "/proc/sys/net/ipv4/ip_unprivileged_port_start") -> int:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def _inet_target(url: SocketURL, kind: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    port = url.port or 0
    if url.host is None:
        if socket.has_ipv6 and _ipv6_works():
            return socket.AF_INET6, ("::", port, 0, 0)
        return socket.AF_INET, ("0.0.0.0", port)
    if url.address is not None and url.address.version == 4:
        return socket.AF_INET, (str(url.address), port)
    if url.address is not None:
        scope = _scope_id(url) if url.zone else 0
        return socket.AF_INET6, (str(url.address), port, 0, scope)
    with translated(f"resolve {url.host}"):
        try:
            infos = socket.getaddrinfo(url.host, port, type=kind, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise UsageError(f"{url.text!r}: cannot resolve {url.host!r}: {e.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _scope_id(url: SocketURL) -> int:
    zone = url.zone or ""
    if is_number(zone):
        index = number(zone, 0, 0xFFFFFFFF)  # sin6_scope_id: 32 bits
        if index is None:
            raise UsageError(f"{url.display()}: zone {zone[:20]!r} is not an interface index")
        return index
    try:
        return socket.if_nametoindex(zone)
    except OSError:
        raise UsageError(f"{url.text!r}: no network interface named {zone!r}") from None


def _ipv6_works() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def _inet_options(url: SocketURL, sock: socket.socket, family: int) -> None:
    with translated(f"set socket options for {url.display()}"):
        if url.scheme == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if url.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            v6only = url.v6only
            if v6only is None:
                v6only = not url.all_addresses
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))


def _finish(url: SocketURL, sock: socket.socket, before_listen: BeforeListen | None) -> None:
    if before_listen is not None:
        before_listen(sock)
    if url.is_stream:
        with translated(f"listen on {url.display()}"):
            sock.listen(url.backlog)


# ---------------------------------------------------------------------------------------------
# Unix


def _open_unix(url: SocketURL, before_listen: BeforeListen | None) -> Listener:
    kind = socket.SOCK_STREAM if url.scheme == "unix" else socket.SOCK_DGRAM
    assert url.path is not None
    with translated(f"create socket for {url.display()}"):
        sock = socket.socket(socket.AF_UNIX, kind)
    created: str | None = None
    file: FileId | None = None
    try:
        if url.abstract:
            with translated(f"bind {url.display()}"):
                sock.bind(b"\0" + url.path.encode())
        else:
            uid, gid = _owner_ids(url)
            path = os.path.abspath(url.path)
            sockfile.remove_stale(path, kind)
            if url.mode is not None:  # the file is born with no more than this mode
                with translated(f"set mode of the socket for {url.display()}"):
                    os.fchmod(sock.fileno(), url.mode)
            bind_unix(sock, path)
            created = path
            file = sockfile.bound_file(sock)
            sockfile.set_attrs(path, file, uid, gid, url.mode)
        _finish(url, sock, before_listen)
    except BaseException:
        sock.close()
        if created is not None:
            sockfile.remove(created, file)
        raise
    return Listener(url, sock, created, file)


def take_over(lst: Listener, url: SocketURL, owns_file: bool) -> Listener:
    """``lst``'s socket, listening for ``url`` (the same Unix name, given to another service):
    no close and bind again, so the name never disappears and the connections waiting in its
    queue are kept. ``url``'s backlog applies, and its mode, owner and group where it gives
    them (the file keeps what it had otherwise); ``owns_file``: the new listener removes the
    socket file when closed. Raises before changing anything if an owner or group is unknown."""
    uid, gid = _owner_ids(url)
    file = lst.file if lst.file is not None else sockfile.bound_file(lst.sock)
    if url.path is not None and not url.abstract:
        sockfile.set_attrs(os.path.abspath(url.path), file, uid, gid, url.mode)
    with translated(f"listen on {url.display()}"):
        lst.sock.listen(url.backlog)  # a listening socket takes a new backlog
    return Listener(url, lst.sock, lst.path if owns_file else None, file)


def _owner_ids(url: SocketURL) -> tuple[int, int]:
    """-1 for "leave as is", as chown(2) takes it."""
    uid = gid = -1
    if url.owner is not None:
        uid = _lookup(url.owner, pwd.getpwnam, "user", lambda e: e.pw_uid)
    if url.group is not None:
        gid = _lookup(url.group, grp.getgrnam, "group", lambda e: e.gr_gid)
    return uid, gid


def _lookup(name: str, getter: Callable[[str], object], what: str, field: Callable[..., int]) -> int:
    n = numeric_id(name, what)
    if n is not None:
        return n
    try:
        return field(getter(name))
    except KeyError:
        raise UsageError(f"no such {what}: {name!r}") from None


def bind_unix(sock: socket.socket, path: str) -> None:
    """Bind ``sock`` to ``path`` whatever its length (see the module docstring)."""
    target = f"bind {path}"
    if len(os.fsencode(os.path.basename(path))) + len(b"/proc/self/fd/2147483647/") > SUN_PATH_MAX and len(
        os.fsencode(path)
    ) > SUN_PATH_MAX:
        _bind_in_helper(sock, path)
        return
    with translated(target):
        _with_short_path(path, sock.bind)


def _with_short_path(path: str, call: Callable[[str], None]) -> None:
    """``call(path)``, or ``call(/proc/self/fd/<dirfd>/<base>)`` when ``path`` is too long."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        call(path)
        return
    directory, base = os.path.split(path)
    dirfd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        alias = f"/proc/self/fd/{dirfd}/{base}"
        if len(os.fsencode(alias)) > SUN_PATH_MAX:
            raise OSError(36, os.strerror(36), path)  # ENAMETOOLONG
        call(alias)
    finally:
        os.close(dirfd)


_HELPER = (
    "import os,socket,sys\n"
    "os.chdir(sys.argv[1])\n"
    "s=socket.socket(fileno=int(sys.argv[3]))\n"
    "try:\n s.bind(sys.argv[2])\n"
    "except OSError as e:\n sys.stderr.write(e.strerror or str(e)); sys.exit(1)\n"
    "finally:\n s.detach()\n"
)


def _bind_in_helper(sock: socket.socket, path: str) -> None:
    directory, base = os.path.split(path)
    if len(os.fsencode(base)) > SUN_PATH_MAX:
        raise AdapterError(f"bind {path}: the file name alone exceeds {SUN_PATH_MAX} bytes", target=path)
    fd = sock.fileno()
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _HELPER, directory or ".", base, str(fd)],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise AdapterError(f"bind {path}: helper failed: {e}", target=path) from None
    if done.returncode != 0:
        raise AdapterError(f"bind {path}: {done.stderr.strip() or 'helper failed'}", target=path)


@contextlib.contextmanager
def closing_all(listeners: Sequence[Listener], unlink: bool = True) -> Iterator[Sequence[Listener]]:
    """``with closing_all(open_listeners(urls)) as ls: ...`` closes (and unlinks) them all."""
    try:
        yield listeners
    finally:
        for lst in listeners:
            lst.close(unlink=unlink)
