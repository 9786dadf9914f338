"""The textual application of ``sockgate top``: layout and keys over ``model`` and ``select``.

textual, because it is the maintained terminal UI toolkit for Python, runs over ssh in any
xterm-like terminal, honours ``NO_COLOR`` (its monochrome filter), and drives apps headless
in tests (``App.run_test``), which a curses loop written here would not. It is an optional
extra (``sockgate[top]``): nothing else of sockgate needs it.

Nothing here decides anything: a timer takes a snapshot on a thread (``Actions.snapshot``), the
pure model turns it and the one before into rows, the filter and sort of the moment select and
order them, and the tables are refilled with the cursor kept on the same row. Ban and unban are
one agent request each, on a thread, asked only after the user confirms what will be banned or
lifted (``y``; anything else cancels); their one line of outcome is shown, never a traceback.
Every cell is a ``rich.text.Text``, so text a process or a peer chose is never read as markup.
The screen fits 80×24 and says everything in words, so no colour is needed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import textwrap
from typing import Callable, ClassVar, Sequence

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.events import DescendantFocus, Key
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, Static, TabbedContent, TabPane
from textual.widgets.data_table import CellDoesNotExist

from sockgate.errors import SockgateError
from sockgate.policy.ir import Policy
from sockgate.top.feed import Actions
from sockgate.top.model import BanView, Snapshot, SourceView, View, view
from sockgate.top.select import (COLUMNS, AnyRow, Filter, FilterError, Followed, Pane, apply, cells, explain_source, follow,
                                 pane_rows, parse_filter, sort_rows)

TABLES: dict[str, Pane] = {"t-sockets": "sockets", "t-services": "services", "t-sources": "sources", "t-bans": "bans"}
DEFAULT_SORT: dict[Pane, tuple[int, bool]] = {"sockets": (1, False), "services": (1, True), "sources": (2, True), "bans": (0, False)}


# Control characters (C0 but tab and newline, DEL, C1), zero-width and bidi controls: never sent to
# the terminal, whatever field they arrive in. The model escapes what it knows to be foreign text;
# this is the backstop for every string drawn, so a field a hostile agent or peer fills and the
# model did not foresee cannot carry a terminal sequence (ESC, OSC 52 ...) to the screen.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
CELL_MAX = 200  # characters a table cell shows (a 100 KB argv0 is a long name, not a layout)


def safe(text: str, limit: int | None = None) -> Text:
    """``text`` as drawn: unsafe characters shown as escapes, cut to ``limit`` with an ellipsis."""
    shown = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)
    if limit is not None and len(shown) > limit:
        shown = shown[:limit - 1] + "…"
    return Text(shown)


class Rows(DataTable[Text]):
    """A pane's table. ``lost``: the row the user chose left at a refresh, so nothing is selected
    (ban, unban and follow act on nothing) until the user moves the cursor — else the row a
    refresh put under it (the most refused source, which whoever sends the most refusals
    chooses) would be banned by one key."""

    lost = False


def fill(table: DataTable[Text], pane: Pane, rows: Sequence[AnyRow], keys: Sequence[str]) -> dict[str, AnyRow]:
    """Refill ``table``, its cursor kept on the row of the same key when that row is still there.
    Keys repeated (two sockets on one address, SO_REUSEPORT) are told apart by their order."""
    old = _cursor_key(table)
    table.clear()
    unique = _unique(keys)
    for row, key in zip(rows, unique):
        table.add_row(*[safe(c, CELL_MAX) for c in cells(row, pane)], key=key)
    lost = isinstance(table, Rows) and table.lost
    if old is not None and old in unique and not lost:
        table.move_cursor(row=unique.index(old))
    elif old is not None and isinstance(table, Rows):  # the row the user chose is gone (or was
        table.lost = True  # already): the cursor stays on row 0, nobody's choice — a move here
        # would read as the user's (on_data_table_row_highlighted) and choose for them
    return dict(zip(unique, rows))


def _unique(keys: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        n = seen[k] = seen.get(k, 0) + 1
        out.append(k if n == 1 else f"{k}\x00{n}")
    return out


def _same_net(net: str, source: str) -> bool:
    """Whether ``net`` is exactly the one address ``source``."""
    try:
        n = ipaddress.ip_network(net, strict=False)
        return n.num_addresses == 1 and n.network_address == ipaddress.ip_address(source)
    except ValueError:
        return False


def _cursor_key(table: DataTable[Text]) -> str | None:
    if table.row_count == 0:
        return None
    try:
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    except CellDoesNotExist:  # the cursor is past the rows of a table just refilled
        return None


def row_key(pane: Pane, row: AnyRow) -> str:
    """What identifies a row across refreshes: its first cells (a ban: with its services)."""
    return "\x00".join(cells(row, pane)[:3 if pane == "bans" else 2])


def header(table: DataTable[Text], pane: Pane) -> None:
    table.add_columns(*[h for h, _ in COLUMNS[pane]])
    table.cursor_type = "row"
    table.zebra_stripes = False


class FollowScreen(Screen[None]):
    """One source: whom it was refused by, the bans that cover it, and ``explain`` for it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("b", "app.ban_followed", "ban"),
        Binding("u", "app.unban_followed", "unban"),
        Binding("e", "explain", "explain"),
    ]

    def __init__(self, followed: Followed, explained: bool) -> None:
        super().__init__()
        self.followed = followed
        self.explained = explained

    def compose(self) -> ComposeResult:
        yield Static(id="f-title")
        yield Rows(id="f-refusals")
        yield Rows(id="f-bans")
        with VerticalScroll(id="f-scroll"):
            yield Static(id="f-explain")
        yield Static(id="f-message")
        yield Footer()

    def on_mount(self) -> None:
        header(self.query_one("#f-refusals", DataTable), "sources")
        header(self.query_one("#f-bans", DataTable), "bans")
        self.show(self.followed)

    def show(self, followed: Followed) -> None:
        self.followed = followed
        self.query_one("#f-title", Static).update(safe(f"following {followed.source}  ({len(followed.refusals)} "
                                                       f"refusal row(s), {len(followed.bans)} ban(s))"))
        fill(self.query_one("#f-refusals", DataTable), "sources", followed.refusals,
             [row_key("sources", r) for r in followed.refusals])
        fill(self.query_one("#f-bans", DataTable), "bans", followed.bans, [row_key("bans", b) for b in followed.bans])
        if self.explained:
            self.action_explain()

    def action_explain(self) -> None:
        self.explained = True
        app = self.app
        assert isinstance(app, TopApp)
        self.query_one("#f-explain", Static).update(safe(explain_source(app.policy, self.followed)))


class Confirm(ModalScreen[bool]):
    """One yes/no question over the screen: ``y`` is yes, any other key no (a ban is one key
    away from the wrong row; a stray key must not make it)."""

    DEFAULT_CSS = """
    Confirm { align: center middle; }
    #question { width: 76; height: auto; border: solid $accent; padding: 0 1; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Static(safe(f"{self.question}  (y: yes, any other key: no)", CELL_MAX), id="question")

    def on_key(self, event: Key) -> None:
        event.stop()
        event.prevent_default()
        self.dismiss(event.key == "y")


class TopApp(App[None]):
    """``sockgate top``. ``actions``: where snapshots come from and bans go (``feed.Feed``)."""

    TITLE = "sockgate top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #title, #message { height: 1; }
    #notes { height: auto; max-height: 3; }
    #t-services { height: auto; max-height: 6; }
    #prompt { display: none; }
    #prompt.open { display: block; }
    #f-title, #f-message { height: 1; }
    #f-refusals, #f-bans { height: auto; max-height: 5; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "pane('sockets')", "sockets", show=False),
        Binding("2", "pane('refusals')", "refusals", show=False),
        Binding("3", "pane('bans')", "bans", show=False),
        Binding("4", "pane('health')", "health", show=False),
        Binding("s", "sort", "sort"),
        Binding("r", "reverse", "reverse", show=False),
        Binding("slash", "prompt('filter')", "filter"),
        Binding("f", "follow", "follow"),
        Binding("e", "follow(True)", "explain"),
        Binding("b", "ban", "ban"),
        Binding("u", "unban", "unban"),
        Binding("g", "refresh", "refresh", show=False),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, actions: Actions, policy: Policy | None = None, interval: float = 2.0,
                 ban_for: int | None = 3600) -> None:
        super().__init__()
        self.actions = actions
        self.policy = policy
        self.interval = interval
        self.ban_for = ban_for
        self.snapshots: tuple[Snapshot | None, Snapshot | None] = (None, None)
        self.view: View | None = None
        self.filter = Filter()
        self.shown: dict[Pane, dict[str, AnyRow]] = {}  # each table's rows by key, as last filled
        self.sorts: dict[Pane, tuple[int, bool]] = dict(DEFAULT_SORT)
        self.current: Pane = "sockets"  # the table the keys act on
        self.prompting: str | None = None
        self.message = ""

    # -- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with TabbedContent(initial="sockets", id="tabs"):
            with TabPane("1 sockets", id="sockets"):
                yield Rows(id="t-sockets")
            with TabPane("2 refusals", id="refusals"):
                yield Rows(id="t-services")
                yield Rows(id="t-sources")
            with TabPane("3 bans", id="bans"):
                yield Rows(id="t-bans")
            with TabPane("4 health", id="health"):
                with VerticalScroll():
                    yield Static(id="health-text")
        yield Static(id="notes")
        yield Input(id="prompt", disabled=True)
        yield Static(id="message")
        yield Footer()

    async def on_mount(self) -> None:
        for table_id, pane in TABLES.items():
            header(self.query_one(f"#{table_id}", DataTable), pane)
        self.query_one("#t-sockets", DataTable).focus()
        await self.action_refresh()
        self.set_interval(self.interval, self.action_refresh)

    # -- data --------------------------------------------------------------------------------

    async def action_refresh(self) -> None:
        snap = await asyncio.to_thread(self.actions.snapshot)
        self.snapshots = (self.snapshots[1], snap)
        self.view = view(snap, self.snapshots[0])
        self.redraw()

    def redraw(self) -> None:
        if self.view is None:
            return
        shown = apply(self.view, self.filter)
        for table_id, pane in TABLES.items():
            col, rev = self.sorts[pane]
            rows = sort_rows(pane_rows(shown, pane), pane, col, rev)  # type: ignore[type-var]
            self.shown[pane] = fill(self.query_one(f"#{table_id}", DataTable), pane, rows, [row_key(pane, r) for r in rows])
        self.query_one("#health-text", Static).update(safe(self._health(shown)))
        self.query_one("#notes", Static).update(safe("\n".join(shown.notes)))
        self.query_one("#title", Static).update(safe(self._title(shown)))
        self.query_one("#message", Static).update(safe(self.message))
        if isinstance(self.screen, FollowScreen):
            self.screen.show(follow(shown, self.screen.followed.source))

    def _title(self, v: View) -> str:
        pane = self.pane()
        col, rev = self.sorts[pane]
        agent = "agent" if v.agent else "NO AGENT"
        filt = self.filter.text() or "none"
        return (f"sockgate top | {agent} | refusals from {v.refusals_from} | filter: {filt} | "
                f"sort {COLUMNS[pane][col][0]} {'down' if rev else 'up'}")

    @staticmethod
    def _health(v: View) -> str:
        if not v.health:
            return "no agent: its health (last reload, drift, errors) is not known\n" + "\n".join(v.notes)
        width = max(len(k) for k, _ in v.health)
        return "\n".join(textwrap.fill(val, 78, initial_indent=f"{k.ljust(width)}  ", subsequent_indent=" " * (width + 4),
                                       break_on_hyphens=False) for k, val in v.health)

    # -- what the keys act on ----------------------------------------------------------------

    def pane(self) -> Pane:
        """The table the keys act on: the last one focused."""
        return self.current

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        if isinstance(event.widget, DataTable) and event.widget.id in TABLES:
            self.current = TABLES[event.widget.id]
            if self.view is not None:
                self.query_one("#title", Static).update(safe(self._title(apply(self.view, self.filter))))

    def selected(self) -> AnyRow | None:
        pane = self.pane()
        table = self.query_one(f"#t-{pane}", DataTable)
        key = _cursor_key(table)
        if key is None or isinstance(table, Rows) and table.lost:
            return None
        return self.shown.get(pane, {}).get(key)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The user moved the cursor: the row under it is chosen again (the move to row 0 that
        a refill makes is not a choice)."""
        if event.cursor_row != 0 and isinstance(event.data_table, Rows):
            event.data_table.lost = False

    def selected_source(self) -> str | None:
        row = self.selected()
        if isinstance(row, SourceView):
            return row.source
        if isinstance(row, BanView):
            return row.net
        return None

    def say(self, text: str) -> None:
        self.message = text
        self.query_one("#message", Static).update(safe(text))

    # -- actions -----------------------------------------------------------------------------

    def action_pane(self, name: str) -> None:
        self.query_one("#tabs", TabbedContent).active = name
        table: Pane | None = {"sockets": "sockets", "refusals": "sources", "bans": "bans"}.get(name)  # type: ignore[assignment]
        if table is not None:
            self.current = table
            self.query_one(f"#t-{table}", DataTable).focus()
        self.redraw()

    def action_sort(self) -> None:
        pane = self.pane()
        col, rev = self.sorts[pane]
        self.sorts[pane] = ((col + 1) % len(COLUMNS[pane]), rev)
        self.redraw()

    def action_reverse(self) -> None:
        pane = self.pane()
        col, rev = self.sorts[pane]
        self.sorts[pane] = (col, not rev)
        self.redraw()

    def action_prompt(self, what: str) -> None:
        self.prompting = what
        prompt = self.query_one("#prompt", Input)
        prompt.placeholder = ("filter: service:NAME port:N user:NAME or words (empty: none)" if what == "filter"
                              else "follow which source (an address)?")
        prompt.value = self.filter.text() if what == "filter" else ""
        prompt.disabled = False
        prompt.add_class("open")
        prompt.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        what = self.prompting
        self.close_prompt()
        if what == "filter":
            try:
                self.filter = parse_filter(event.value)
            except FilterError as e:
                self.say(str(e))
                return
            self.say(f"filter: {self.filter.text() or 'none'}")
            self.redraw()
        elif what == "follow" and event.value.strip():
            self.open_follow(event.value.strip(), explained=False)

    def on_key(self, event: object) -> None:
        key = getattr(event, "key", None)
        if key == "escape" and self.prompting is not None:
            self.close_prompt()

    def close_prompt(self) -> None:
        self.prompting = None
        prompt = self.query_one("#prompt", Input)
        prompt.remove_class("open")
        prompt.disabled = True
        self.action_pane(self.query_one("#tabs", TabbedContent).active)

    def action_follow(self, explained: bool = False) -> None:
        source = self.selected_source()
        if source is None:
            self.action_prompt("follow")
            return
        self.open_follow(source, explained)

    def open_follow(self, source: str, explained: bool) -> None:
        if self.view is None:
            return
        self.push_screen(FollowScreen(follow(apply(self.view, Filter()), source), explained))

    async def action_ban(self) -> None:
        await self._ban(self.selected_source())

    async def action_unban(self) -> None:
        row = self.selected()
        origin = row.unban_origin if isinstance(row, BanView) else "manual"
        await self._unban(self.selected_source(), origin)

    async def action_ban_followed(self) -> None:
        if isinstance(self.screen, FollowScreen):
            await self._ban(self.screen.followed.source)

    async def action_unban_followed(self) -> None:
        if isinstance(self.screen, FollowScreen):
            f = self.screen.followed
            # only the followed address's own ban: a wider one covering it (a manual /16) is lifted
            # from the bans pane, where the user chooses it by its network
            own = [b for b in f.bans if _same_net(b.net, f.source)]
            if f.bans and not own:
                self.say(f"{f.source} is banned by a wider network: lift it in the bans pane (3)")
                return
            await self._unban(own[0].net if own else f.source, own[0].unban_origin if own else "manual")

    async def _ban(self, source: str | None) -> None:
        if source is None:
            self.say("select a source (refusals) or a ban first")
            return
        span = f"for {self.ban_for} s" if self.ban_for else "until lifted"
        self._confirm(f"ban {source} on every service {span}?", lambda: self.actions.ban(source, self.ban_for), "not banned")

    async def _unban(self, source: str | None, origin: str) -> None:
        if source is None:
            self.say("select a ban (bans) or a source first")
            return
        self._confirm(f"lift the {origin} ban on {source}?", lambda: self.actions.unban(source, origin),  # type: ignore[arg-type]
                      "not lifted")

    def _confirm(self, question: str, call: Callable[[], str], cancelled: str) -> None:
        """Ask ``question``; ``y`` makes the request, anything else says ``cancelled``."""
        async def answered(yes: bool | None) -> None:
            if yes:
                await self._request(call)
            else:
                self.say(cancelled)
        self.push_screen(Confirm(question), answered)

    async def _request(self, call: Callable[[], str]) -> None:
        try:
            line = await asyncio.to_thread(call)
        except SockgateError as e:
            line = f"failed: {e}"
        self.say(line)
        await self.action_refresh()
        if isinstance(self.screen, FollowScreen):
            self.screen.query_one("#f-message", Static).update(safe(line))
