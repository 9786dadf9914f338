"""Cgroup BPF hooks: where cgroup2 is mounted, and programs linked to a cgroup.

The agent's watch programs (ebpf/watch.py) hang on a cgroup of the v2 hierarchy — its root, so
every process on the host is seen, or a child cgroup in tests. cgroup2 is mounted in different
places: ``/sys/fs/cgroup`` on a unified systemd host (Debian 12, Ubuntu CI),
``/sys/fs/cgroup/unified`` on a hybrid one, anywhere in a container; so the mount is read from
``/proc/self/mountinfo`` (proc(5): field 5 the mount point with ``\\040``-style escapes, the
filesystem type after the ``-`` separator), never assumed.

A program is attached through a ``bpf_link`` (``BPF_LINK_CREATE``, Linux 5.7): it stays while
the link's fd is open or the link is pinned in a bpf filesystem, and goes when the last of
those goes — a crashed agent's unpinned links detach by themselves. The bpf(2) calls are
linux/bpfsys's; this module only opens cgroups and composes them.
"""

from __future__ import annotations

import os
import re

from sockgate.linux import bpfsys
from sockgate.linux._errors import translated

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def cgroup2_mounts(text: str) -> list[tuple[str, str]]:
    """(mount point, root within the hierarchy) of every cgroup2 mount in a mountinfo text, in
    order; malformed lines are skipped."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and tail and tail[0] == "cgroup2":
            out.append((_unescape(fields[4]), _unescape(fields[3])))
    return out


def cgroup2_root(mountinfo: str = MOUNTINFO) -> str | None:
    """Where the cgroup2 hierarchy is mounted (a mount of its root preferred); None if nowhere."""
    with translated(f"read {mountinfo}"):
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            mounts = cgroup2_mounts(f.read())
    ordered = [point for point, root in mounts if root == "/"] + [point for point, _ in mounts]
    return ordered[0] if ordered else None


def open_cgroup(path: str) -> int:
    """A descriptor of the cgroup directory ``path`` (what ``BPF_LINK_CREATE`` targets)."""
    with translated(f"open cgroup {path}"):
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def load(prog_type: int, attach_type: int, insns: bytes, name: str) -> int:
    """Load a program for the cgroup hook ``attach_type``; raises ``VerifierError``."""
    return bpfsys.prog_load(prog_type, insns, name, expected_attach_type=attach_type)


def link(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """Link a loaded program to a cgroup's hook; returns the link's fd."""
    return bpfsys.link_create(prog_fd, cgroup_fd, attach_type)


def linked_prog_id(link_fd: int) -> int:
    """The id of the program a (cgroup) link holds."""
    return int(bpfsys.link_info(link_fd).prog_id)


def attached(cgroup_fd: int, attach_type: int) -> list[int]:
    """The ids of the programs attached to the cgroup itself at ``attach_type``."""
    return bpfsys.prog_query(cgroup_fd, attach_type)
