"""`sockgate export --output`: the file is replaced whole, never written through a planted name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockgate.cli.export import _write
from sockgate.errors import AdapterError


def test_output_replaces_the_file_whole(tmp_path: Path) -> None:
    out = tmp_path / "rules.nft"
    out.write_text("old\n")
    _write(str(out), "new\n")
    assert out.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rules.nft"]  # no temporary left behind


def test_a_symlink_planted_at_a_guessable_temporary_name_is_never_followed(tmp_path: Path) -> None:
    """Whoever can write the output's directory could plant ``<out>.tmp<pid>`` -> a root-owned
    file and have the export overwrite it; the temporary name is now made with O_EXCL."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "rules.nft"
    for name in (f"{out}.tmp{os.getpid()}", f"{out}.tmp"):
        os.symlink(victim, name)
    _write(str(out), "ruleset\n")
    assert victim.read_text() == "precious\n"
    assert out.read_text() == "ruleset\n" and not out.is_symlink()


def test_a_symlink_at_the_output_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "rules.nft"
    os.symlink(victim, out)
    _write(str(out), "ruleset\n")
    assert victim.read_text() == "precious\n"
    assert out.read_text() == "ruleset\n" and not out.is_symlink()


def test_an_unwritable_directory_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"cannot write .*missing/rules\.nft: No such file or directory"):
        _write(str(tmp_path / "missing" / "rules.nft"), "x\n")
