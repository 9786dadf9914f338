"""cli/refused: arguments, the table and JSON renderings of a listing, and errors as one line
(the reader is faked: tests/kernel/test_refused.py reads real pins)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from sockgate.cli import refused as cli
from sockgate.cli.main import build_parser, main
from sockgate.ebpf.layout import Ban, Count, Origin
from sockgate.ebpf.refusals import BanRow, Clock, CountRow
from sockgate.kernel.ebpfstore import BPFFS_ENV
from sockgate.kernel.pins import PinError
from sockgate.refused import Listing

S = 1_000_000_000
CLOCK = Clock(1_700_000_000 * S, 100 * S)
LISTING = Listing(
    [CountRow("ssh", ipaddress.ip_address("203.0.113.5"), Count(3, 40 * S, 99 * S)),
     CountRow("a\x1b[31m", ipaddress.ip_address("2001:db8::1"), Count(1, 0, 0))],
    [BanRow("ssh", ipaddress.ip_network("198.51.100.0/24"), Ban(0, Origin.CROWDSEC))],
    CLOCK, ["services/x: skipped"])


def test_arguments_and_the_hidden_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BPFFS_ENV)  # the default root, as a user without the variable gets it
    args = build_parser().parse_args(["refused", "--service", "ssh", "--json", "--root", "/tmp/r"])
    assert (args.service, args.json, args.root) == ("ssh", True, "/tmp/r")
    assert build_parser().parse_args(["refused"]).root == "/sys/fs/bpf/sockgate"
    assert "--root" not in build_parser(only="refused").format_help() + _sub_help()


def _sub_help() -> str:
    p = build_parser(only="refused")
    sub = next(a for a in p._actions if a.dest == "command")
    return sub.choices["refused"].format_help()  # type: ignore[attr-defined, no-any-return]


def test_table() -> None:
    lines = cli.as_table(LISTING).splitlines()
    assert lines[0].split() == ["SERVICE", "SOURCE", "REFUSED", "FIRST", "SEEN", "LAST", "SEEN"]
    assert lines[1].split() == ["ssh", "203.0.113.5", "3", "2023-11-14T22:12:20Z", "2023-11-14T22:13:19Z"]
    assert lines[2].split() == ["a\\x1b[31m", "2001:db8::1", "1", "-", "-"]
    assert lines[4].split() == ["SERVICE", "BANNED", "ORIGIN", "EXPIRES"]
    assert lines[5].split() == ["ssh", "198.51.100.0/24", "crowdsec", "never"]
    assert cli.as_table(Listing([], [], CLOCK)) == "no refusals counted\n"


def test_json_lines() -> None:
    rows = [json.loads(x) for x in cli.as_json(LISTING).splitlines()]
    assert rows[0] == {"type": "refused", "service": "ssh", "source": "203.0.113.5", "count": 3,
                       "first_seen": "2023-11-14T22:12:20Z", "last_seen": "2023-11-14T22:13:19Z"}
    assert rows[1]["service"] == "a\x1b[31m" and rows[1]["first_seen"] is None
    assert rows[2] == {"type": "ban", "service": "ssh", "source": "198.51.100.0/24", "origin": "crowdsec", "expires": None}


def test_warnings_and_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "read_refused", lambda root, service: LISTING)
    assert main(["refused"]) == 0
    assert capsys.readouterr().err == "sockgate: warning: services/x: skipped\n"

    def fail(root: str, service: str | None) -> Listing:
        raise PinError("/sys/fs/bpf/sockgate/services: nothing pinned there")

    monkeypatch.setattr(cli, "read_refused", fail)
    assert main(["refused", "--json"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == "sockgate: /sys/fs/bpf/sockgate/services: nothing pinned there\n"
