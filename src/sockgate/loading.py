"""The edge between files on disk and the pure policy core.

Reads policy files (and what they include), hosts.allow/hosts.deny pairs, and resolves user
and group names through the system database; the parsers themselves never touch the file
system. ``load`` is ``sockgate.load``.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
from typing import Callable, Sequence

from sockgate.errors import PolicyError, UsageError
from sockgate.policy.ir import Policy


class SystemAccounts:
    """passwd/group lookups through the C library (NSS), as ``id(1)`` does."""

    def uid(self, name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None

    def gid(self, name: str) -> int | None:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None


def read_text(path: str) -> str:
    """Read a policy or list file (OSError propagates: the parser reports it at the include)."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def list_files(directory: str) -> list[str]:
    """Names of the regular files in ``directory`` (for ``include "dir/*.conf"``)."""
    with os.scandir(directory) as it:
        return [e.name for e in it if e.is_file()]


def load(path: str | os.PathLike[str]) -> Policy:
    """Load a native policy file (with its includes and set files)."""
    return load_policy([os.fspath(path)])


def load_policy(
    paths: Sequence[str] = (),
    hosts_allow: str | None = None,
    hosts_deny: str | None = None,
) -> Policy:
    """Load native policy files and/or a hosts.allow/hosts.deny pair into one Policy.

    Several native files are read as if concatenated in order. Native service blocks win for
    the services they declare; hosts_access rules cover the rest."""
    from sockgate.policy.hostsaccess import parse_hosts_access
    from sockgate.policy.merge import merge
    from sockgate.policy.parser import parse_policy_files

    if not paths and hosts_allow is None and hosts_deny is None:
        raise UsageError("no policy given: name a policy file, or --hosts-allow/--hosts-deny")
    loaders: list[Callable[[], Policy]] = []
    if paths:
        loaders.append(lambda: parse_policy_files(list(paths), read=read_text, accounts=SystemAccounts(),
                                                  listdir=list_files))
    if hosts_allow is not None or hosts_deny is not None:
        loaders.append(lambda: parse_hosts_access(hosts_allow, hosts_deny, read=read_text))
    parts: list[Policy] = []
    failed: list[PolicyError] = []
    for loader in loaders:  # every part is read, so the errors of all of them are reported
        try:
            parts.append(loader())
        except PolicyError as e:
            failed.append(e)
    if failed:
        sources = {f: t for e in failed for f, t in e.sources.items()}
        raise PolicyError([d for e in failed for d in e.diagnostics], sources)
    return merge(parts)
