"""``sockgate ls``: sockets, who holds them, who can reach them, and the guard on each.

A readable table (rich) on a terminal, plain aligned columns when piped, JSON lines with
``--json`` (fields documented in docs/ls.md). The work is ``sockgate.socktable.list_sockets``.

With ``--hosts-allow``/``--hosts-deny`` (and ``--map``) it is the audit instead: for each daemon
those files name and each of its sockets, who enforces the rules — libwrap, a sockgate guard
or nothing (``agent/auditscan.run_audit``, judged by the pure ``agent/audit.py``); the exit
status is 3 when a socket is enforced by nothing, 4 when one could not be told.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Sequence

from sockgate.cli.common import MAP_HELP, add_superserver_args, columns, parse_maps, unit_dirs, warn_missing
from sockgate.errors import UsageError
from sockgate.socktable import Row, Selection, list_sockets, netid, peer_text
from sockgate.policy.source import escape

if TYPE_CHECKING:  # rich (tens of ms of imports) loads only to draw a terminal table: never for --json or a pipe
    from rich.console import Console

HEADERS = ("Proto", "State", "Local", "Peer", "Process", "User", "Exposure", "Guard")
_WHOLE = frozenset({"Proto", "State", "Local", "Peer", "Process", "User"})


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="every socket, not only listening/bound ones")
    p.add_argument("-t", "--tcp", action="append_const", dest="kinds", const="tcp", help="TCP sockets")
    p.add_argument("-u", "--udp", action="append_const", dest="kinds", const="udp", help="UDP sockets")
    p.add_argument("-x", "--unix", action="append_const", dest="kinds", const="unix", help="Unix domain sockets")
    p.add_argument("-w", "--raw", action="append_const", dest="kinds", const="raw", help="raw and ICMP (ping) sockets")
    p.add_argument("--port", type=int, metavar="N", help="only sockets whose local port is N")
    p.add_argument("--pid", type=int, metavar="PID", help="only sockets PID holds")
    p.add_argument("--user", metavar="USER", help="only sockets owned by USER (name or uid)")
    p.add_argument("--unguarded", action="store_true", help="only sockets without a sockgate filter")
    p.add_argument("--json", action="store_true", help="one JSON object per socket per line")
    audit = p.add_argument_group(
        "audit", "who enforces a hosts.allow/hosts.deny pair on each socket of each daemon it names: libwrap,"
        " a sockgate guard, or nothing. Exit status 3 when a socket is enforced by nothing, 4 when one"
        " could not be told (and none is enforced by nothing), 0 otherwise")
    audit.add_argument("--hosts-allow", metavar="PATH", help="a hosts.allow file (hosts_access(5))")
    audit.add_argument("--hosts-deny", metavar="PATH", help="a hosts.deny file (hosts_access(5))")
    audit.add_argument("--map", action="append", default=[], metavar="DAEMON=PROTO/PORT",
                       help=MAP_HELP.replace("guard", "count", 1))
    add_superserver_args(audit, "which daemon a port starts, and whether it calls libwrap")


def selection(args: argparse.Namespace) -> Selection:
    kinds = set(args.kinds or ())
    if "raw" in kinds:
        kinds.add("icmp")
    return Selection(frozenset(kinds), args.all, args.port, args.pid, args.user, args.unguarded)


def run(args: argparse.Namespace) -> int:
    if args.hosts_allow is not None or args.hosts_deny is not None or args.map:
        return run_audit(args)
    rows = list_sockets(selection(args))
    out = sys.stdout
    if args.json:
        out.writelines(json.dumps(r.to_json(), separators=(",", ":")) + "\n" for r in rows)
    elif out.isatty():
        render_table(rows, args.all)
    else:
        out.write(plain(rows, args.all))
    return 0


_SOCKET_OPTIONS = (("all", "--all"), ("kinds", "-t/-u/-x/-w"), ("port", "--port"), ("pid", "--pid"),
                   ("user", "--user"), ("unguarded", "--unguarded"))


def run_audit(args: argparse.Namespace) -> int:
    """The audit: rows, then the exit status (3: a socket enforced by nothing; 4: unknown)."""
    # imported for the audit only: building the full parser (`sockgate --help`) imports every command module
    from sockgate.agent import audit
    from sockgate.agent.auditscan import Sources, run_audit as scan

    given = [flag for attr, flag in _SOCKET_OPTIONS if getattr(args, attr)]
    if given:
        raise UsageError(f"ls: {given[0]} lists sockets; it does not combine with the audit (--hosts-allow/--hosts-deny/--map)")
    warn_missing(args.hosts_allow, args.hosts_deny)
    rows = scan(Sources(args.hosts_allow, args.hosts_deny, parse_maps(args.map), args.xinetd_conf, args.inetd_conf,
                        unit_dirs(args)))
    out = sys.stdout
    if args.json:
        out.writelines(json.dumps(audit.to_json(r), separators=(",", ":")) + "\n" for r in rows)
    elif not rows:
        print("sockgate: the files name no daemon (ALL and patterns enrol none); give --map DAEMON=PROTO/PORT", file=sys.stderr)
    elif out.isatty():
        render_audit([[escape(c) for c in audit.cells(r)] for r in rows], list(audit.HEADERS))
    else:
        out.write(columns([list(audit.HEADERS)] + [[escape(c) for c in audit.cells(r)] for r in rows]))
    status = audit.exit_status(rows)
    if status == audit.EXIT_NOTHING:
        print("sockgate: a socket of a daemon the files name is enforced by nothing (enforced by NOTHING)", file=sys.stderr)
    elif status == audit.EXIT_UNKNOWN:
        print("sockgate: who enforces the rules on a socket could not be told (enforced by unknown)", file=sys.stderr)
    return status


def cells(row: Row, with_peer: bool) -> list[str]:
    """The row's columns, escaped: a process's name and a Unix socket's path are whatever a
    local user chose, and a filter's marker names whatever its author wrote."""
    s = row.sock
    c = [netid(s), s.state_name, s.local_text()]
    if with_peer:
        c.append(peer_text(s) or "*")
    return [escape(x) for x in c + [row.process_text(), row.user or "?", row.exposure.text, row.guard.text]]


def _headers(with_peer: bool) -> list[str]:
    return [h for h in HEADERS if with_peer or h != "Peer"]


def plain(rows: Sequence[Row], with_peer: bool) -> str:
    """Columns aligned with spaces, one header line; the last column is not padded."""
    return columns([_headers(with_peer)] + [cells(r, with_peer) for r in rows])


def render_table(rows: Sequence[Row], with_peer: bool, console: "Console | None" = None) -> None:
    """The terminal table (rich), the guard coloured."""
    from rich.console import Console  # (rich: see the TYPE_CHECKING import above)
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1, 0, 0))
    # one space between columns, as ss; addresses, ports, states and processes stay on one
    # line (a port split across lines misreads); exposure and guard wrap between words when
    # the terminal is narrow
    for h in _headers(with_peer):
        table.add_column(h, overflow="fold", no_wrap=h in _WHOLE)
    style = {"sockgate": "green", "modified": "bold red", "foreign": "yellow", "none": "red", "unknown": "dim"}
    for r in rows:
        c = cells(r, with_peer)
        c[-1] = f"[{style[r.guard.state]}]{_escape(c[-1])}[/]"
        table.add_row(*[_escape(x) for x in c[:-1]], c[-1])
    (console or Console()).print(table)


_AUDIT_STYLE = {"sockgate": "green", "libwrap": "green", "NOTHING": "bold red", "unknown": "yellow"}


def render_audit(rows: Sequence[list[str]], headers: list[str], console: "Console | None" = None) -> None:
    """The audit's terminal table (rich): Enforced by coloured, the Why column wrapping."""
    from rich.console import Console  # (rich: see the TYPE_CHECKING import above)
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1, 0, 0))
    for h in headers:
        table.add_column(h, overflow="fold", no_wrap=h != "Why")
    by = headers.index("Enforced by")
    for c in rows:
        cells = [_escape(x) for x in c]
        style = _AUDIT_STYLE.get(c[by], "dim")
        cells[by] = f"[{style}]{cells[by]}[/]"
        table.add_row(*cells)
    (console or Console()).print(table)


def _escape(text: str) -> str:
    from rich.markup import escape  # (rich: see the TYPE_CHECKING import above)

    return escape(text)
