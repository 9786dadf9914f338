"""The core tests run the same whoever runs them: the default kernel's eBPF backend is pointed
at a directory that does not exist, so ``--backend auto`` is classic BPF here as it is for an
unprivileged user (its probe finds no bpf filesystem), and no core test touches the machine's
/sys/fs/bpf. Tests about eBPF build their own backend over fakes (tests/support/fakebpf.py)."""

from __future__ import annotations


import pytest

from sockgate.kernel.ebpfstore import BPFFS_ENV


@pytest.fixture(autouse=True)
def no_bpffs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BPFFS_ENV, str(tmp_path_factory.getbasetemp() / "no-bpffs" / "missing"))
