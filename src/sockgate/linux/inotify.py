"""File changes as a readable descriptor: ``inotify(7)`` on directories, events by name.

The agent reloads when a policy file, an included file, a set file or hosts.allow/hosts.deny
changes. It watches the *directories* holding them, not the files: a writer that replaces a
file by renaming a temporary over it (editors, configuration managers, sshguard's
``sshg-fw-hosts``) leaves a watch on the old inode watching nothing, while the directory sees
``IN_MOVED_TO`` with the file's name. A symbolic link swapped for another is the same rename
of a name in the directory. So the adapter reports ``(directory, name)`` pairs and the caller
keeps the names it cares about.

Python's standard library has no inotify and the project takes no dependency for three
system calls: ``inotify_init1``/``inotify_add_watch``/``inotify_rm_watch`` through libc
(ctypes, as ``signalfd.py`` does), the records read with ``os.read`` and decoded with
``struct`` (``struct inotify_event`` of <linux/inotify.h>). ``OSError`` becomes
``AdapterError`` here, once.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from sockgate.linux._errors import translated
from sockgate.linux.fd import drain

# <linux/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_CLOEXEC = os.O_CLOEXEC
IN_NONBLOCK = os.O_NONBLOCK
# What changes a file's content or which file a name is: writes, renames, links, removals.
DIRECTORY_MASK = (IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
                  | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ_SIZE = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Change:
    """Something happened to ``name`` in ``directory`` ('' for the directory itself); an
    ``overflow`` means events were lost and everything must be looked at again."""

    directory: str
    name: str
    mask: int
    overflow: bool = False


def _check(result: int, what: str) -> int:
    if result < 0:
        e = ctypes.get_errno()
        with translated(what):
            raise OSError(e, os.strerror(e))
    return result


class Inotify:
    """One inotify instance watching directories; ``fileno`` for a selector, ``read`` for
    the changes queued now (never blocks)."""

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self._dirs: dict[int, set[str]] = {}  # one watch, every name it was added by

    def fileno(self) -> int:
        return self.fd

    def watch(self, directory: str) -> None:
        """Watch ``directory`` (idempotent; the kernel returns the same descriptor)."""
        wd = _check(_libc.inotify_add_watch(self.fd, os.fsencode(directory), DIRECTORY_MASK),
                    f"inotify_add_watch {directory}")
        self._dirs.setdefault(wd, set()).add(directory)  # (a symbolic link to a watched directory: same wd)

    def unwatch(self, directory: str) -> None:
        for wd, names in list(self._dirs.items()):
            names.discard(directory)
            if not names:
                del self._dirs[wd]
                _libc.inotify_rm_watch(self.fd, wd)  # (EINVAL when already gone: nothing to do)

    def watched(self) -> frozenset[str]:
        return frozenset(d for names in self._dirs.values() for d in names)

    def read(self) -> list[Change]:
        return [c for data in drain(self.fd, _READ_SIZE, "read inotify") for c in self._decode(data)]

    def _decode(self, data: bytes) -> list[Change]:
        out: list[Change] = []
        at = 0
        while at + EVENT.size <= len(data):
            wd, mask, _cookie, size = EVENT.unpack_from(data, at)
            name = os.fsdecode(data[at + EVENT.size : at + EVENT.size + size].rstrip(b"\0"))
            at += EVENT.size + size
            if mask & IN_Q_OVERFLOW:
                out.append(Change("", "", mask, overflow=True))
                continue
            names = self._dirs.get(wd)
            if names is None:
                continue
            if mask & IN_IGNORED:  # the directory was removed or unwatched
                del self._dirs[wd]
            out.extend(Change(d, name, mask) for d in sorted(names))
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._dirs.clear()
