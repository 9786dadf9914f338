"""``sockgate top`` headless (textual's pilot, 80×24): the panes, and what each key does —
sort, filter, follow, explain, ban, unban — over the documented host's snapshots
(support/topdata.py) and a fake agent that records what it was asked. The real agent and the
kernel are tests/kernel/test_top.py."""

from __future__ import annotations

import argparse
import os
import copy
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.widgets import DataTable, Static

from sockgate.cli import top as top_cli
from sockgate.cli.main import main
from sockgate.policy.parser import parse_policy
from sockgate.top.app import CELL_MAX, FollowScreen, TopApp, safe
from support import topdata
from support.topdata import FakeActions

POLICY = parse_policy(topdata.POLICY, "/etc/sockgate/sockgate.conf")


def app(*snaps: object, policy: bool = True) -> tuple[TopApp, FakeActions]:
    actions = FakeActions(list(snaps) or [topdata.with_agent(1), topdata.with_agent(3)])  # type: ignore[arg-type]
    return TopApp(actions, POLICY if policy else None, interval=3600), actions


def column(a: TopApp, table: str, index: int) -> list[str]:
    t = a.screen.query_one(f"#{table}", DataTable)
    return [str(t.get_row_at(i)[index]) for i in range(t.row_count)]


def question(a: TopApp) -> str:
    return str(a.screen.query_one("#question", Static).render())


def text(a: TopApp, widget: str) -> str:
    content = a.screen.query_one(f"#{widget}", Static).render()
    return str(content.plain if isinstance(content, Text) else content)


async def test_the_panes_show_sockets_refusals_bans_and_health() -> None:
    a, _ = app()
    async with a.run_test(size=(80, 24)) as pilot:
        assert column(a, "t-sockets", 1) == ["0.0.0.0:22", "0.0.0.0:53", "0.0.0.0:443", "127.0.0.1:5432"]
        assert column(a, "t-sockets", 5) == ["ssh/cbpf", "NONE", "web/ebpf", "NONE"]
        await pilot.press("g", "2")
        assert column(a, "t-sources", 0) == ["203.0.113.9", "198.51.100.7", "203.0.113.9", "2001:db8::bad"]
        assert column(a, "t-sources", 3) == ["24.0", "8.0", "6.0", "1.0"]
        assert column(a, "t-services", 0) == ["ssh", "web"]
        await pilot.press("3")
        assert column(a, "t-bans", 1) == ["CrowdSec", "fail2ban", "policy", "manual", "hosts.deny"]
        await pilot.press("4")
        assert "drift            0 selected socket(s) not guarded; 1 filter(s) put back" in text(a, "health-text")
        assert text(a, "title").startswith("sockgate top | agent | refusals from agent")


async def test_sort_cycles_columns_and_r_reverses() -> None:
    a, _ = app()
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("s", "s")  # LOCAL -> PROCESS -> USER
        assert column(a, "t-sockets", 3) == ["nobody", "postgres", "root", "www-data"]
        await pilot.press("r")
        assert column(a, "t-sockets", 3) == ["www-data", "root", "postgres", "nobody"]
        assert text(a, "title").endswith("sort USER down")
        await pilot.press("2", "s")  # REFUSED -> PER S: no rate before a second snapshot
        assert column(a, "t-sources", 3) == ["-", "-", "-", "-"]
        await pilot.press("g", "r")
        assert column(a, "t-sources", 3) == ["1.0", "6.0", "8.0", "24.0"]
        assert text(a, "title").endswith("sort PER S up")


async def test_filter_by_service_port_user_and_a_bad_filter_is_one_line() -> None:
    a, _ = app()
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("slash", *"port:22", "enter")
        assert column(a, "t-sockets", 1) == ["0.0.0.0:22"]
        await pilot.press("2")
        assert set(column(a, "t-sources", 1)) == {"ssh"}
        assert "filter: port:22" in text(a, "title")
        await pilot.press("slash", "ctrl+u", *"user:www-data", "enter")
        assert column(a, "t-services", 0) == ["web"]
        await pilot.press("slash", "ctrl+u", *"port:ssh", "enter")
        assert text(a, "message") == "filter 'port:ssh': a port is a number 0-65535"
        assert column(a, "t-services", 0) == ["web"]  # the filter before is kept
        await pilot.press("slash", "ctrl+u", *"port:443", "escape")  # escape: the prompt closed, nothing changed
        assert column(a, "t-services", 0) == ["web"] and "filter: user:www-data" in text(a, "title")
        await pilot.press("slash", "ctrl+u", "enter")
        assert column(a, "t-services", 0) == ["ssh", "web"]


async def test_follow_shows_one_sources_refusals_bans_and_explain() -> None:
    a, _ = app()
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "f")
        assert isinstance(a.screen, FollowScreen)
        assert column(a, "f-refusals", 1) == ["ssh", "web"]
        assert column(a, "f-bans", 1) == ["manual"]
        assert text(a, "f-explain") == ""
        await pilot.press("e")
        shown = text(a, "f-explain")
        assert "client 203.0.113.9 (ipv4): deny" in shown and "decision engine: deny — banned (203.0.113.9/32)" in shown
        await pilot.press("g")  # a refresh keeps following
        assert column(a, "f-refusals", 2) == ["360", "90"]
        await pilot.press("escape")
        assert not isinstance(a.screen, FollowScreen)


async def test_follow_without_a_selected_source_asks_for_one() -> None:
    a, _ = app()
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("f", *"100.64.9.9", "enter")
        assert isinstance(a.screen, FollowScreen)
        assert column(a, "f-bans", 0) == ["100.64.0.0/10"]
        await pilot.press("e")
        assert text(a, "f-explain").startswith("service ")  # every service of the policy


async def test_e_explains_the_selected_source_and_without_a_policy_says_what_it_needs() -> None:
    a, _ = app(policy=False)
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "down", "e")
        assert isinstance(a.screen, FollowScreen) and a.screen.followed.source == "198.51.100.7"
        assert text(a, "f-explain").startswith("explain needs the policy: start sockgate top with POLICY files")


async def test_ban_and_unban_go_to_the_agent_and_its_answer_is_shown() -> None:
    a, actions = app()
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "down", "b")
        assert actions.bans == [] and "ban 198.51.100.7 on every service for 3600 s?" in question(a)
        await pilot.press("y")
        assert actions.bans == [("198.51.100.7", 3600)]
        assert text(a, "message") == "banned 198.51.100.7"
        await pilot.press("3", "down", "u", "y")  # the fail2ban ban, lifted as fail2ban's
        assert actions.unbans == [("192.0.2.66/32", "fail2ban")]
        await pilot.press("1", "b")
        assert text(a, "message") == "select a source (refusals) or a ban first" and len(actions.bans) == 1
        await pilot.press("2", "up", "f", "b", "y", "u", "y")
        assert actions.bans[-1] == ("203.0.113.9", 3600) and actions.unbans[-1] == ("203.0.113.9/32", "manual")


async def test_without_the_agent_it_shows_what_ls_sees_and_says_what_is_missing() -> None:
    a, _ = app(topdata.without_agent(1), topdata.without_agent(2))
    async with a.run_test(size=(80, 24)) as pilot:
        assert "NO AGENT | refusals from eBPF counters" in text(a, "title")
        assert text(a, "notes").startswith("no agent (no agent at /run/sockgate/agent.sock): shown is what `ls` sees")
        assert column(a, "t-sockets", 6) == ["-", "-", "-", "-"]
        await pilot.press("4")
        assert text(a, "health-text").startswith("no agent: its health (last reload, drift, errors) is not known")


async def test_no_color_renders_without_colour(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    a, _ = app()
    async with a.run_test(size=(80, 24)):
        assert a.no_color
        svg = a.export_screenshot()
    assert "0.0.0.0:22" in svg.replace("&#160;", " ")


def test_the_screenshots_in_the_docs_are_the_current_screens(tmp_path: Path) -> None:
    import asyncio

    before = os.environ.get("NO_COLOR")
    written = asyncio.run(topdata.screenshots(tmp_path))
    docs = Path(__file__).parents[2] / "docs" / "top"
    for p in written:
        again = f"regenerate: python tests/support/topdata.py docs/top ({p.name})"
        assert (docs / p.name).exists() and (docs / p.name).read_text() == p.read_text(), again
        assert f"](top/{p.name})" in (docs.parent / "top.md").read_text()
    assert "NO_COLOR" not in os.environ or os.environ["NO_COLOR"] == before


def test_without_textual_top_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(top_cli.importlib.util, "find_spec", lambda name: None)
    assert main(["top"]) == 2
    assert capsys.readouterr().err == "sockgate: sockgate top needs textual: pip install 'sockgate[top]'\n"


def test_without_a_terminal_top_says_what_to_use_instead(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top"]) == 2  # pytest's captured stdout is no terminal
    assert capsys.readouterr().err == f"sockgate: {top_cli.NO_TERMINAL}\n"


@pytest.mark.parametrize("args, message", [
    (["--ban-for", "soon"], "sockgate: --ban-for: "),
    (["--interval", "0"], "sockgate: --interval must be 0.2-3600 seconds, got 0"),
])
def test_bad_options_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(top_cli.sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(top_cli.sys.stdout, "isatty", lambda: True)
    assert main(["top", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_the_parser_takes_the_policy_and_the_control_socket() -> None:
    p = argparse.ArgumentParser()
    top_cli.add_parser(p)
    args = p.parse_args(["a.conf", "--hosts-allow", "/etc/hosts.allow", "--control", "/x.sock", "--ban-for", "never"])
    assert (args.policy_files, args.hosts_allow, args.control, args.ban_for) == (["a.conf"], "/etc/hosts.allow", "/x.sock", "never")


async def test_two_sockets_on_one_address_are_two_rows() -> None:
    """SO_REUSEPORT: the same proto, address and holder twice must not collide in the table."""
    from dataclasses import replace

    snap = replace(topdata.with_agent(), sockets=topdata.SOCKETS + topdata.SOCKETS[:1])
    a, _ = app(snap)
    async with a.run_test(size=(80, 24)) as pilot:
        assert column(a, "t-sockets", 1) == ["0.0.0.0:22", "0.0.0.0:22", "0.0.0.0:53", "0.0.0.0:443", "127.0.0.1:5432"]
        await pilot.press("down", "g")
        assert a.screen.query_one("#t-sockets", DataTable).cursor_row == 1


async def test_text_a_hostile_agent_fills_never_reaches_the_terminal_raw() -> None:
    """Fields the model does not escape (a tally's time, a source's name in health) carry no
    terminal sequence to the screen: every string drawn goes through one backstop."""
    snap = topdata.with_agent(1)
    doc = snap.status  # type: ignore[attr-defined]
    doc["services"][0]["refusals"]["top"][0]["last"] = "\x1b]0;pwned\x1b\\X"
    doc["sources"]["\x1b]52;c;ZWNobw==\x07x"] = {"state": "ok"}
    a, _ = app(snap, snap)
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("g", "2")
        shown = [str(c) for i in range(a.screen.query_one("#t-sources", DataTable).row_count)
                 for c in a.screen.query_one("#t-sources", DataTable).get_row_at(i)]
        await pilot.press("4")
        drawn = "\n".join(shown) + text(a, "health-text")
        assert "\x1b" not in drawn and "\x07" not in drawn
        assert "\\x1b]0;pwned" in drawn and "\\x1b]52;c;" in drawn


def test_safe_shows_controls_as_escapes_and_cuts_long_text() -> None:
    assert safe("a\x1b[31mb\u202ec\n", None).plain == "a\\x1b[31mb\\u202ec\n"
    assert safe("x" * 500, CELL_MAX).plain == "x" * (CELL_MAX - 1) + "…"


async def test_a_row_a_refresh_takes_away_leaves_nothing_selected_for_ban() -> None:
    """The chosen source leaves the agent's top list: the cursor's new row 0 (the most refused
    source, which a flooder chooses) is nobody's choice — `b` bans nothing until the user moves."""
    first, later = topdata.with_agent(1), topdata.with_agent(3)
    for svc in later.status["services"]:  # type: ignore[index]
        svc["refusals"]["top"] = [t for t in svc["refusals"]["top"] if t["source"] != "198.51.100.7"]
    a, actions = app(first, later, later)
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "down")
        assert a.selected_source() == "198.51.100.7"
        await pilot.press("g", "b")
        assert actions.bans == [] and "select a source" in text(a, "message")
        await pilot.press("down", "up", "b", "y")  # chosen again by the user
        assert [net for net, _ in actions.bans] == [column(a, "t-sources", 0)[0]]


async def test_unban_on_the_follow_screen_lifts_only_the_sources_own_ban() -> None:
    """A wider ban covering the followed source (a manual /24) is not lifted by `u` there: the
    user lifts it from the bans pane, choosing it by its network."""
    wide = [topdata._ban("198.51.100.0/24", "manual", None, "by hand")]
    snap = topdata.with_agent(1, bans=wide)
    a, actions = app(snap, snap)
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "down", "f", "u")
        assert actions.unbans == [] and "wider network" in a.message


async def test_ban_and_unban_need_a_yes_any_other_key_cancels() -> None:
    a, actions = app()
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "down", "b")
        assert "198.51.100.7" in question(a)
        await pilot.press("u")  # not a yes, and not an unban either
        assert actions.bans == [] and actions.unbans == [] and text(a, "message") == "not banned"
        await pilot.press("b", "escape")
        assert actions.bans == [] and text(a, "message") == "not banned"
        await pilot.press("3", "down", "u")
        assert "lift the fail2ban ban on 192.0.2.66/32?" in question(a)
        await pilot.press("n")
        assert actions.unbans == [] and text(a, "message") == "not lifted"


def _top(snap: Any, sources: list[tuple[str, int]]) -> Any:
    out = copy.deepcopy(snap)
    for svc in out.status["services"]:
        svc["refusals"]["top"] = [{"source": s, "count": n, "first": topdata.T, "last": topdata.T} for s, n in sources]
        svc["refusals"]["sources"] = len(sources)
    return out


async def test_a_refresh_does_not_choose_the_row_for_the_user() -> None:
    base = topdata.with_agent(1)
    first = _top(base, [("203.0.113.9", 50), ("198.51.100.7", 40)])
    gone = _top(base, [("203.0.113.9", 60)])  # the user's row left: nothing is selected
    flood = _top(base, [("192.0.2.200", 900), ("203.0.113.9", 70)])  # a new source sorts above
    a, actions = app(first, gone, flood, flood)
    async with a.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        rows = column(a, "t-sources", 0)
        await pilot.press(*["down"] * rows.index("198.51.100.7"))
        assert a.selected_source() == "198.51.100.7", rows
        await pilot.press("g")
        await pilot.pause()
        assert a.selected_source() is None  # lost: as documented
        await pilot.press("g")
        await pilot.pause()
        assert column(a, "t-sources", 0)[0] == "192.0.2.200", column(a, "t-sources", 0)
        # nobody moved the cursor since the selection was lost: still nothing selected
        assert a.selected_source() is None, f"a refresh selected {a.selected_source()}"
