"""The agent's control socket: where ``sockgate status``, ``ban`` and ``unban`` reach it.

Made safely, since it sits in a directory other programs can see and answers requests that
change what the kernel enforces:

* the directory must be a real directory (not a symlink), owned by root, writable by nobody
  else — checked on an ``O_NOFOLLOW`` descriptor, and every later step goes through that
  descriptor (``/proc/self/fd/N/...`` for ``bind``), so a directory swapped after the check is
  not the one written to;
* ``agent.lock`` beside it is ``flock``ed: a second agent on the same path stops with "another
  agent runs (pid N)", and a socket file left by a killed agent is then safe to replace;
* the socket is bound to a temporary name under ``umask 0177``, given the control group and
  mode 0660, and renamed over ``agent.sock`` — atomic, so a client never meets a half-made
  socket, and a symlink planted at the name is replaced, never followed.

Every connection is checked at accept by the credentials the kernel recorded at ``connect``
(``SO_PEERCRED``, ``SO_PEERGROUPS``): root, or a member of the control group; anyone else gets
one line saying why and the door. The file mode says the same; both must agree to let anyone in.

The server never blocks the agent: its listening socket and its clients are in a selector of its
own whose descriptor the agent's loop watches (``fileno`` / ``on_readable``); a client's input
is bounded by the protocol's line limit, its output is sent as the socket takes it, and a client
silent for ``idle`` seconds, or one too many, is closed (``timeout``/``on_timer`` for the loop's
timer). A request is answered in turn; one that is not a request gets an error and the
connection closes, and the next client is served as before.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import selectors
import socket
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from sockgate.agent.protocol import (MAX_REQUEST, MAX_RESPONSE, ErrorKind, LineBuffer, ProtocolError, Request, Response, encode, failure,
                                     parse_request)
from sockgate.errors import AdapterError, PeerError, SockgateError, UsageError
from sockgate.intlist import numeric_id
from sockgate.linux.peercred import credentials
from sockgate.supervisor import Cancel, Loop, failure_text

DEFAULT_PATH = "/run/sockgate/agent.sock"
IDLE = 10.0
MAX_CLIENTS = 32
BATCH = 64  # requests answered for one client in one round of the loop


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


Handler = Callable[[Request, PeerCred], Response]


def group_id(group: str | None) -> int | None:
    """The control group's id (a name or a number); None: root only."""
    if group is None:
        return None
    gid = numeric_id(group, "group id")
    if gid is not None:
        return gid
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"no group {group!r} (the control socket's group)") from None


def allowed(peer: PeerCred, gid: int | None, group: str | None) -> str | None:
    """None when ``peer`` may talk to the agent, else the one-line reason."""
    if peer.uid == 0 or (gid is not None and (peer.gid == gid or gid in peer.groups)):
        return None
    if gid is None:
        return f"uid {peer.uid} is not root (the control socket has no group)"
    return f"uid {peer.uid} is not root and not in group {group}"


def check_directory(dir_fd: int, path: str) -> None:
    """The socket's directory: a directory, root's, writable by nobody else."""
    st = os.fstat(dir_fd)
    if not stat.S_ISDIR(st.st_mode):
        raise AdapterError(f"{path}: not a directory", target=path)
    if st.st_uid != 0:
        raise AdapterError(f"{path}: owned by uid {st.st_uid}, not root: refusing to put the control socket there", target=path)
    if st.st_mode & 0o022:
        raise AdapterError(f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): refusing to put the control socket there", target=path)


def open_directory(path: str, gid: int | None = None) -> int:
    """The directory, opened without following a symlink. Made if missing: mode 0750, and the
    control group's, so that its members can reach the socket (a directory that exists keeps
    its owner and mode: with 0750 it must be the group's, else 0755)."""
    made = True
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:
        made = False
    except OSError as e:
        raise AdapterError(f"{path}: {e.strerror}", errno=e.errno, target=path) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        why = "a symlink, not a directory" if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror
        raise AdapterError(f"{path}: {why}: refusing to put the control socket there", errno=e.errno, target=path) from None
    try:
        check_directory(fd, path)
        if made and gid is not None:
            os.fchown(fd, -1, gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock(dir_fd: int, path: str) -> int:
    """``agent.lock`` in the directory, held for the agent's life; our pid written in it."""
    fd = os.open("agent.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise AdapterError(f"another agent runs (pid {holder}) with its control socket in {path}", target=path) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def bind_socket(dir_fd: int, name: str, gid: int | None) -> tuple[socket.socket, int]:
    """A listening socket at ``name`` in the directory, mode 0660, group ``gid``: bound to a
    temporary name and renamed over ``name``. Returns it and its inode (to remove only our own
    file at close)."""
    tmp = f"{name}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(f"/proc/self/fd/{dir_fd}/{tmp}")
        finally:
            os.umask(old)
        st = os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            raise AdapterError(f"{tmp}: not the socket just bound", target=tmp)
        if gid is not None:
            os.chown(tmp, -1, gid, dir_fd=dir_fd, follow_symlinks=False)
        os.chmod(f"/proc/self/fd/{dir_fd}/{tmp}", 0o660 if gid is not None else 0o600)
        sock.listen(MAX_CLIENTS)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return sock, st.st_ino
    except BaseException:
        sock.close()
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


@dataclass
class _Client:
    sock: socket.socket
    peer: PeerCred
    deadline: float
    lines: LineBuffer = field(default_factory=LineBuffer)
    waiting: deque[bytes] = field(default_factory=deque)  # request lines read, not yet answered
    out: bytearray = field(default_factory=bytearray)
    closing: bool = False  # close once ``out`` is sent


class ControlServer:
    """The control socket at ``path``; ``handler`` answers each request of an allowed peer."""

    def __init__(self, path: str, group: str | None, handler: Handler, idle: float = IDLE,
                 max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.group = group
        self.handler = handler
        self.idle = idle
        self.max_clients = max_clients
        self.clock = clock
        self._gid = group_id(group)
        self._sel: selectors.EpollSelector | None = None
        self._listener: socket.socket | None = None
        self._clients: dict[int, _Client] = {}
        self._dir_fd = -1
        self._lock_fd = -1
        self._ino = 0

    def open(self) -> int:
        """Make the socket (see the module docstring); the descriptor to watch."""
        directory, name = os.path.split(os.path.abspath(self.path))
        try:
            self._dir_fd = open_directory(directory, self._gid)
            self._lock_fd = lock(self._dir_fd, directory)
            self._listener, self._ino = bind_socket(self._dir_fd, name, self._gid)
            self._sel = selectors.EpollSelector()
            self._sel.register(self._listener, selectors.EVENT_READ)
        except OSError as e:
            self.close()
            raise AdapterError(f"control socket {self.path}: {e.strerror or e}", errno=e.errno, target=self.path) from None
        except BaseException:
            self.close()
            raise
        return self._sel.fileno()

    def fileno(self) -> int:
        assert self._sel is not None, "open() first"
        return self._sel.fileno()

    @property
    def clients(self) -> int:
        return len(self._clients)

    def on_readable(self) -> None:
        """Serve what is ready: new connections, requests, answers waiting to be sent."""
        assert self._sel is not None
        for key, mask in self._sel.select(0):
            if key.fileobj is self._listener:
                self._accept()
                continue
            client = self._clients.get(key.fd)
            if client is None:
                continue
            if mask & selectors.EVENT_WRITE:
                if self._flush(client):
                    self._serve(client)
            elif mask & selectors.EVENT_READ:
                self._read(client)
        self.on_timer()

    def timeout(self) -> float | None:
        """Seconds until the next idle client is due to be closed."""
        if not self._clients:
            return None
        return max(0.0, min(c.deadline for c in self._clients.values()) - self.clock())

    def on_timer(self) -> None:
        now = self.clock()
        for c in [c for c in self._clients.values() if c.deadline <= now]:
            self._drop(c)

    def close(self) -> None:
        """Close every connection and the socket; remove the file if it is still ours."""
        for c in list(self._clients.values()):
            self._drop(c)
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self._remove_ours()
        for fd in (self._lock_fd, self._dir_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self._dir_fd = -1

    def _remove_ours(self) -> None:
        name = os.path.basename(self.path)
        try:
            if os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False).st_ino == self._ino:
                os.unlink(name, dir_fd=self._dir_fd)
        except OSError:
            pass

    # -- connections -------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE, ECONNABORTED: the next round tries again
            conn.setblocking(False)
            peer = self._admit(conn)
            if isinstance(peer, str):
                self._refuse(conn, "denied", peer)
                continue
            if len(self._clients) >= self.max_clients:
                self._refuse(conn, "runtime", f"too many control connections (at most {self.max_clients})")
                continue
            self._clients[conn.fileno()] = _Client(conn, peer, self.clock() + self.idle)
            self._sel.register(conn, selectors.EVENT_READ)

    def _admit(self, conn: socket.socket) -> PeerCred | str:
        """The peer, when it may talk to the agent; else the one-line reason it may not."""
        try:
            pid, uid, gid, groups = credentials(conn)
        except (AdapterError, PeerError) as e:
            return f"cannot tell who is connecting: {e}"
        peer = PeerCred(pid, uid, gid, groups)
        refusal = allowed(peer, self._gid, self.group)
        return peer if refusal is None else refusal

    def _refuse(self, conn: socket.socket, kind: ErrorKind, message: str) -> None:
        try:
            conn.send(encode(failure(0, kind, message)))
        except OSError:
            pass
        conn.close()

    def _read(self, c: _Client) -> None:
        try:
            data = c.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        if not data:
            self._drop(c)
            return
        c.deadline = self.clock() + self.idle
        try:
            c.waiting.extend(c.lines.feed(data))
        except ProtocolError as e:
            c.waiting.clear()
            c.out += encode(failure(0, e.kind, e.message))
            c.closing = True
        if self._flush(c):
            self._serve(c)

    def _serve(self, c: _Client) -> None:
        """Answer the requests read, in turn: the next only once the last answer is sent, at
        most ``BATCH`` in one round (the rest on the next, so one client cannot hold the loop).
        While anything waits, the client's socket is watched for room to write, not for more
        input: what a client can make the agent hold is one line buffer and one answer."""
        assert self._sel is not None
        for _ in range(BATCH):
            if not c.waiting or c.out or c.closing:
                break
            c.out += self._encoded(self._respond(c.waiting.popleft(), c.peer))
            if not self._flush(c):
                return
        self._sel.modify(c.sock, selectors.EVENT_WRITE if c.out or c.waiting else selectors.EVENT_READ)

    def _respond(self, line: bytes, peer: PeerCred) -> Response:
        try:
            request = parse_request(line)
        except ProtocolError as e:
            return failure(e.id, e.kind, e.message)
        except Exception as e:  # a bug in the parser must not take the agent's loop down either
            return failure(0, "runtime", failure_text(e))
        try:
            return self.handler(request, peer)
        except ProtocolError as e:
            return failure(request.id, e.kind, e.message)
        except SockgateError as e:
            return failure(request.id, "runtime", str(e))
        except Exception as e:  # a bug in a handler must not take the agent's loop down
            return failure(request.id, "runtime", failure_text(e))

    def _encoded(self, response: Response) -> bytes:
        data = encode(response)
        if len(data) > MAX_RESPONSE:
            data = encode(failure(response.id, "runtime", f"the answer is larger than {MAX_RESPONSE} bytes"))
        return data

    def _flush(self, c: _Client) -> bool:
        """Send what the socket takes; False when the client is gone (or done and closed)."""
        while c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(c)
                return False
            del c.out[:n]
            c.deadline = self.clock() + self.idle
        if not c.out and c.closing:
            self._drop(c)
            return False
        return True

    def _drop(self, c: _Client) -> None:
        if self._clients.pop(c.sock.fileno(), None) is None:
            return
        if self._sel is not None:
            try:
                self._sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
        c.sock.close()


def start(server: ControlServer, loop: Loop) -> Cancel:
    """Drive an opened ``server`` on ``loop``: its descriptor watched, and a timer armed for the
    next idle client only while there are clients (an idle agent has no wakeups). The returned
    function stops it (the server stays open: ``close`` it after)."""
    fd = server.fileno()
    timer: list[Cancel] = []

    def arm() -> None:
        for cancel in timer:
            cancel()
        timer.clear()
        delay = server.timeout()
        if delay is not None:
            timer.append(loop.call_later(delay, expire))

    def expire() -> None:
        timer.clear()
        server.on_timer()
        arm()

    def readable() -> None:
        server.on_readable()
        arm()

    def stop() -> None:
        loop.unwatch(fd)
        for cancel in timer:
            cancel()
        timer.clear()

    loop.watch(fd, readable)
    return stop
