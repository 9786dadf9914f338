"""agent/bansink's state file: written through a fresh O_EXCL name (a link planted at the old
fixed ``.tmp`` name is neither followed nor truncated), renamed whole, the directory synced; a
failed save is returned (status shows it), not only logged."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from sockgate.agent import bansink
from sockgate.agent.banbook import BanBook
from sockgate.agent.protocol import parse_network
from sockgate.bans import BannedPrefix
from sockgate.log import Log


def book() -> BanBook[BannedPrefix]:
    empty: BanBook[BannedPrefix] = BanBook()
    return empty.add(bansink.entry(parse_network("192.0.2.1"), None, "manual", None, None, 0))


def log() -> Log:
    return Log("text", io.StringIO(), flush_interval=0)


def test_a_link_planted_at_the_old_temporary_name_is_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.link(victim, tmp_path / "bans.json.tmp")
    (tmp_path / "x").symlink_to(victim)
    assert bansink.save_book(str(tmp_path / "bans.json"), book(), log()) is None
    assert victim.read_text() == "precious"
    assert json.loads((tmp_path / "bans.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bans.json", "bans.json.tmp", "victim", "x"]


def test_the_directory_is_synced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    def replace(a: str, b: str) -> None:
        synced.append("rename")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert bansink.save_book(str(tmp_path / "bans.json"), book(), log()) is None
    assert synced == ["file", "rename", "dir"]


def test_a_failed_save_says_why_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    why = bansink.save_book(str(tmp_path / "missing" / "bans.json"), book(), log())
    assert why is not None and why.startswith("bans not persisted:") and "bans.json" in why
    (tmp_path / "bans.json").mkdir()  # rename over a directory fails after the temporary file was written
    assert bansink.save_book(str(tmp_path / "bans.json"), book(), log()) is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


class Timers:
    """A loop's ``call_later`` only, fired by the test."""

    def __init__(self) -> None:
        self.due: list[tuple[float, object]] = []

    def call_later(self, delay: float, callback: object) -> object:
        entry = (delay, callback)
        self.due.append(entry)
        return lambda: self.due.remove(entry) if entry in self.due else None


def test_crowdsec_changes_are_saved_once_within_the_delay_others_at_once_and_a_stop_flushes(tmp_path: Path) -> None:
    path, timers = str(tmp_path / "bans.json"), Timers()
    saver = bansink.StateSaver(log())
    first, second = book(), book().add(bansink.entry(parse_network("192.0.2.2"), None, "manual", None, None, 0))
    saver.save(path, first, timers, bansink.CROWDSEC_SAVE_S)  # type: ignore[arg-type]
    saver.save(path, second, timers, bansink.CROWDSEC_SAVE_S)  # type: ignore[arg-type]
    assert not os.path.exists(path) and [d for d, _ in timers.due] == [bansink.CROWDSEC_SAVE_S]
    timers.due.pop()[1]()  # type: ignore[operator]
    assert [b["net"] for b in json.loads(Path(path).read_text())["bans"]] == ["192.0.2.1/32", "192.0.2.2/32"]
    saver.save(path, first, timers, bansink.CROWDSEC_SAVE_S)  # type: ignore[arg-type]
    saver.flush()
    assert timers.due == [] and len(json.loads(Path(path).read_text())["bans"]) == 1
    saver.save(path, second, timers)  # type: ignore[arg-type]
    assert timers.due == [] and len(json.loads(Path(path).read_text())["bans"]) == 2
    saver.save(str(tmp_path / "gone" / "bans.json"), first, timers)  # type: ignore[arg-type]
    assert saver.error is not None and "bans not persisted" in saver.error


def test_a_state_file_of_many_bans_loads_in_one_pass_the_last_of_a_repeated_entry_kept(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    entries = [{"net": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32", "origin": "crowdsec", "expires": None,
                "services": None, "added": 1.0, "reason": None} for i in range(20_000)]
    entries.append({**entries[0], "reason": "again"})
    path.write_text(json.dumps({"version": 1, "bans": entries}))
    loaded = bansink.load_book(str(path))
    assert len(loaded.entries) == 20_000
    assert loaded.entries[-1].reason == "again" and str(loaded.entries[-1].ban.network) == "10.0.0.0/32"
