"""inotify on the directories of watched files (``linux/inotify.py``, ``agent/files.py``): a
write in place, a temporary renamed over the file (sshguard, editors), a removal, and a
symbolic link swapped for another are each seen — and a file nobody watches is not."""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sockgate.agent.files import FileWatcher, watch_list

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux-only")


@pytest.fixture
def watcher() -> Iterator[FileWatcher]:
    w = FileWatcher(delay=0.05, longest=0.5)
    yield w
    w.close()


def settle(w: FileWatcher, timeout: float = 2.0) -> bool:
    """Wait (on the descriptor, bounded) until a reload is due; whether one became due."""
    deadline = time.monotonic() + timeout
    while (now := time.monotonic()) < deadline:
        if w.due(now):
            return True
        at = w.fire_at()
        wait = min(deadline, at if at is not None else deadline) - now
        if select.select([w], [], [], max(0.0, wait))[0]:
            w.readable(time.monotonic())
    return False


def quiet(w: FileWatcher) -> bool:
    """Nothing concerning is queued: the descriptor has nothing, or only unrelated names."""
    while select.select([w], [], [], 0)[0]:
        w.readable(time.monotonic())
    return w.fire_at() is None


def replace_by_rename(path: Path, text: str) -> None:
    """sshguard's sshg-fw-hosts and most editors: a temporary beside it, renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def swap_link(link: Path, target: Path) -> None:
    """``ln -sfn`` done atomically: a new link beside it, renamed over it."""
    new = link.with_name("." + link.name + ".new")
    os.symlink(target, new)
    os.rename(new, link)


@pytest.mark.parametrize("how", ["write", "rename-over", "delete", "symlink-swap", "target-edit"])
def test_each_kind_of_change_is_seen(tmp_path: Path, watcher: FileWatcher, how: str) -> None:
    etc, other = tmp_path / "etc", tmp_path / "other"
    etc.mkdir()
    other.mkdir()
    allow = etc / "hosts.allow"
    allow.write_text("sshd: 10.0.0.1\n")
    (other / "v1.conf").write_text("default deny\n")
    (other / "v2.conf").write_text("default allow\n")
    link = etc / "policy.conf"
    os.symlink(other / "v1.conf", link)
    watcher.swap(watch_list([str(allow), str(link)]))
    assert watcher.problems == {} and quiet(watcher)
    (etc / "unrelated").write_text("x")
    assert quiet(watcher)
    actions: dict[str, Callable[[], None]] = {
        "write": lambda: allow.write_text("sshd: 10.0.0.2\n"),
        "rename-over": lambda: replace_by_rename(allow, "sshd: 10.0.0.3\n"),
        "delete": lambda: allow.unlink(),
        "symlink-swap": lambda: swap_link(link, other / "v2.conf"),
        "target-edit": lambda: (other / "v1.conf").write_text("default allow\n"),
    }
    actions[how]()
    assert settle(watcher)
    assert quiet(watcher)  # one burst, one reload


def test_swap_drops_directories_no_longer_needed(tmp_path: Path, watcher: FileWatcher) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    watcher.swap(watch_list([str(a / "p.conf")]))
    watcher.swap(watch_list([str(b / "p.conf")]))
    assert watcher.inotify.watched() == {str(b)}
    (a / "p.conf").write_text("x")
    assert quiet(watcher)
    (b / "p.conf").write_text("x")
    assert settle(watcher)


def test_a_missing_directory_is_a_problem_not_a_crash(tmp_path: Path, watcher: FileWatcher) -> None:
    watcher.swap(watch_list([str(tmp_path / "nope" / "hosts.deny")]))
    assert list(watcher.problems) == [str(tmp_path / "nope")]
    assert "No such file" in watcher.problems[str(tmp_path / "nope")] or "no such" in watcher.problems[str(tmp_path / "nope")].lower()


def test_a_directory_watched_under_two_names_reports_both(tmp_path: Path, watcher: FileWatcher) -> None:
    real = tmp_path / "srv"
    real.mkdir()
    os.symlink(real, tmp_path / "etc")
    watcher.swap(watch_list([str(tmp_path / "etc" / "p.conf")]))  # watched as etc/ and srv/
    assert watcher.inotify.watched() == {str(tmp_path / "etc"), str(real)}
    watcher.swap(watch_list([str(real / "q.conf")]))
    assert watcher.inotify.watched() == {str(real)}  # the shared watch stays for the other name
    (real / "q.conf").write_text("x")
    assert settle(watcher)
