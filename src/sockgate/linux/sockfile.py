"""A Unix socket's file, handled through descriptors, never through a name that can be swapped.

Why: sockgate binds Unix sockets as root in directories other users may write (their runtime
directory, a shared ``/run/app``), and a proxy reload hands a socket file to another service.
Whatever is done *by name* after the bind — chmod, chown, a liveness connect, unlink — acts on
what that name points to at that moment: a symlink planted there (chmod follows it: a root-only
file becomes world-writable) or a directory on the path swapped for a symlink elsewhere (the
unlink removes another service's socket). So every step goes through a descriptor:

* identity: the kernel says which file ``bind`` made for a socket (sock_diag ``UNIX_DIAG_VFS``,
  device and inode: ``sockdiag.unix_socket_file``). A name is used only after opening it with
  ``O_PATH|O_NOFOLLOW`` (a symlink is opened as itself, never followed) and checking that the
  descriptor is that very file; anything else is refused, nothing is changed;
* owner and mode are applied through that descriptor's ``/proc/self/fd/N`` link, which names
  the inode itself (``fchmod``/``fchown`` refuse O_PATH descriptors with EBADF;
  ``fchmodat2(AT_EMPTY_PATH)`` needs Linux 6.6). The mode is also set on the socket before
  ``bind`` (``fchmod`` of a socket sets its sockfs inode's mode, which ``unix_bind_bsd`` in
  net/unix/af_unix.c copies to the new file, less the umask), so the file never allows more
  than asked, not even before the final mode is applied;
* removal: the name is looked up relative to a descriptor of its directory and removed there
  (``unlinkat``) only while it still is the recorded socket file; a stale file is removed only
  when it is a socket that refuses a connect made through its own O_PATH descriptor.

Without sock_diag for Unix sockets (a kernel without CONFIG_UNIX_DIAG) the identity is unknown:
owner and mode are refused, and the file is left in place at close (the next start removes it
as stale).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import Iterator

from sockgate.errors import AdapterError
from sockgate.linux._errors import translated
from sockgate.linux.sockdiag import unix_socket_file

FileId = tuple[int, int]  # (st_dev, st_ino), the inode as 32 bits as sock_diag gives it
_INO_BITS = 0xFFFFFFFF


def bound_file(sock: socket.socket) -> FileId | None:
    """The file ``sock`` was bound to, by the kernel's account; None when it cannot tell."""
    try:
        return unix_socket_file(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None


def _id(st: os.stat_result) -> FileId:
    return st.st_dev, st.st_ino & _INO_BITS


def _is(st: os.stat_result, file: FileId) -> bool:
    return stat.S_ISSOCK(st.st_mode) and _id(st) == file


@contextlib.contextmanager
def _directory(path: str) -> Iterator[tuple[int, str]]:
    """``(dirfd, basename)`` for ``path``: its directory opened once, so that what follows
    happens in that directory whatever is renamed on the way to it meanwhile."""
    directory, base = os.path.split(path)
    dirfd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield dirfd, base
    finally:
        os.close(dirfd)


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    """An ``O_PATH|O_NOFOLLOW`` descriptor of the name ``path`` (a symlink is not followed)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def set_attrs(path: str, file: FileId | None, uid: int, gid: int, mode: int | None) -> None:
    """Owner/group (-1: unchanged) and mode of the socket file ``file``, found at ``path``;
    refused, changing nothing, when ``path`` is no longer that file (checked even with nothing
    to change: a name that reaches another file is never used as this socket's)."""
    if file is None and uid == -1 and gid == -1 and mode is None:
        return
    if file is None:
        raise AdapterError(
            f"set owner/mode of {path}: cannot tell which file the socket was bound to (no sock_diag"
            " for Unix sockets: CONFIG_UNIX_DIAG), so not changing it through its name",
            target=path,
        )
    with translated(f"set owner/mode of {path}"), _opened(path) as fd:
        if not _is(os.fstat(fd), file):
            raise AdapterError(
                f"{path} is no longer the socket file bound here (replaced, or a symlink put in its"
                " place): not using it, nor changing its owner or mode",
                target=path,
            )
        alias = f"/proc/self/fd/{fd}"  # the inode itself, not a name
        if uid != -1 or gid != -1:
            os.chown(alias, uid, gid)
        if mode is not None:
            os.chmod(alias, mode)


def remove(path: str, file: FileId | None) -> bool:
    """Remove ``path`` if it still is the socket file ``file``; True if removed. Errors are
    swallowed: a file left behind is removed as stale by the next start."""
    if file is None:
        return False
    try:
        with _directory(path) as (dirfd, base):
            if not _is(os.stat(base, dir_fd=dirfd, follow_symlinks=False), file):
                return False
            os.unlink(base, dir_fd=dirfd)
            return True
    except OSError:
        return False


def remove_stale(path: str, kind: int) -> None:
    """Remove ``path`` when it is a socket nobody listens on; refuse anything else. (No
    directory: nothing to remove; ``bind`` says so.)"""
    if not os.path.isdir(os.path.dirname(path) or "."):
        return
    try:
        with _directory(path) as (dirfd, base):
            try:
                fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except FileNotFoundError:
                return
            try:
                st = os.fstat(fd)
                if not stat.S_ISSOCK(st.st_mode):
                    raise AdapterError(f"{path} exists and is not a socket; not replacing it", target=path)
                if _answers(fd, kind):
                    raise AdapterError(f"{path}: another process is listening on this socket", target=path)
                if _is(os.stat(base, dir_fd=dirfd, follow_symlinks=False), _id(st)):
                    os.unlink(base, dir_fd=dirfd)
            finally:
                os.close(fd)
    except OSError as e:
        raise AdapterError(f"remove stale socket {path}: {e.strerror}", errno=e.errno, target=path) from None


def is_live(path: str, kind: int = socket.SOCK_STREAM) -> bool:
    """Does something listen on the Unix socket file named ``path`` (the name itself: a symlink
    there is not followed)? A test connect through the file's descriptor, so the length of
    ``path`` does not matter."""
    try:
        with _opened(path) as fd:
            return stat.S_ISSOCK(os.fstat(fd).st_mode) and _answers(fd, kind)
    except FileNotFoundError:
        return False


def _answers(fd: int, kind: int) -> bool:
    """A connect to the socket file open as ``fd`` (O_PATH) is answered."""
    probe = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1.0)
        probe.connect(f"/proc/self/fd/{fd}")
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        # EPROTOTYPE: bound by a socket of the other type, so in use; EAGAIN: backlog full;
        # anything else: cannot tell, so in use (never remove what may be live)
        return True
    finally:
        probe.close()
    return True
