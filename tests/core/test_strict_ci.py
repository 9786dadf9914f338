"""Under CI a skip is a failure (tests/support/strict_ci.py); outside CI it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

SAMPLE = """
import shutil
import pytest

@pytest.mark.skipif(shutil.which("no-such-tool-here") is None, reason="needs no-such-tool-here")
def test_marker():
    pass

def test_call():
    pytest.skip("needs a thing")

@pytest.mark.xfail(strict=True, reason="known")
def test_expected_failure():
    assert False

def test_plain():
    pass
"""


def _run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(TESTS) + os.pathsep + env.get("PYTHONPATH", "")
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "support.strict_ci", "-p", "no:cacheprovider",
         "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )


@pytest.mark.parametrize("ci", [False, True])
def test_skips_fail_only_under_ci(tmp_path: Path, ci: bool) -> None:
    result = _run(tmp_path, ci)
    tail = result.stdout.strip().splitlines()[-1]
    if ci:
        assert result.returncode == 1, result.stdout
        assert "1 failed" in tail and "1 error" in tail and "1 passed" in tail and "1 xfailed" in tail, tail
        assert "skipped under CI" in result.stdout and "needs no-such-tool-here" in result.stdout
    else:
        assert result.returncode == 0, result.stdout
        assert "2 skipped" in tail and "1 passed" in tail and "1 xfailed" in tail, tail
