"""Processes a kernel test starts to hold sockets: stopped, reaped and their pipes closed,
even when the test fails."""

from __future__ import annotations

import subprocess
from typing import Any, Iterable


def reap(procs: Iterable[subprocess.Popen[Any]]) -> None:
    for p in procs:
        p.kill()
        p.wait()
        for f in (p.stdin, p.stdout):
            if f is not None:
                f.close()
