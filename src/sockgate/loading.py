"""The edge between files on disk and the pure policy core.

Reads policy files (and what they include), hosts.allow/hosts.deny pairs, and resolves user
and group names through the system database; the parsers themselves never touch the file
system. ``load`` is ``sockgate.load``.

Every file a policy names — policy files and their includes, set files, hosts.allow and
hosts.deny and their ``/file`` patterns — is read through one ``FileReader`` per load, so
each file is read once and all of them obey the same rules: regular files only (a FIFO would
block the reader — and in ``run`` the supervisor — forever, ``/dev/zero`` never ends), opened
with ``O_NONBLOCK`` so even a FIFO swapped in after the check cannot block the open, and at
most ``MAX_FILE_BYTES`` each, ``MAX_TOTAL_BYTES`` together. Symbolic links are followed: the
paths come from the policy's author, who is trusted, and configuration managers link files
into place.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from typing import Callable, Sequence

from sockgate.bulk import no_cycle_collection
from sockgate.errors import PolicyError, UsageError
from sockgate.intlist import number
from sockgate.policy.ir import Policy


class SystemAccounts:
    """passwd/group lookups through the C library (NSS), as ``id(1)`` does."""

    def uid(self, name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except (KeyError, ValueError):  # ValueError: a NUL byte, which no account name holds
            return None

    def gid(self, name: str) -> int | None:
        try:
            return grp.getgrnam(name).gr_gid
        except (KeyError, ValueError):
            return None


LOGIN_DEFS = "/etc/login.defs"
DEFAULT_SYS_UID_MAX = 999  # shadow's default: UID_MIN (1000) - 1
_LOGIN_DEFS_BYTES = 1 << 20
_UID_CEILING = 65533  # below nobody (65534) and (uid_t)-1: a value beyond counts every user as a system account


def parse_sys_uid_max(text: str) -> int:
    """The highest uid of a system account by login.defs' ``SYS_UID_MAX``; the default when the
    key is absent, and when its content is anything but one plain decimal value below nobody
    (several disagreeing values, signs, octal or hex forms, trailing words): what the file
    says about accounts decides whose process may be a daemon, so doubt means the default."""
    values: set[str] = set()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] == "SYS_UID_MAX":
            values.add(" ".join(words[1:]))
    if len(values) != 1:
        return DEFAULT_SYS_UID_MAX
    (value,) = values
    n = number(value, 0, _UID_CEILING)
    return DEFAULT_SYS_UID_MAX if n is None else n


def system_uid_max(path: str | None = LOGIN_DEFS) -> int:
    """``parse_sys_uid_max`` of ``path``; the default when it is None, unreadable, not a regular
    file, too large, or not root's alone (a file another user may write decides nothing)."""
    if path is None:
        return DEFAULT_SYS_UID_MAX
    try:
        st = os.stat(path)
        if st.st_uid != 0 or st.st_mode & 0o022:
            return DEFAULT_SYS_UID_MAX
        return parse_sys_uid_max(read_regular(path, _LOGIN_DEFS_BYTES))
    except OSError:
        return DEFAULT_SYS_UID_MAX


MAX_FILE_BYTES = 64 << 20  # one file: a million IPv6 prefixes, one a line, fit
MAX_TOTAL_BYTES = 256 << 20  # every file of one load together
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _mib(n: int) -> str:
    return f"{n >> 20} MiB"


def _check_regular(st: os.stat_result, path: str) -> None:
    """Raise the ``OSError`` the parsers report when ``st`` is not a regular file."""
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
        raise OSError(errno.EINVAL, f"{kind}, not a regular file; only regular files are read", path)


def _check_name(path: str) -> None:
    """Raise the ``OSError`` the parsers report for a name no file can have (``os`` would
    raise ValueError, a traceback): a policy's string may hold a NUL byte."""
    if "\0" in path:
        raise OSError(errno.EINVAL, "a file name cannot contain a NUL byte", path)


def read_regular(path: str, limit: int = MAX_FILE_BYTES) -> str:
    """The text of the regular file ``path``, at most ``limit`` bytes; never blocks on a FIFO
    or device (checked before the open, and again on the descriptor, which cannot change)."""
    _check_name(path)
    _check_regular(os.stat(path), path)  # a device is not even opened (opening can act)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        _check_regular(st, path)
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise OSError(errno.EFBIG, f"larger than {_mib(limit)}, the limit for one file", path)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


class FileReader:
    """Reads the files of one load: each once (an include or pattern file named again is the
    same text), regular files only, within a budget for all of them together."""

    def __init__(self, limit: int = MAX_FILE_BYTES, total: int = MAX_TOTAL_BYTES) -> None:
        self.limit = limit
        self.left = total
        self.total = total
        self.texts: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        text = self.texts.get(path)
        if text is not None:
            return text
        text = read_regular(path, self.limit)
        if len(text) > self.left:
            raise OSError(errno.EFBIG, f"the files of this policy are larger than {_mib(self.total)} together",
                          path)
        self.left -= len(text)
        self.texts[path] = text
        return text


def read_text(path: str) -> str:
    """Read one policy or list file by the rules of ``FileReader`` (OSError propagates: the
    parser reports it at the include)."""
    return read_regular(path)


def list_files(directory: str) -> list[str]:
    """Names of the regular files in ``directory`` (for ``include "dir/*.conf"``)."""
    _check_name(directory)
    with os.scandir(directory) as it:
        return [e.name for e in it if e.is_file()]


def list_entries(directory: str) -> list[tuple[str, str]]:
    """Every name in ``directory`` with the kind of the entry itself (``file``, ``link``,
    ``dir``, ``other``), links not followed."""
    _check_name(directory)
    with os.scandir(directory) as it:
        return [(e.name, _kind(e)) for e in it]


def _kind(e: os.DirEntry[str]) -> str:
    if e.is_symlink():
        return "link"
    if e.is_dir(follow_symlinks=False):
        return "dir"
    return "file" if e.is_file(follow_symlinks=False) else "other"


def load(path: str | os.PathLike[str]) -> Policy:
    """Load a native policy file (with its includes and set files)."""
    return load_policy([os.fspath(path)])


def load_policy(
    paths: Sequence[str] = (),
    hosts_allow: str | None = None,
    hosts_deny: str | None = None,
    *,
    reader: FileReader | None = None,
    listdir: Callable[[str], list[str]] = list_files,
) -> Policy:
    """Load native policy files and/or a hosts.allow/hosts.deny pair into one Policy.

    Several native files are read as if concatenated in order. Native service blocks win for
    the services they declare; hosts_access rules cover the rest. ``reader`` and ``listdir``
    let a caller see every file read and directory listed (the agent watches them)."""
    # The parsers load with the first policy, not with `import sockgate` (a third of its
    # import time), which every command and library user pays.
    from sockgate.policy.hostsaccess import parse_hosts_access
    from sockgate.policy.merge import merge
    from sockgate.policy.parser import parse_policy_files

    if not paths and hosts_allow is None and hosts_deny is None:
        raise UsageError("no policy given: name a policy file, or --hosts-allow/--hosts-deny")
    read = reader if reader is not None else FileReader()
    loaders: list[Callable[[], Policy]] = []
    if paths:
        loaders.append(lambda: parse_policy_files(list(paths), read=read, accounts=SystemAccounts(),
                                                  listdir=listdir))
    if hosts_allow is not None or hosts_deny is not None:
        loaders.append(lambda: parse_hosts_access(hosts_allow, hosts_deny, read=read, accounts=SystemAccounts()))
    parts: list[Policy] = []
    failed: list[PolicyError] = []
    with no_cycle_collection():  # a big set file is a million acyclic values (bulk.py)
        for loader in loaders:  # every part is read, so the errors of all of them are reported
            try:
                parts.append(loader())
            except PolicyError as e:
                failed.append(e)
    if failed:
        sources = {f: t for e in failed for f, t in e.sources.items()}
        raise PolicyError([d for e in failed for d in e.diagnostics], sources)
    return merge(parts)
