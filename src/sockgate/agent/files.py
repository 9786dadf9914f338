"""Which files the agent's policy depends on, and noticing when one changes.

A reload is due when any file the last load *asked for* changes: policy files, their
includes, set files, hosts.allow and hosts.deny and their ``/file`` patterns — and also a file
that was missing then (hosts.deny created later counts), and any name in a directory an
``include "dir/*.conf"`` listed (a new file there may now match). ``WatchingReader`` is the
project's one reader (``loading.FileReader``, same limits) that records what was asked and
listed, so the list comes from the load itself, never from a second parse; it is kept even
when the load fails, so fixing the bad file triggers the next reload.

The directories holding those files are watched (``linux/inotify.py`` says why directories),
each file under both the name it was read by and, when that is a symbolic link, the name it
resolves to — an edit of the link's target elsewhere is seen too. ``Debounce`` then waits
until the writes settle (``delay`` after the last change, at most ``longest`` after the
first): editors write several times, and sshguard writes a temporary file and renames it
over hosts.allow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

from sockgate.linux.inotify import Change, Inotify
from sockgate.loading import FileReader, list_entries, list_files
from sockgate.errors import AdapterError


class WatchingReader(FileReader):
    """A ``FileReader`` that remembers every path asked for and directory listed."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []
        self.listed: list[str] = []
        self.awaited: list[str] = []  # paths that matter though they do not exist (yet)
        self.first_missing: list[str] = []  # for each, its first component that does not exist

    def __call__(self, path: str) -> str:
        self.asked.append(path)
        return super().__call__(path)

    def listdir(self, directory: str) -> list[str]:
        self.listed.append(directory)
        return list_files(directory)

    def entries(self, directory: str) -> list[tuple[str, str]]:
        """Every name in ``directory`` with its kind (``file``, ``link``, ``dir``, ``other``:
        the entry's own, a link not followed), hidden ones too (systemd's units). A missing
        directory raises ``FileNotFoundError`` and is not recorded (``await_path`` it)."""
        found = list_entries(directory)
        self.listed.append(directory)
        return found

    def await_path(self, path: str) -> None:
        """``path`` does not exist yet and matters when it appears: the nearest existing
        ancestor is watched for the next name towards it (so a created unit directory
        reloads, and nothing else there does)."""
        path = os.path.abspath(path)
        first = path
        while (parent := os.path.dirname(first)) != first and not os.path.isdir(parent):
            first = parent
        self.awaited.append(path)
        self.first_missing.append(first)

    def apart(self) -> WatchingReader:
        """A reader with a budget of its own that records what it reads into this one's
        lists (the super-servers' files do not spend the policy's budget)."""
        other = WatchingReader()
        other.asked, other.listed, other.awaited, other.first_missing = \
            self.asked, self.listed, self.awaited, self.first_missing
        return other

    def watch_list(self, extra: Iterable[str] = ()) -> WatchList:
        """What this load depends on (``extra``: more files, e.g. the hosts file for names)."""
        w = watch_list([*self.asked, *self.first_missing, *extra], self.listed)
        return replace(w, awaited=frozenset(self.awaited))


@dataclass(frozen=True)
class WatchList:
    files: frozenset[str]  # absolute names: as asked for, and where symbolic links lead
    listed: frozenset[str]  # directories whose every name matters
    awaited: frozenset[str] = frozenset()  # paths that do not exist: any step towards one matters

    def directories(self) -> frozenset[str]:
        return frozenset(os.path.dirname(f) for f in self.files) | self.listed

    def concerns(self, change: Change) -> bool:
        """Whether ``change`` may change what a load reads."""
        if change.overflow or change.directory in self.listed:
            return True
        if not change.name:  # the directory itself was moved or removed
            return any(f.startswith(change.directory + os.sep) for f in self.files)
        path = os.path.join(change.directory, change.name)
        return path in self.files or any(a == path or a.startswith(path + os.sep) for a in self.awaited)


def watch_list(files: Iterable[str], listed: Iterable[str] = ()) -> WatchList:
    names: set[str] = set()
    for f in files:
        names.add(os.path.abspath(f))
        names.add(os.path.realpath(f))
    return WatchList(frozenset(names), frozenset(os.path.abspath(d or ".") for d in listed))


@dataclass(frozen=True)
class Debounce:
    """When a burst of changes has settled: ``delay`` after the last, ``longest`` after the
    first at most. Pure; the clock is passed in."""

    delay: float = 0.2
    longest: float = 2.0
    first: float | None = None
    last: float | None = None

    def touch(self, now: float) -> Debounce:
        return replace(self, first=now if self.first is None else self.first, last=now)

    def fire_at(self) -> float | None:
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.delay, self.first + self.longest)

    def due(self, now: float) -> bool:
        at = self.fire_at()
        return at is not None and now >= at

    def reset(self) -> Debounce:
        return replace(self, first=None, last=None)


class FileWatcher:
    """The agent's file watch: inotify on the directories of a ``WatchList``, debounced."""

    def __init__(self, delay: float = 0.2, longest: float = 2.0) -> None:
        self.inotify = Inotify()
        self.watching = WatchList(frozenset(), frozenset())
        self.debounce = Debounce(delay, longest)
        self.problems: dict[str, str] = {}  # directory → why it cannot be watched

    def fileno(self) -> int:
        return self.inotify.fileno()

    def swap(self, watch: WatchList) -> None:
        """Watch ``watch`` from now on (directories added and dropped as needed)."""
        old, new = self.inotify.watched(), watch.directories()
        for d in old - new:
            self.inotify.unwatch(d)
        self.problems = {}
        for d in sorted(new):
            try:
                self.inotify.watch(d)
            except AdapterError as e:
                self.problems[d] = str(e)
        self.watching = watch

    def readable(self, now: float) -> bool:
        """Read what inotify queued; whether any of it concerns the watch list."""
        hit = any(self.watching.concerns(c) for c in self.inotify.read())
        if hit:
            self.debounce = self.debounce.touch(now)
        return hit

    def due(self, now: float) -> bool:
        """Whether a reload is due now (and, if so, the burst is forgotten)."""
        if not self.debounce.due(now):
            return False
        self.debounce = self.debounce.reset()
        return True

    def fire_at(self) -> float | None:
        return self.debounce.fire_at()

    def close(self) -> None:
        self.inotify.close()
