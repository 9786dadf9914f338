"""Dropping root for good: resolve ``--user``/``--group``, then setgroups, setgid, setuid.

``credentials(user, group)`` happens early (before any socket is bound) so a typo is an error
before anything is done. The user's supplementary groups come from the group database
(``initgroups(3)`` semantics via ``os.getgrouplist``); ``--group`` alone keeps the uid and
replaces the gids.

``drop(creds)`` changes groups first (only root may), then the gid, then the uid — the only
order that works — using the ``setres*id`` calls so the real, effective and saved ids all
change and the process cannot switch back. It then verifies: every id is the target, the
supplementary groups are exactly those asked for, and, when leaving root, ``setuid(0)`` now
fails. Any mismatch is an error: a launcher must never exec a service with privileges it was
told to shed.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from sockgate.errors import AdapterError, UsageError
from sockgate.intlist import numeric_id
from sockgate.linux._errors import translated


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...]
    user: str | None = None  # the user name, when known (for HOME/USER in the environment)
    home: str | None = None

    def describe(self) -> str:
        who = self.user or str(self.uid)
        return f"{who} (uid {self.uid}, gid {self.gid}, groups {','.join(map(str, self.groups)) or '-'})"


def credentials(user: str | None, group: str | None) -> Credentials | None:
    """The credentials for ``--user``/``--group``; None when neither is given."""
    if user is None and group is None:
        return None
    pw = _user(user) if user is not None else None
    gid = _group(group) if group is not None else (pw.pw_gid if pw is not None else os.getgid())
    if pw is not None:
        groups = tuple(sorted(set(os.getgrouplist(pw.pw_name, gid))))
        return Credentials(pw.pw_uid, gid, groups, pw.pw_name, pw.pw_dir)
    return Credentials(os.getuid(), gid, (gid,))


def _user(name: str) -> pwd.struct_passwd:
    try:
        uid = numeric_id(name, "uid")
        return pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(name)
    except KeyError:
        raise UsageError(f"no such user: {name!r}") from None


def _group(name: str) -> int:
    gid = numeric_id(name, "gid")
    if gid is not None:
        return gid
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UsageError(f"no such group: {name!r}") from None


CAP_SETGID, CAP_SETUID = 6, 7  # <uapi/linux/capability.h>


def preflight(creds: Credentials | None, status: str = "/proc/self/status") -> None:
    """Refuse, before any socket is bound, a change of user/group this process cannot make
    (only root, or a process with CAP_SETUID and CAP_SETGID, may)."""
    if creds is None or not needs_change(creds) or os.geteuid() == 0:
        return
    try:
        with open(status, encoding="ascii") as f:
            eff = next((int(line.split()[1], 16) for line in f if line.startswith("CapEff:")), 0)
    except (OSError, ValueError, IndexError):
        eff = 0
    if eff >> CAP_SETUID & 1 and eff >> CAP_SETGID & 1:
        return
    raise UsageError(
        f"--user/--group: cannot become {creds.describe()} as uid {os.geteuid()}: changing user or"
        " group needs root (or CAP_SETUID and CAP_SETGID); start sockgate run as root, or drop"
        " --user/--group"
    )


def needs_change(creds: Credentials) -> bool:
    uids = set(os.getresuid())
    gids = set(os.getresgid())
    return uids != {creds.uid} or gids != {creds.gid} or set(os.getgroups()) != set(creds.groups)


def drop(creds: Credentials) -> None:
    """Become ``creds`` irrevocably, or raise ``AdapterError``."""
    if not needs_change(creds):
        return
    what = f"drop privileges to {creds.describe()}"
    with translated(what):
        os.setgroups(list(creds.groups))
        os.setresgid(creds.gid, creds.gid, creds.gid)
        os.setresuid(creds.uid, creds.uid, creds.uid)
    verify(creds)


def verify(creds: Credentials) -> None:
    """Raise unless this process is exactly ``creds`` and cannot regain root."""
    what = f"drop privileges to {creds.describe()}"
    if set(os.getresuid()) != {creds.uid} or set(os.getresgid()) != {creds.gid}:
        raise AdapterError(f"{what}: ids did not change (now {os.getresuid()}/{os.getresgid()})")
    if set(os.getgroups()) != set(creds.groups):
        raise AdapterError(f"{what}: supplementary groups are {os.getgroups()}")
    if creds.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise AdapterError(f"{what}: could switch back to root")
