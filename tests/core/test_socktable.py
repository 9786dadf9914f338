"""The pure half of `sockgate ls`: exposure, selection, JSON rows,
plain columns, and the /proc/net table parsers. No sockets, no root."""

from __future__ import annotations

import ipaddress
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate import socktable
from sockgate.cli import ls as ls_cli
from sockgate.kernel import GuardInfo
from sockgate.linux.sockdiag import TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_TIME_WAIT, Sock, parse_proc_inet, parse_proc_unix
from sockgate.linux.sockdiag import _banned, _by_length

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ls.md"


def tcp(addr: str, port: int = 80, state: int = TCP_LISTEN, **kw: Any) -> Sock:
    fam = "ipv6" if ":" in addr else "ipv4"
    return Sock("tcp", fam, "stream", state, 1000, 0, addr, port, "::" if fam == "ipv6" else "0.0.0.0", 0, **kw)


def unix(name: str | None, vfs: tuple[int, int] | None = None, state: int = TCP_LISTEN, **kw: Any) -> Sock:
    return Sock("unix", "unix", "stream", state, 2000, 0, unix_name=name, unix_vfs=vfs, **kw)


@pytest.mark.parametrize(
    ("sock", "kind", "text"),
    [
        (tcp("0.0.0.0"), "any", "every interface"),
        (tcp("::", v6only=False), "any", "every interface (IPv6 and IPv4)"),
        (tcp("::", v6only=True), "any", "every IPv6 interface"),
        (tcp("127.0.0.53"), "loopback", "loopback only"),
        (tcp("::1"), "loopback", "loopback only"),
        (tcp("::ffff:127.0.0.1"), "loopback", "loopback only"),
        (tcp("192.0.2.7"), "address", "one address (192.0.2.7)"),
        (tcp("2001:db8::7"), "address", "one address (2001:db8::7)"),
    ],
)
def test_inet_exposure(sock: Sock, kind: str, text: str) -> None:
    e = socktable.exposure_of(sock)
    assert (e.kind, e.text) == (kind, text)


def test_bound_to_a_device_says_so() -> None:
    assert socktable.exposure_of(tcp("0.0.0.0", ifindex=3), ifname="eth0").text == "every interface on eth0"


def test_connected_socket_exposure_names_the_peer() -> None:
    s = Sock("tcp", "ipv4", "stream", TCP_ESTABLISHED, 1, 0, "127.0.0.1", 5000, "127.0.0.1", 40000)
    assert socktable.exposure_of(s).text == "connected to 127.0.0.1:40000"


def test_unix_exposure() -> None:
    info = socktable.PathInfo(True, 42, stat.S_IFSOCK | 0o660, "root", "docker")
    path = socktable.exposure_of(unix("/run/docker.sock", (1, 42)), info)
    assert (path.kind, path.text, path.mode, path.owner, path.group) == ("path", "path mode 0660 root:docker", "0660", "root", "docker")
    assert socktable.exposure_of(unix("@bus", None)).text == "abstract (any process in this network namespace)"
    assert socktable.exposure_of(unix(None, None, TCP_CLOSE)).kind == "unnamed"
    assert socktable.exposure_of(unix("/x", (1, 42)), socktable.PathInfo(False)).text == "path removed (unreachable by name)"
    replaced = socktable.exposure_of(unix("/x", (1, 42)), socktable.PathInfo(True, 43, 0o140777, "a", "b"))
    assert replaced.text == "path now names another file (unreachable by name)"
    denied = socktable.exposure_of(unix("/x", (1, 42)), socktable.PathInfo(False, error="Permission denied"))
    assert denied.text == "path, mode unknown (Permission denied)" and denied.mode is None


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_exposure_kind_follows_the_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    kind = socktable.exposure_of(tcp(str(addr), v6only=True)).kind
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    if addr.is_unspecified:
        assert kind == "any"
    elif addr.is_loopback or (mapped is not None and mapped.is_loopback):
        assert kind == "loopback"
    else:
        assert kind == "address"


def test_default_selection_is_listening_and_bound() -> None:
    sel = socktable.Selection()
    assert socktable.wanted(tcp("0.0.0.0"), sel)
    assert not socktable.wanted(tcp("127.0.0.1", state=TCP_ESTABLISHED), sel)
    assert not socktable.wanted(tcp("127.0.0.1", state=TCP_TIME_WAIT), sel)
    assert socktable.wanted(unix("@x", None, TCP_CLOSE), sel)
    assert not socktable.wanted(unix(None, None, TCP_CLOSE), sel)
    every = socktable.Selection(all=True)
    assert socktable.wanted(tcp("127.0.0.1", state=TCP_TIME_WAIT), every)
    assert socktable.wanted(unix(None, None, TCP_CLOSE), every)
    assert not socktable.wanted(tcp("0.0.0.0", 80), socktable.Selection(port=81))


def test_process_filters() -> None:
    s = tcp("0.0.0.0")
    holders = (socktable.Holder(10, "sshd", "root", (3,)), socktable.Holder(11, "sshd", "root", (3,)))
    assert socktable.selected_by_process(s, holders, "root", socktable.Selection(pid=11))
    assert not socktable.selected_by_process(s, holders, "root", socktable.Selection(pid=12))
    assert socktable.selected_by_process(s, holders, "root", socktable.Selection(user="root"))
    assert socktable.selected_by_process(s, holders, "root", socktable.Selection(user="0"))
    assert not socktable.selected_by_process(s, holders, "root", socktable.Selection(user="nobody"))


def _row(**kw: Any) -> socktable.Row:
    holders = (socktable.Holder(10, "sshd", "root", (3,)), socktable.Holder(11, "sshd", "root", (3, 4)))
    base = dict(sock=tcp("::", 22, v6only=False), holders=holders, user="root", exposure=socktable.Exposure("any", "every interface"), guard=GuardInfo("none"))
    base.update(kw)
    return socktable.Row(**base)  # type: ignore[arg-type]


def _flat_keys(obj: Any, prefix: str = "") -> set[str]:
    if isinstance(obj, dict):
        return set().union(*(_flat_keys(v, f"{prefix}{k}.") | {f"{prefix}{k}"} for k, v in obj.items()))
    if isinstance(obj, list) and obj:
        return {k.replace(prefix, prefix[:-1] + "[].", 1) for k in _flat_keys(obj[0], prefix)}
    return set()


def test_json_fields_are_the_documented_ones() -> None:
    doc = _row().to_json()
    section = DOCS.read_text().split("## JSON fields", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_.\[\]]+)` \|", section, re.M))
    assert _flat_keys(doc) == documented
    assert doc["processes"] == [
        {"pid": 10, "name": "sshd", "user": "root", "fds": [3]},
        {"pid": 11, "name": "sshd", "user": "root", "fds": [3, 4]},
    ]
    assert (doc["netid"], doc["local"], doc["peer"], doc["state"]) == ("tcp6", "[::]:22", None, "LISTEN")


def test_process_column_lists_every_holder_up_to_a_limit() -> None:
    assert _row().process_text() == "10/sshd,11/sshd"
    many = tuple(socktable.Holder(p, "w", None, (5,)) for p in range(20, 25))
    assert _row(holders=many).process_text() == "20/w,21/w,22/w +2"
    assert _row(holders=()).process_text() == "-"


def test_plain_columns_align() -> None:
    rows = [_row(), _row(sock=unix("/run/a-much-longer-socket-path.sock", (1, 2)), guard=GuardInfo("sockgate", service="x", digest="0" * 16))]
    text = ls_cli.plain(rows, with_peer=False)
    lines = text.splitlines()
    assert lines[0].split() == ["Proto", "State", "Local", "Process", "User", "Exposure", "Guard"]
    for col in ("State", "Local", "Process", "Guard"):
        at = lines[0].index(col)
        assert all(line[at - 2 : at] == "  " and line[at] != " " for line in lines), col
    assert lines[2].endswith("sockgate x 0000000000000000")


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 100 0 0 10 0
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
"""
PROC_UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 501 /run/docker.sock
0000000000000000: 00000002 00000000 00000000 0002 01 502 @bus
0000000000000000: 00000003 00000000 00000000 0001 03 503
"""


def test_parse_proc_inet() -> None:
    listen, est = parse_proc_inet(PROC_TCP, "tcp", "ipv4", (1 << 13) - 1)
    assert (listen.local_addr, listen.local_port, listen.state, listen.uid, listen.inode) == ("127.0.0.1", 8080, TCP_LISTEN, 1000, 4242)
    assert (est.peer_addr, est.peer_port) == ("127.0.0.1", 40000)
    assert parse_proc_inet(PROC_TCP, "tcp", "ipv4", 1 << TCP_LISTEN) == [listen]
    [six] = parse_proc_inet(PROC_TCP6, "tcp", "ipv6", (1 << 13) - 1)
    assert (six.local_addr, six.local_port) == ("::1", 22)


def test_parse_proc_unix() -> None:
    docker, bus, pair = parse_proc_unix(PROC_UNIX, (1 << 13) - 1)
    assert (docker.unix_name, docker.state, docker.type, docker.inode) == ("/run/docker.sock", TCP_LISTEN, "stream", 501)
    assert (bus.unix_name, bus.unix_vfs, bus.type, bus.state) == ("@bus", None, "dgram", TCP_CLOSE)
    assert (pair.unix_name, pair.state) == (None, TCP_ESTABLISHED)
    assert socktable.exposure_of(bus).kind == "abstract"


def test_guard_without_a_visible_holder_is_unknown_never_a_guess() -> None:
    held = tcp("0.0.0.0")  # inode 1000: some process holds a descriptor for it
    time_wait = Sock("tcp", "ipv4", "stream", TCP_TIME_WAIT, 0, 0, "127.0.0.1", 5000, "127.0.0.1", 40000)
    some_denied = socktable.read_guards([(held, ()), (time_wait, ())], some_denied=True)
    assert some_denied[id(held)].text == "unknown (no permission)"
    assert some_denied[id(time_wait)].text == "unknown (no holder found)"
    all_visible = socktable.read_guards([(held, ())], some_denied=False)
    assert all_visible[id(held)].text == "unknown (no holder found)"


def test_unknown_user_name_is_a_usage_error_not_an_empty_list() -> None:
    from sockgate.errors import UsageError

    with pytest.raises(UsageError, match=r"^--user 'no-such-user-sgt': no such user"):
        socktable.list_sockets(socktable.Selection(user="no-such-user-sgt"))


def test_process_column_does_not_say_none_when_holders_are_hidden() -> None:
    hidden = _row(holders=(), guard=GuardInfo(socktable.UNKNOWN, reason=socktable.NO_PERMISSION))
    assert hidden.process_text() == "?"
    assert _row(holders=(), guard=GuardInfo(socktable.UNKNOWN, reason=socktable.NO_HOLDER)).process_text() == "-"


def test_terminal_table_keeps_addresses_and_guards_whole_on_80_columns() -> None:
    import io

    from rich.console import Console

    guard = GuardInfo(socktable.SOCKGATE, service="echod", digest="98eadde03fa46cb5")
    one = (socktable.Holder(2979, "python", "root", (3,)),)
    rows = [_row(sock=tcp("127.0.0.1", 39913), holders=one, guard=guard), _row(sock=tcp("::", 22, v6only=False), holders=one)]
    buf = io.StringIO()
    ls_cli.render_table(rows, False, Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert "127.0.0.1:39913" in text and "[::]:22" in text and "2979/python" in text
    assert "sockgate echod" in text and "98eadde03fa46cb5" in text  # may wrap between words, never inside one
    assert max(len(line) for line in text.splitlines()) <= 80


def test_proc_net_tables_absent_are_empty_unreadable_is_an_error(tmp_path: Path) -> None:
    from sockgate.errors import AdapterError
    from sockgate.linux import sockdiag

    # ICMP ping sockets come only from /proc/net/icmp{,6}: a missing table (IPv6 disabled)
    # means no such sockets; one we cannot read must not pass for an empty one.
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "icmp").write_text(PROC_TCP.replace("0A 0000", "07 0000"))
    socks = sockdiag.inventory(["icmp"], {"icmp": sockdiag.ALL_STATES}, str(tmp_path))
    assert [(s.proto, s.family, s.local_port) for s in socks] == [("icmp", "ipv4", 8080), ("icmp", "ipv4", 8080)]
    (tmp_path / "net" / "icmp6").mkdir()  # reading it fails with EISDIR
    with pytest.raises(AdapterError, match=r"^read .*/net/icmp6: Is a directory$"):
        sockdiag.inventory(["icmp"], {"icmp": sockdiag.ALL_STATES}, str(tmp_path))


def test_process_names_paths_and_markers_reach_the_terminal_escaped() -> None:
    # any local user chooses a process's name and a Unix socket's path; a filter's marker
    # names whatever its author wrote
    evil = "\x1b]0;pwned\x07\x1b[2J\nfake"
    holders = (socktable.Holder(10, evil, "root", (3,)),)
    row = _row(sock=unix(f"/tmp/{evil}", (1, 2)), holders=holders, guard=GuardInfo("modified", service=evil, digest="0" * 16))
    from io import StringIO

    from rich.console import Console

    screen = StringIO()
    ls_cli.render_table([row], with_peer=False, console=Console(file=screen, force_terminal=True, width=400))
    for text in (ls_cli.plain([row], with_peer=False), screen.getvalue().replace("\x1b[", "CSI")):
        assert "\x07" not in text and "\x1b]" not in text and "CSI2J" not in text and "\nfake" not in text
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\x0afake" in text


def test_destroy_matches_peers_by_prefix_and_mapped_ipv4() -> None:
    banned = _by_length([ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32"),
                         ipaddress.ip_network("198.51.100.7/32")])
    yes = ["203.0.113.9", "::ffff:203.0.113.9", "2001:db8:5::1", "198.51.100.7"]
    no = ["203.0.114.1", "2001:db9::1", "198.51.100.8", "::203.0.113.9", "::ffff:198.51.100.8"]
    assert [_banned(ipaddress.ip_address(a), banned) for a in yes] == [True] * 4
    assert [_banned(ipaddress.ip_address(a), banned) for a in no] == [False] * 5
