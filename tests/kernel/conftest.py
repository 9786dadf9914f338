"""Fixtures the kernel tests of the proxy share: a loopback echo backend, and proxies that are
always stopped, even when the test fails."""

from __future__ import annotations

from typing import Iterator

import pytest

from support.proxyproc import EchoServer, ProxyProc


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    e = EchoServer()
    yield e
    e.close()


@pytest.fixture
def procs() -> Iterator[list[ProxyProc]]:
    out: list[ProxyProc] = []
    yield out
    for p in out:
        p.close()
