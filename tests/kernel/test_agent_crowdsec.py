"""The agent enforcing a real CrowdSec LAPI's decisions (tests/support/crowdsec.py): a decision
added with ``cscli`` drops the source on the agent's guarded service within a bounded wait, its
deletion lets it back, an outage keeps the decisions and says so in ``status``; and the
decision → drop latency at a 1 s stream interval (``pytest -s ... -k latency``)."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pytest

from kernel.test_agent import ALLOWED, BASE, DENIED, Lab, connects, guarded_by, lab, native, until  # noqa: F401
from support import crowdsec

DECISION_WAIT = 10.0  # seconds: a 1 s interval, a loaded machine, cscli's own time
SAMPLES = 20


def reaches(agent: Any, src: str, port: int, timeout: float = 0.4) -> bool:
    """``connects``, where a connection from ``src`` that completes its handshake and is then
    reset midway counts as not connected — when the agent holds a ban of ``src`` then: a ban
    that lands between the handshake and the echo ends the established connection (eBPF:
    SOCK_DESTROY through sock_diag), which is the ban doing its work. A reset while no ban of
    ``src`` is held is no ban's doing and fails the test."""
    try:
        return connects(src, port, timeout)
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        if any(b["net"] == f"{src}/32" for b in agent.status()["bans"]["items"]):
            return False
        raise


def _agent(lab: Lab, lapi: crowdsec.Lapi, port: int, backend: str) -> Any:
    key = lab.path("crowdsec.key", lapi.bouncer_key("sockgate"))
    os.chmod(key, 0o600)
    agent = lab.agent(native(lab, port, allow="127.0.0.0/8"), "--backend", backend, "--crowdsec", lapi.url,
                      "--crowdsec-key-file", key, "--crowdsec-interval", "1")
    s = lab.server("tcp", port)
    until("guarded", lambda: guarded_by(s.info, "web"))
    until("the LAPI pulled", lambda: agent.status()["sources"]["crowdsec"]["state"] == "up", timeout=DECISION_WAIT)
    return agent


@pytest.mark.parametrize("backend", ["ebpf", "cbpf"])
def test_a_decision_drops_its_deletion_allows_and_an_outage_keeps_it(lab: Lab, lapi: crowdsec.Lapi, backend: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKGATE_BPFFS", lab.bpffs)
    port = BASE + (25 if backend == "ebpf" else 26)
    agent = _agent(lab, lapi, port, backend)
    assert reaches(agent, DENIED, port)
    lapi.add(DENIED, "1m")
    until("the decision enforced", lambda: not reaches(agent, DENIED, port), timeout=DECISION_WAIT)
    assert connects(ALLOWED, port)
    st = agent.status()
    assert [(b["net"], b["origin"]) for b in st["bans"]["items"]] == [("127.0.0.2/32", "crowdsec")]
    assert st["services"][0]["bans_in"] == ("maps" if backend == "ebpf" else "program")
    lapi.delete(DENIED)
    until("the deletion enforced", lambda: reaches(agent, DENIED, port), timeout=DECISION_WAIT)
    lapi.add(DENIED, "1m")
    until("enforced again", lambda: not reaches(agent, DENIED, port), timeout=DECISION_WAIT)
    lapi.stop()
    down = until("the outage in status", lambda: (s := agent.status())["sources"]["crowdsec"]["state"] == "down" and s,
                 timeout=DECISION_WAIT)
    assert any(e.startswith("CrowdSec LAPI") and "down" in e and "kept" in e for e in down["errors"]), down["errors"]
    assert down["unguarded"] == 0 and [k["state"] for k in down["services"][0]["sockets"]] in (["guarded"], ["adopted"]), down
    assert not reaches(agent, DENIED, port) and connects(ALLOWED, port)  # the last decisions kept


def test_decision_to_drop_latency(lab: Lab, lapi: crowdsec.Lapi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKGATE_BPFFS", lab.bpffs)
    port = BASE + 27
    agent = _agent(lab, lapi, port, "ebpf")
    gaps = []
    for _ in range(SAMPLES):
        time.sleep(random.uniform(0, 1))  # a random phase against the 1 s pulls (not a synchronisation)
        t0 = time.monotonic()  # before cscli: its own time counts, as an operator's would
        lapi.add(DENIED, "1m")
        deadline = t0 + DECISION_WAIT
        while True:
            at = time.monotonic()
            assert at < deadline, "a decision not enforced in time"
            if not reaches(agent, DENIED, port, timeout=0.1):
                break
            time.sleep(0.01)
        gaps.append(at - t0)
        lapi.delete(DENIED)
        until("the deletion enforced", lambda: reaches(agent, DENIED, port), timeout=DECISION_WAIT)
    gaps.sort()
    p50, p99 = gaps[len(gaps) // 2], gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
    print(f"\ndecision -> drop at a 1 s interval over {len(gaps)} decisions: p50 {p50:.2f} s, p99 {p99:.2f} s,"
          f" max {gaps[-1]:.2f} s")
    assert p99 < 2.5
