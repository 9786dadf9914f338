"""A fleet, simulated (tests/support/fleet.py): three hosts as three network namespaces, a
``sockgate agent --crowdsec`` in each guarding its own service, one real LAPI. One
``cscli decisions add`` is enforced on every host — the attacker's SYNs dropped, seen from
outside each namespace, a bystander still let in — every agent's status holds it as a CrowdSec
ban in its maps, and one ``cscli decisions delete`` lets the attacker in everywhere again."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from support import fleet

HOSTS = 3
WAIT = 15.0  # seconds: a 1 s interval, cscli's own time, a loaded machine


@pytest.fixture
def three() -> Iterator[fleet.Fleet]:
    reason = fleet.available()
    if reason is not None:
        pytest.skip(reason)
    with fleet.fleet(HOSTS, interval=1.0) as f:
        yield f


def test_one_decision_is_enforced_on_every_host_and_its_deletion_lifts_it_everywhere(three: fleet.Fleet) -> None:
    f = three
    assert all(f.reachable(f.hosts, fleet.ATTACKER, 2.0).values())  # nothing banned yet
    t0 = time.monotonic()
    f.lapi.add(fleet.ATTACKER, "5m")
    dropped = f.until(True, t0, WAIT)
    assert sorted(dropped) == list(range(HOSTS))
    assert f.dropped(f.hosts) == set(range(HOSTS))  # and it stays dropped
    assert all(f.reachable(f.hosts, fleet.BYSTANDER, 2.0).values())  # only the attacker
    for h in f.hosts:
        st = h.status()
        assert [(b["net"], b["origin"]) for b in st["bans"]["items"]] == [(f"{fleet.ATTACKER}/32", "crowdsec")]
        assert st["services"][0]["bans_in"] == "maps" and st["unguarded"] == 0
    t1 = time.monotonic()
    f.lapi.delete(fleet.ATTACKER)
    lifted = f.until(False, t1, WAIT)
    assert sorted(lifted) == list(range(HOSTS))
    assert f.dropped(f.hosts) == set()
    assert all(h.status()["bans"]["items"] == [] for h in f.hosts)


def test_the_fleet_is_gone_afterwards() -> None:
    if (reason := fleet.available()) is not None:
        pytest.skip(reason)
    with pytest.raises(ZeroDivisionError):
        with fleet.fleet(1) as f:
            names = {f.lan, *(h.netns for h in f.hosts)}
            pids = [p.pid for h in f.hosts for p in (h.agent, h.service) if p is not None] + [f.lapi.proc.pid]  # type: ignore[union-attr]
            cgroups = [h.cgroup for h in f.hosts]
            1 / 0
    left = fleet.netlab.sh("ip", "netns", "list").stdout
    assert not any(n in left for n in names)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            fleet.os.kill(pid, 0)
    assert not any(fleet.os.path.exists(c) for c in cgroups)
