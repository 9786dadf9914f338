"""agent/observe.py without a kernel: an event nobody's policy could select is dropped on its
process's names alone, before any of that process's descriptors is looked at (a fake /proc)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockgate.agent import observe
from sockgate.agent.model import Observed, SocketEvent
from sockgate.agent.observe import Observer


def fake_proc(root: Path, pid: int, name: str) -> str:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_bytes(name.encode() + b"\n")
    (d / "cmdline").write_bytes(f"/usr/sbin/{name}\0-D\0".encode())
    return str(root)


def listen(pid: int, port: int) -> SocketEvent:
    return SocketEvent("listen", 4242, 0, pid, "", 4, "tcp", port, 1)


@pytest.mark.parametrize("wanted", [False, True])
def test_an_event_is_searched_for_only_when_keep_could_want_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               wanted: bool) -> None:
    proc = fake_proc(tmp_path, 4321, "sgdaemond")
    asked: list[Observed] = []
    searched: list[list[int]] = []

    def keep(o: Observed) -> bool:
        asked.append(o)
        return wanted

    def holders(proc: str, pids: list[int]) -> object:
        searched.append(pids)
        raise AssertionError("stop here: the search began")

    monkeypatch.setattr(observe.procfs, "holders", holders)
    obs = Observer(kernel=None, proc=proc, keep=keep, named=lambda h: False)  # type: ignore[arg-type]
    if wanted:
        with pytest.raises(AssertionError, match="the search began"):
            obs.one(listen(4321, 2222))
        assert searched == [[4321]]
    else:
        with obs.one(listen(4321, 2222)) as look:
            assert look.held == {}
        assert searched == []
    [o] = asked
    assert (o.cookie, o.proto, o.family, o.port) == (4242, "tcp", 4, 2222)
    assert [(h.pid, h.comm, h.argv0) for h in o.holders] == [(4321, "sgdaemond", "sgdaemond")]


def test_an_event_whose_process_is_gone_is_searched_for_everywhere(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkdir(tmp_path / "proc")
    looked: list[set[int]] = []

    def listeners(ports: set[int], protos: object, proc: str) -> object:
        looked.append(ports)
        raise AssertionError("stop here: the host-wide look began")

    monkeypatch.setattr(observe, "listeners", listeners)
    monkeypatch.setattr(observe.procfs, "holders", lambda proc, pids: type("H", (), {"by_inode": {}})())
    obs = Observer(kernel=None, proc=str(tmp_path / "proc"), keep=lambda o: False, named=lambda h: False)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="host-wide look"):
        obs.one(listen(999, 2222))
    assert looked == [{2222}]
