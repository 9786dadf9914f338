"""Which files the agent watches (``agent/files.py``): every path a load asked for, even a
missing one and even when the load failed, listed include directories, symbolic links' targets;
which changes concern them; the debounce."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockgate.agent.files import Debounce, WatchingReader, watch_list
from sockgate.errors import PolicyError
from sockgate.linux.inotify import IN_DELETE_SELF, IN_MOVED_TO, Change
from sockgate.loading import load_policy


def test_the_watch_list_is_what_the_load_asked_for(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("service a tcp/1 { allow @bl\n default deny }\n")
    (tmp_path / "bl.txt").write_text("10.0.0.1\n")
    real = tmp_path / "real.conf"
    real.write_text('set bl < "bl.txt"\ninclude "conf.d/*.conf"\n')
    os.symlink(real, tmp_path / "main.conf")
    (tmp_path / "hosts.allow").write_text("sshd: 10.0.0.0/8\n")
    reader = WatchingReader()
    load_policy([str(tmp_path / "main.conf")], str(tmp_path / "hosts.allow"), str(tmp_path / "hosts.deny"),
                reader=reader, listdir=reader.listdir)
    w = reader.watch_list()
    assert {os.path.relpath(f, tmp_path) for f in w.files} == {
        "main.conf", "real.conf", "bl.txt", "conf.d/a.conf", "hosts.allow", "hosts.deny"}  # hosts.deny is missing
    assert w.listed == {str(tmp_path / "conf.d")}
    assert w.directories() == {str(tmp_path), str(tmp_path / "conf.d")}


def test_a_failed_load_still_names_its_files(tmp_path: Path) -> None:
    (tmp_path / "p.conf").write_text('include "inc.conf"\n')
    (tmp_path / "inc.conf").write_text("service a tcp/1 { allow nonsense!\n }\n")
    reader = WatchingReader()
    with pytest.raises(PolicyError):
        load_policy([str(tmp_path / "p.conf")], reader=reader, listdir=reader.listdir)
    assert {os.path.basename(f) for f in reader.watch_list().files} == {"p.conf", "inc.conf"}


def test_which_changes_concern_the_list() -> None:
    w = watch_list(["/etc/sockgate/p.conf", "/etc/hosts.allow"], ["/etc/sockgate/conf.d"])
    assert w.concerns(Change("/etc", "hosts.allow", IN_MOVED_TO))
    assert not w.concerns(Change("/etc", "hosts.allow.tmp", IN_MOVED_TO))  # sshguard's temporary
    assert w.concerns(Change("/etc/sockgate/conf.d", "new.conf", IN_MOVED_TO))
    assert w.concerns(Change("/etc/sockgate", "", IN_DELETE_SELF))
    assert not w.concerns(Change("/etc/sockgate/conf.d2", "", IN_DELETE_SELF))
    assert w.concerns(Change("", "", 0, overflow=True))


def test_debounce_waits_for_quiet_but_not_forever() -> None:
    d = Debounce(delay=0.2, longest=1.0)
    assert d.fire_at() is None and not d.due(100)
    d = d.touch(10.0).touch(10.1)
    assert d.fire_at() == pytest.approx(10.3) and not d.due(10.29) and d.due(10.3)
    for t in (10.2, 10.4, 10.6, 10.8):
        d = d.touch(t)
    assert d.fire_at() == 11.0  # a writer that never stops still gets a reload a second in
    assert d.reset().fire_at() is None


def test_a_missing_directory_is_awaited_in_its_nearest_existing_parent_and_only_there(tmp_path: Path) -> None:
    """A unit directory that does not exist yet: its nearest existing ancestor is watched for
    the next name towards it; other names there reload nothing; the super-servers' reader
    records into the policy's lists with a budget of its own."""
    reader = WatchingReader()
    units = reader.apart()
    units.await_path(str(tmp_path / "run/systemd/transient"))
    (tmp_path / "x").write_text("x")
    units("%s/x" % tmp_path)
    w = reader.watch_list()
    assert str(tmp_path) in w.directories() and str(tmp_path / "run") not in w.directories()
    assert w.concerns(Change(str(tmp_path), "run", IN_MOVED_TO))
    assert w.concerns(Change(str(tmp_path / "run/systemd"), "transient", IN_MOVED_TO))
    assert not w.concerns(Change(str(tmp_path), "other", IN_MOVED_TO))
    assert reader.asked == [f"{tmp_path}/x"] and reader.left == reader.total and units.left < units.total
