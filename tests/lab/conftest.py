"""Fixtures of the lab tests: real third-party services (a CrowdSec LAPI) on loopback, each in a
directory of its own and always stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from support import crowdsec


@pytest.fixture
def lapi(tmp_path: Path) -> Iterator[crowdsec.Lapi]:
    reason = crowdsec.available()
    if reason is not None:
        pytest.skip(reason)
    with crowdsec.lapi(tmp_path / "lapi") as the_lapi:
        yield the_lapi
