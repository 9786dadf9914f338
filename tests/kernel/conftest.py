"""Fixtures the kernel tests share: a loopback echo backend, proxies that are always stopped,
even when the test fails, an agent lab, and a private bpf filesystem for every test."""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Iterator

import pytest

from sockgate.kernel.ebpfstore import BPFFS_ENV
from sockgate.linux import bpffs as bpffs_mod
from support.agentlab import Lab, agent_lab
from support.launch import Launch, Launched
from support.pinned import mounted
from support.proxyproc import EchoServer, ProxyProc


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    e = EchoServer()
    yield e
    e.close()


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Starts ``sockgate run ARGV`` (``Launched``); every one started is stopped after the test."""
    started: list[Launched] = []

    def start(*argv: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> Launched:
        lr = Launched(list(argv), env=env, prefix=prefix)
        started.append(lr)
        return lr

    yield start
    for lr in started:
        lr.stop()


@pytest.fixture
def agents() -> Iterator[Lab]:
    """An agent lab (tests/support/agentlab.py): its cgroup, bpffs, agents and services, all
    torn down after the test; beside ``lab`` (the netns lab) where a test needs both."""
    with agent_lab() as the_lab:
        yield the_lab


@pytest.fixture
def procs() -> Iterator[list[ProxyProc]]:
    out: list[ProxyProc] = []
    yield out
    for p in out:
        p.close()


@pytest.fixture(autouse=True)
def bpffs(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty directory that sockgate mounts a bpffs on (as it would /sys/fs/bpf), named by
    $SOCKGATE_BPFFS; unmounted and removed after the test, even when it fails. Every kernel
    test has one: ``--backend auto`` is eBPF as root, so whatever a test starts pins its
    objects here and never in the machine's /sys/fs/bpf; mounted before the test starts
    anything, so that processes in the namespaces a test makes see the same pins."""
    d = tempfile.mkdtemp(prefix="sgt-bpffs-")
    monkeypatch.setenv(BPFFS_ENV, d)
    try:
        if os.geteuid() == 0:  # mounted now, so that every mount namespace copied from ours (`ip netns exec`) shares it
            bpffs_mod.ensure_mounted(d)
        yield d
    finally:
        for _ in range(4):  # bounded: a mount stacked twice needs two
            if not mounted(d):
                break
            subprocess.run(["umount", "-l", d], check=False)
        os.rmdir(d)
