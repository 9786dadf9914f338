"""The bpf filesystem: where pinned eBPF programs and maps outlive the process that made them.

A pin is a file on a bpffs mount (kernel/bpf/inode.c); the object lives until its last pin and
last fd are gone. sockgate pins below one root directory (``ebpf.layout.ROOT``), so whoever
can write into that tree can swap the maps a guard reads its rules from. Hence:

* the mount is checked to be a bpffs (``fstatfs`` magic ``BPF_FS_MAGIC``, <linux/magic.h>) and
  mounted when it is not (``mode=0700``: bpffs otherwise makes its root 1777);
* every directory below it is opened one component at a time with ``O_NOFOLLOW |
  O_DIRECTORY`` relative to its parent's descriptor (a planted symlink fails to open) and
  checked with ``fstat``: owned by root and writable by nobody else (``trust_problem``); the
  ones sockgate makes are created 0700. Once every directory on the way is root's and closed
  to others, only root can change the tree, so the path strings the bpf(2) pin calls take
  name what was checked.

Hand-written over ``ctypes`` because the standard library has neither ``mount(2)`` nor
``statfs(2)``'s file system type.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from sockgate.errors import AdapterError
from sockgate.linux import bpfsys
from sockgate.linux._errors import translated

BPF_FS_MAGIC = 0xCAFE4A11  # <linux/magic.h>
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8  # <linux/mount.h>

_libc = ctypes.CDLL(None, use_errno=True)


class _Statfs(ctypes.Structure):
    # struct statfs begins with __fsword_t f_type (a long on every Linux ABI); the rest is room
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_char * 120)]


# -------------------------------------------------------------------- pure: what to trust


def trust_problem(mode: int, uid: int, *, sticky_ok: bool = False) -> str | None:
    """Why a directory with ``mode`` owned by ``uid`` must not hold sockgate's pins, or None.
    ``sticky_ok``: a sticky directory writable by others is fine (others cannot rename or
    remove what root made there; bpffs mounts without ``mode=`` are 1777)."""
    if not stat.S_ISDIR(mode):
        return "not a directory"
    if uid != 0:
        return f"owned by uid {uid}, not root"
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not (sticky_ok and mode & stat.S_ISVTX):
        return f"writable by others (mode {stat.S_IMODE(mode):04o})"
    return None


def components(relative: str) -> list[str]:
    """The directory names of ``relative`` (below a mount), refusing what could climb out."""
    parts = [p for p in relative.split("/") if p]
    bad = [p for p in parts if p in (".", "..")]
    if relative.startswith("/") or bad or not parts:
        raise ValueError(f"not a plain relative path: {relative!r}")
    return parts


# ------------------------------------------------------------------------------ the mount


def is_bpffs(fd: int) -> bool:
    buf = _Statfs()
    with translated(f"statfs of fd {fd}"):
        if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return bool(buf.f_type & 0xFFFFFFFF == BPF_FS_MAGIC)


def mount(path: str) -> None:
    """Mount a bpffs at ``path`` (root only, mode 0700)."""
    with translated(f"mount a bpf filesystem at {path}"):
        if _libc.mount(b"bpf", os.fsencode(path), b"bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"mode=0700") != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))


def ensure_mounted(path: str) -> None:
    """``path`` is a trusted bpffs mount when this returns: mounted here if it was not."""
    fd = _open_dir(path, path)
    try:
        if is_bpffs(fd):
            _check(fd, path, sticky_ok=True)
            return
    finally:
        os.close(fd)
    mount(path)
    fd = _open_dir(path, path)
    try:
        if not is_bpffs(fd):
            raise AdapterError(f"{path}: mounted a bpf filesystem, but it is not there", target=path)
        _check(fd, path, sticky_ok=True)
    finally:
        os.close(fd)


def ensure_dirs(mountpoint: str, relative: str) -> str:
    """Make (0700) or open each directory of ``relative`` below ``mountpoint``, refusing a
    symlink, a non-directory, or a directory not root's or writable by others; the path."""
    path = _walk(mountpoint, relative, create=True)
    assert path is not None  # made when missing
    return path


def trusted_dir(mountpoint: str, relative: str) -> str | None:
    """``ensure_dirs`` without making anything: the path when every directory of ``relative``
    exists and is trusted, None when one is missing; a planted one raises ``AdapterError``."""
    return _walk(mountpoint, relative, create=False)


def _walk(mountpoint: str, relative: str, create: bool) -> str | None:
    ensure_mounted(mountpoint)
    fd = _open_dir(mountpoint, mountpoint)
    path = mountpoint
    try:
        for name in components(relative):
            path = f"{path}/{name}"
            if create:
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as e:
                    raise AdapterError(f"create {path}: {e.strerror}", errno=e.errno, target=path) from None
            try:
                child = _open_dir(name, path, dir_fd=fd)
            except AdapterError as e:
                if not create and e.errno == errno.ENOENT:
                    return None
                raise
            os.close(fd)
            fd = child
            _check(fd, path)
    finally:
        os.close(fd)
    return path


def check_pin(path: str) -> None:
    """Refuse ``path`` unless it is a pin itself (a regular file on bpffs, root's): a symlink
    there would make ``BPF_OBJ_GET`` open whatever it points to."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise AdapterError(f"{path}: {e.strerror}", errno=e.errno, target=path) from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a pin" if not stat.S_ISREG(st.st_mode) else f"owned by uid {st.st_uid}"
        raise AdapterError(f"refusing {path}: {what}", errno=errno.EPERM, target=path)


def _open_dir(name: str, path: str, dir_fd: int | None = None) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        why = "a symlink or not a directory" if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror
        raise AdapterError(f"refusing {path}: {why}", errno=e.errno, target=path) from None


def _check(fd: int, path: str, sticky_ok: bool = False) -> None:
    st = os.fstat(fd)
    why = trust_problem(st.st_mode, st.st_uid, sticky_ok=sticky_ok)
    if why is not None:
        raise AdapterError(f"refusing {path} for sockgate's pinned objects: {why}", errno=errno.EPERM, target=path)


# ------------------------------------------------------------------------------- pins


def pin(fd: int, path: str) -> None:
    bpfsys.pin(fd, path)


def get(path: str) -> int | None:
    """A new fd for the object pinned at ``path``; None when nothing is pinned there."""
    try:
        return bpfsys.get_pinned(path)
    except AdapterError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def unpin(path: str) -> bool:
    """Remove a pin; False when there was none."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise AdapterError(f"unpin {path}: {e.strerror}", errno=e.errno, target=path) from None
    return True


def rename(src: str, dst: str) -> None:
    """Move a pin or an empty-target directory in one step (bpffs: simple_rename)."""
    with translated(f"rename {src} to {dst}"):
        os.rename(src, dst)


def listdir(path: str) -> list[str]:
    """The names in a directory of pins; empty when it does not exist."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise AdapterError(f"list {path}: {e.strerror}", errno=e.errno, target=path) from None


def age(path: str, now: float) -> float | None:
    """Seconds since ``path`` was last changed (its ctime); None when it is gone."""
    try:
        return now - os.lstat(path).st_ctime
    except FileNotFoundError:
        return None


def remove_tree(path: str) -> None:
    """Unpin every object in directory ``path`` (one level: pins only) and remove it."""
    for name in listdir(path):
        unpin(f"{path}/{name}")
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise AdapterError(f"remove {path}: {e.strerror}", errno=e.errno, target=path) from None
