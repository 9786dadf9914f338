"""Under CI, a skipped test is a failed test.

CI installs every tool the tests use (Debian packages, Python extras) and runs as root, so a
test that skips there means a missing install step or a broken environment, and a green run
would hide it. With ``CI`` set in the environment this plugin turns every skip (a ``skipif``
marker, ``pytest.skip`` in a fixture or test, ``importorskip``) into a failure that keeps the
skip's reason. xfail is left alone: it is a stated expectation, not a missing tool.
"""

from __future__ import annotations

import os
from typing import Generator

import pytest

STRICT = bool(os.environ.get("CI"))


def _reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every tool the tests need must be present: {_reason(report.longrepr)}"
