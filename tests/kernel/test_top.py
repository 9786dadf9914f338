"""``sockgate top`` against a real agent and the kernel: the app (textual's pilot, headless,
80×24) reads the host through the real ``Feed``, bans a source with the ``b`` key through the
agent's control socket, and the kernel then drops that source's SYN (a denied connect); ``u``
lifts the ban and the source connects again. Without an agent, top still shows the lab's
socket with its guard, and says the agent is missing.

The agent lab (a private bpffs, a cgroup, the agent as its own process, services in the
cgroup) is tests/kernel/test_agent.py's; every wait is a bounded poll.
"""

from __future__ import annotations

import os
import re

from textual.widgets import DataTable

from conftest import needs_agent
from kernel.test_agent import ALLOWED, BASE, DENIED, Lab, connects, guarded_by, lab, native, until  # noqa: F401
from sockgate.top.app import FollowScreen, TopApp
from sockgate.top.feed import Feed

pytestmark = needs_agent


def rows(a: TopApp, table: str) -> list[list[str]]:
    t = a.screen.query_one(f"#{table}", DataTable)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


async def test_ban_and_unban_from_top_go_through_the_agent_into_the_kernel(lab: Lab) -> None:
    port = BASE + 40
    agent = lab.agent(native(lab, port, allow="127.0.0.0/8"))
    s = lab.server("tcp", port)
    until("guarded", lambda: guarded_by(s.info, "web"))
    assert connects(DENIED, port)
    app = TopApp(Feed(agent.control, lab.bpffs), interval=3600, ban_for=600)
    async with app.run_test(size=(80, 24)) as pilot:
        mine = [r for r in rows(app, "t-sockets") if r[1] == f"0.0.0.0:{port}"]
        assert [(r[5], r[6]) for r in mine] == [("web/ebpf", "guarded")]  # the agent under auto, as root: eBPF
        await pilot.press("f", *DENIED, "enter")
        assert isinstance(app.screen, FollowScreen)
        await pilot.press("b", "y")
        assert "failed" not in str(app.message), app.message
        until("the banned source's SYN dropped", lambda: not connects(DENIED, port))
        assert connects(ALLOWED, port)
        assert [(r[0], r[1]) for r in rows(app, "f-bans")] == [(f"{DENIED}/32", "manual")]
        left = rows(app, "f-bans")[0][3]  # --ban-for 600 s, less the time since (whole seconds)
        assert left == "10m00s" or re.fullmatch(r"9m[0-5]\ds", left), left
        assert [(b["net"], b["origin"], b["reason"]) for b in agent.status()["bans"]["items"]] == [
            (f"{DENIED}/32", "manual", "sockgate top")]
        await pilot.press("u", "y")
        until("the unbanned source connects again", lambda: connects(DENIED, port))
        assert agent.status()["bans"]["items"] == [] and rows(app, "f-bans") == []


async def test_without_the_agent_top_shows_the_sockets_and_says_what_is_missing(lab: Lab) -> None:
    port = BASE + 41
    s = lab.server("tcp", port)
    app = TopApp(Feed(os.path.join(lab.tmp, "no-agent.sock"), lab.bpffs), interval=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        mine = [r for r in rows(app, "t-sockets") if r[1] == f"0.0.0.0:{port}"]
        assert [(r[2].split("/")[0], r[5], r[6]) for r in mine] == [(str(s.info["pid"]), "NONE", "-")]
        assert app.view is not None and not app.view.agent
        assert app.view.notes[0].startswith(f"no agent (no agent at {lab.tmp}/no-agent.sock)")
        await pilot.press("f", *DENIED, "enter", "b", "y")
        assert str(app.message).startswith(f"failed: no agent at {lab.tmp}/no-agent.sock")
