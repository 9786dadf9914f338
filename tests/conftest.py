"""Shared test configuration: capability markers that skip with a reason, the netns lab, and a
CrowdSec LAPI of the test's own."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import crowdsec, netlab  # noqa: E402

pytest_plugins = ["support.strict_ci"]

DATA = Path(__file__).parent / "data"


def _reason_root() -> str | None:
    return None if os.geteuid() == 0 else "needs root"


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_netns = pytest.mark.skipif(netlab.can_netns() is not None, reason=str(netlab.can_netns()))
needs_linux = pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only")
# ``sockgate agent`` for real (tests/support/agentlab.py): cgroup BPF hooks, pidfd_getfd, bpffs.
needs_agent = [
    pytest.mark.skipif(sys.platform != "linux", reason="cgroup BPF is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_PTRACE)"),
    pytest.mark.root,
]


def needs_tool(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"needs {name} (installed by .ci/run)")


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    reason = netlab.can_netns()
    if reason is not None:
        pytest.skip(reason)
    with netlab.lab() as the_lab:
        yield the_lab


@pytest.fixture
def lapi(tmp_path: Path) -> Iterator[crowdsec.Lapi]:
    """A real CrowdSec LAPI on loopback (tests/support/crowdsec.py), in a directory of its own
    and always stopped; skipped (failed under CI) where CrowdSec is not installed."""
    reason = crowdsec.available()
    if reason is not None:
        pytest.skip(reason)
    with crowdsec.lapi(tmp_path / "lapi") as the_lapi:
        yield the_lapi


def pytest_sessionstart(session: pytest.Session) -> None:
    # Only in CI: during development several test runs may share the machine.
    if os.environ.get("CI") and netlab.can_netns() is None:
        netlab.cleanup_stale()
