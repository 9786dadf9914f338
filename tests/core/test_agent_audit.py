"""agent/audit: who enforces a hosts.allow/hosts.deny pair on each socket of each daemon it
names — a sockgate guard, libwrap (every holder maps a trusted one; a super-server's tcpd or its
own libwrap), nothing, or unknown — the rows, the JSON, the exit status; the super-server
launches' libwrap facts; procfs.libwrap on fake /proc trees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import given, strategies as st

from sockgate.agent import audit
from sockgate.agent.audit import EXIT_NOTHING, EXIT_OK, EXIT_UNKNOWN, Enrolled, HolderWrap, Row, Seen, Verdict
from sockgate.agent.enrol import LEVELS
from sockgate.agent.model import Endpoint, GuardKind, GuardState, Observed, Selector
from sockgate.agent.superserver import Launch, WrapBy, parse_inetd, parse_socket_unit, parse_xinetd
from sockgate.linux import procfs
from sockgate.policy.hostsaccess import parse_hosts_access
from support.agentcore import holder, sock

FTP = Endpoint("tcp", 21, 21)
SSHD = Enrolled("sshd", Selector(daemon="sshd"), ("/etc/hosts.allow:1",))
FTPD = Enrolled("in.ftpd", Selector(daemon="in.ftpd", launched=(FTP,)), ("/etc/hosts.allow:2",))
OURS = GuardState("sockgate", "sshd", "0123456789abcdef", "cbpf")
LIBWRAP = "/usr/lib/x86_64-linux-gnu/libwrap.so.0"


def mapped(pid: int = 100) -> HolderWrap:
    return HolderWrap(pid, "mapped", LIBWRAP)


def absent(pid: int = 100) -> HolderWrap:
    return HolderWrap(pid, "absent")


def seen(o: Observed, *wraps: HolderWrap) -> Seen:
    return Seen(o, wraps)


SSHD_SOCK = sock(1, 22, holders=(holder("sshd", "sshd"),))
XINETD = holder("xinetd", "xinetd", pid=50)


def launch(wrap: WrapBy, why: str = "") -> Launch:
    return Launch("in.ftpd", FTP, "xinetd /etc/xinetd.conf", wrap, why)


# -- the verdict ---------------------------------------------------------------------------------------


def test_a_sockgate_guard_is_named_with_service_digest_and_backend() -> None:
    v = audit.verdict(seen(sock(1, 22, guard=OURS, holders=SSHD_SOCK.holders), absent()), "name", None)
    assert v == Verdict("sockgate", "sockgate guard of service sshd, digest 0123456789abcdef, cbpf")


def test_a_daemon_mapping_libwrap_is_enforced_by_libwrap() -> None:
    assert audit.verdict(seen(SSHD_SOCK, mapped()), "name", None) == Verdict("libwrap", f"maps {LIBWRAP}")


def test_nothing_when_no_filter_and_no_libwrap() -> None:
    v = audit.verdict(seen(SSHD_SOCK, absent()), "name", None)
    assert v == Verdict("none", "pid 100 (sshd) maps no libwrap; no filter on the socket")


def test_one_holder_without_libwrap_is_enough_for_nothing() -> None:
    two = sock(1, 22, holders=(holder("sshd", "sshd", pid=100), holder("sshd", "sshd", pid=101)))
    assert audit.verdict(seen(two, mapped(100), absent(101)), "name", None).enforcement == "none"
    assert audit.verdict(seen(two, mapped(100), mapped(101)), "name", None).enforcement == "libwrap"


@pytest.mark.parametrize("wrap", [HolderWrap(100, "unknown", why="it exited"),
                                  HolderWrap(100, "untrusted", "/tmp/libwrap.so.0", "/tmp/libwrap.so.0 is not root's")])
def test_a_map_that_cannot_be_trusted_is_unknown_never_libwrap(wrap: HolderWrap) -> None:
    v = audit.verdict(seen(SSHD_SOCK, wrap), "name", None)
    assert v.enforcement == "unknown" and (wrap.why or "") in v.detail


@pytest.mark.parametrize("state", ["modified", "foreign", "ebpf"])
def test_a_filter_sockgate_cannot_vouch_for_is_unknown(state: GuardKind) -> None:
    o = sock(1, 22, guard=GuardState(state, "sshd"), holders=SSHD_SOCK.holders)
    assert audit.verdict(seen(o, absent()), "name", None).enforcement == "unknown"
    assert audit.verdict(seen(o, mapped()), "name", None).enforcement == "libwrap"


def test_an_unreadable_filter_is_unknown_unless_libwrap_enforces() -> None:
    o = sock(1, 22, holders=SSHD_SOCK.holders, unreadable="pidfd_getfd: Operation not permitted")
    v = audit.verdict(seen(o, absent()), "name", None)
    assert v.enforcement == "unknown" and "Operation not permitted" in v.detail


def test_a_super_servers_listener_tcpd_in_front_is_libwrap_whatever_the_super_server_maps() -> None:
    o = sock(1, 21, holders=(XINETD,))
    v = audit.verdict(seen(o, absent(50)), "superserver", launch("tcpd"))
    assert v == Verdict("libwrap", "libwrap, through tcpd (xinetd /etc/xinetd.conf)")


def test_a_super_server_calling_libwrap_itself_counts_only_when_it_maps_it() -> None:
    o = sock(1, 21, holders=(XINETD,))
    assert audit.verdict(seen(o, mapped(50)), "superserver", launch("superserver")).detail == (
        f"libwrap, called by the super-server: maps {LIBWRAP} (xinetd /etc/xinetd.conf)")
    assert audit.verdict(seen(o, absent(50)), "superserver", launch("superserver")).enforcement == "none"


def test_a_super_server_that_never_calls_libwrap_is_nothing_and_says_why() -> None:
    o = sock(1, 21, holders=(XINETD,))
    v = audit.verdict(seen(o, mapped(50)), "superserver", launch("never", "flags = NOLIBWRAP: xinetd calls no libwrap for it"))
    assert v == Verdict("none", "no libwrap: flags = NOLIBWRAP: xinetd calls no libwrap for it (xinetd /etc/xinetd.conf);"
                                " no filter on the socket")


# -- the rows ------------------------------------------------------------------------------------------


def test_rows_per_daemon_in_order_with_no_listener_rows_impostors_and_super_served_apart() -> None:
    fake = sock(7, 2222, holders=(holder("sshd", "sshd", pid=300, euid=1000),))
    other = sock(8, 2296, holders=(XINETD,))
    rows = audit.audit([SSHD, FTPD], [seen(SSHD_SOCK, mapped())], [launch("tcpd")], [("sshd", fake)], [other])
    assert [(r.kind, r.daemon, r.via, r.verdict.enforcement if r.verdict else None) for r in rows] == [
        ("socket", "sshd", "name", "libwrap"),
        ("no-listener", "in.ftpd", None, None),
        ("impostor", "sshd", None, None),
        ("superserved", None, None, None),
    ]
    assert rows[1].note == "not running / no listener seen"
    assert audit.exit_status(rows) == EXIT_OK


def test_a_super_servers_listener_is_judged_by_its_launch() -> None:
    o = sock(1, 21, holders=(XINETD,))
    rows = audit.audit([SSHD, FTPD], [seen(o, absent(50))], [launch("never", "tcpd is not its server")])
    assert rows[1].kind == "socket" and rows[1].via == "superserver"
    assert rows[1].verdict == Verdict("none", "no libwrap: tcpd is not its server (xinetd /etc/xinetd.conf); no filter on the socket")
    assert audit.exit_status(rows) == EXIT_NOTHING


def test_exit_status_nothing_wins_over_unknown() -> None:
    def row(e: audit.Enforcement) -> Row:
        return Row("socket", "sshd", (), SSHD_SOCK, "name", Verdict(e, ""))

    assert audit.exit_status([row("libwrap"), row("sockgate")]) == EXIT_OK
    assert audit.exit_status([row("libwrap"), row("unknown")]) == EXIT_UNKNOWN
    assert audit.exit_status([row("unknown"), row("none")]) == EXIT_NOTHING
    assert audit.exit_status([Row("no-listener", "sshd", ())]) == EXIT_OK


def test_named_at_is_every_rule_naming_the_daemon_by_libwraps_comparison_then_the_map() -> None:
    policy = parse_hosts_access("/h.allow", "/h.deny", read={"/h.allow": "sshd: 10.0.0.0/8\nALL: 127.0.0.1\n"
                                                             "in.ftpd, SSHD: 192.0.2.1\n", "/h.deny": "ALL: ALL\n"}.__getitem__)
    maps = {"dropbear": (Endpoint("tcp", 2222, 2222),), "sshd": (Endpoint("tcp", 2200, 2200),)}
    got = audit.enrolled(policy, ["sshd", "in.ftpd"], maps, {})
    assert [(e.name, e.named_at) for e in got] == [("sshd", ("/h.allow:1", "/h.allow:3", "--map")),
                                                   ("in.ftpd", ("/h.allow:3",)), ("dropbear", ("--map",))]
    assert got[0].selector == Selector(daemon="sshd", mapped=(Endpoint("tcp", 2200, 2200),))


def test_json_rows_carry_the_stable_fields() -> None:
    rows = audit.audit([SSHD, FTPD], [seen(SSHD_SOCK, absent())], [])
    doc = audit.to_json(rows[0])
    assert doc["kind"] == "socket" and doc["daemon"] == "sshd" and doc["enforcement"] == "none"
    assert doc["named_at"] == ["/etc/hosts.allow:1"] and doc["local"] == "0.0.0.0:22" and doc["via"] == "name"
    assert doc["holders"] == [{"pid": 100, "comm": "sshd", "argv0": "sshd", "uid": 0, "exe": None, "libwrap": "absent",
                               "libwrap_path": None}]
    assert doc["guard"] == {"status": "none", "service": None, "digest": None, "backend": None}
    assert audit.to_json(rows[1])["enforcement"] is None and audit.to_json(rows[1])["kind"] == "no-listener"
    assert audit.cells(rows[0])[:6] == ["sshd", "/etc/hosts.allow:1", "tcp", "0.0.0.0:22", "100/sshd", "NOTHING"]


# -- properties ----------------------------------------------------------------------------------------

_wrap = st.builds(HolderWrap, st.sampled_from([100, 101, 102]), st.sampled_from(["mapped", "absent", "untrusted", "unknown"]),
                  st.one_of(st.none(), st.just(LIBWRAP)), st.one_of(st.none(), st.text(max_size=5)))
_guard = st.builds(GuardState, st.sampled_from(get_args(GuardKind)), st.one_of(st.none(), st.just("sshd")))
_launch = st.one_of(st.none(), st.builds(launch, st.sampled_from(get_args(WrapBy)), st.text(max_size=5)))


@given(_guard, st.one_of(st.none(), st.just("EPERM")), st.lists(_wrap, max_size=3), st.sampled_from(LEVELS), _launch)
def test_never_claims_more_than_it_saw(guard: GuardState, unreadable: str | None, wraps: list[HolderWrap],
                                       via: audit.Level, la: Launch | None) -> None:
    o = sock(1, 21, guard=guard, holders=(XINETD,), unreadable=unreadable)
    v = audit.verdict(Seen(o, tuple(wraps)), via, la)
    readable_ours = unreadable is None and guard.state == "sockgate"
    assert (v.enforcement == "sockgate") == readable_ours
    tcpd = via == "superserver" and la is not None and la.wrap == "tcpd"
    never = via == "superserver" and la is not None and la.wrap == "never"
    all_mapped = bool(wraps) and all(w.state == "mapped" for w in wraps)
    if v.enforcement == "libwrap":
        assert not readable_ours and (tcpd or (all_mapped and not never))
    if v.enforcement == "none":  # seen to be nothing: no filter read, and a holder (or the launch) without libwrap
        assert unreadable is None and guard.state == "none"
        assert never or any(w.state == "absent" for w in wraps)
    rows = audit.audit([FTPD], [Seen(o, tuple(wraps))], [la] if la else [])
    assert audit.exit_status(rows) in (EXIT_OK, EXIT_NOTHING, EXIT_UNKNOWN)


# -- the super-servers' launches: who calls libwrap -----------------------------------------------------


def _xinetd(attrs: str) -> Launch:
    (got,) = parse_xinetd(f"service ftp\n{{\n port = 21\n socket_type = stream\n protocol = tcp\n{attrs}}}\n", "/x", {})
    return got


def test_xinetd_calls_libwrap_itself_unless_told_not_to() -> None:
    assert _xinetd(" wait = no\n server = /usr/sbin/in.ftpd\n").wrap == "superserver"
    assert _xinetd(" server = /usr/sbin/in.ftpd\n flags = NOLIBWRAP\n").wrap == "never"
    got = _xinetd(" server = /usr/sbin/tcpd\n server_args = /usr/sbin/in.ftpd -l\n flags = NAMEINARGS NOLIBWRAP\n")
    assert (got.daemon, got.wrap) == ("in.ftpd", "tcpd")
    wait = _xinetd(" wait = yes\n server = /usr/sbin/in.ftpd\n")
    assert wait.wrap == "never" and "accepts connections itself" in wait.why


def test_inetd_wraps_only_through_tcpd_and_systemd_never() -> None:
    text = ("ftp stream tcp nowait root /usr/sbin/tcpd /usr/sbin/in.ftpd -l\n"
            "telnet stream tcp nowait root /usr/sbin/in.telnetd in.telnetd\n"
            "21000 stream tcp wait root /usr/sbin/tcpd in.waitd\n")
    got = parse_inetd(text, "/etc/inetd.conf", {"ftp": (), "telnet": ()})
    assert [(x.daemon, x.wrap) for x in got] == [("in.waitd", "never")]
    got = parse_inetd(text.replace("ftp ", "21 ").replace("telnet ", "23 "), "/etc/inetd.conf", {})
    assert [(x.daemon, x.wrap) for x in got] == [("in.ftpd", "tcpd"), ("in.telnetd", "never"), ("in.waitd", "never")]
    (unit,) = parse_socket_unit("ftp.socket", "[Socket]\nListenStream=21\n", "/u/ftp.socket",
                                lambda n: "[Service]\nExecStart=/usr/sbin/in.ftpd\n")
    assert unit.wrap == "never"


# -- procfs.libwrap ------------------------------------------------------------------------------------


def _proc(tmp_path: Path, maps: str) -> str:
    (tmp_path / "9").mkdir(exist_ok=True)
    (tmp_path / "9" / "maps").write_text(maps)
    return str(tmp_path)


def _line(path: str, inode: int) -> str:
    return f"7f0000000000-7f0000001000 r-xp 00000000 08:01 {inode}                    {path}\n"


def test_a_mapped_libwrap_is_checked_on_the_inode_mapped(tmp_path: Path) -> None:
    lib = tmp_path / "lib" / "libwrap.so.0"
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF")
    os.chmod(lib, 0o644)
    ino = lib.stat().st_ino
    head = "55d0-55d1 r--p 00000000 00:00 0 [heap]\n" + _line("/usr/lib/libc.so.6", 1)
    got = procfs.libwrap(9, _proc(tmp_path, head + _line(str(lib), ino)))
    trusted = lib.stat().st_uid == 0
    assert got.state == ("mapped" if trusted else "untrusted") and got.path == str(lib)
    assert procfs.libwrap(9, _proc(tmp_path, _line(str(lib), ino + 1))).state == "untrusted"  # not the file mapped
    os.chmod(lib, 0o666)
    got = procfs.libwrap(9, _proc(tmp_path, _line(str(lib), ino)))
    assert got.state == "untrusted" and "others may write it" in (got.why or "") or not trusted
    assert procfs.libwrap(9, _proc(tmp_path, _line(f"{lib} (deleted)", ino))).state == "untrusted"


def test_no_libwrap_an_exited_process_and_an_endless_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert procfs.libwrap(9, _proc(tmp_path, _line("/usr/lib/libc.so.6", 1))) == procfs.Libwrap("absent")
    assert procfs.libwrap(9, _proc(tmp_path, "")).state == "unknown"  # an exited process's map reads empty
    assert procfs.libwrap(10, str(tmp_path)).state == "unknown"  # no such process
    monkeypatch.setattr(procfs, "MAPS_LIMIT", 200)
    got = procfs.libwrap(9, _proc(tmp_path, _line("/usr/lib/libc.so.6", 1) * 5 + _line(LIBWRAP, 1)))
    assert got.state == "unknown" and "longer than" in (got.why or "")


def test_a_name_like_libwrap_elsewhere_in_the_line_is_not_libwrap(tmp_path: Path) -> None:
    assert procfs.libwrap(9, _proc(tmp_path, _line("/home/u/libwrap.so.0.d/libc.so", 1))).state == "absent"
    assert procfs.libwrap(9, _proc(tmp_path, "7f-80 r-xp 0 08:01 1\n")).state == "absent"


# -- the command line: errors are lines, never tracebacks ------------------------------------------------


def test_an_error_in_the_files_is_file_line_col_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sockgate.cli.main import main

    allow = tmp_path / "hosts.allow"
    allow.write_text("sshd: 10.0.0.0/8 EXCEPT\n")
    assert main(["ls", "--hosts-allow", str(allow), "--hosts-deny", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert f"{allow}:1:18: expected a client pattern after EXCEPT, found nothing" in err
    assert "does not exist; read as an empty table" in err and "Traceback" not in err


@pytest.mark.parametrize("extra", [["--port", "22"], ["-t"], ["--unguarded"]])
def test_socket_options_do_not_combine_with_the_audit(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from sockgate.cli.main import main

    assert main(["ls", "--hosts-allow", "/nonexistent", *extra]) == 2
    assert "does not combine with the audit" in capsys.readouterr().err


def test_a_bad_map_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from sockgate.cli.main import main

    assert main(["ls", "--map", "sshd=sctp/22"]) == 2
    assert "expected DAEMON=PROTO/PORT" in capsys.readouterr().err


def test_a_maps_range_names_its_map_files_entry() -> None:
    assert procfs._range_name(b"00400000-00452000") == "400000-452000"
    assert procfs._range_name(b"7fba2ea7b000-7fba2ea7e000") == "7fba2ea7b000-7fba2ea7e000"


_map_line = st.one_of(
    st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")),
    st.builds(lambda a, path: f"{a:x}-{a + 4096:x} r-xp 00000000 08:01 {a % 99} {path}".encode("utf-8", "surrogateescape"),
              st.integers(0, 2**48), st.sampled_from(["", "libwrap.so.0", "/x/libwrap.so", "/x/libwrap.so.0 (deleted)",
                                                     "a b/libwrap.so.0", "[vdso]", "/\udcff/libwrap.so.0"])))


@given(st.lists(_map_line, max_size=8))
def test_any_map_a_process_shows_is_read_without_raising(lines: list[bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.mkdir(f"{d}/9")
        with open(f"{d}/9/maps", "wb") as f:
            f.write(b"\n".join(lines) + (b"\n" if lines else b""))
        got = procfs.libwrap(9, d)
    assert got.state in ("absent", "untrusted", "unknown")  # nothing here is a root-owned libwrap


def test_the_terminal_table_colours_enforced_by_and_escapes_names() -> None:
    from rich.console import Console

    from sockgate.cli.ls import render_audit

    rows = audit.audit([SSHD, FTPD], [seen(sock(1, 22, holders=(holder("sshd", "[red]sshd"),)), absent())], [])
    console = Console(record=True, width=200, force_terminal=True)
    render_audit([audit.cells(r) for r in rows], list(audit.HEADERS), console)
    text = console.export_text(clear=False)
    assert "NOTHING" in text and "100/[red]sshd" in text and "not running / no listener seen" in text
    assert "\x1b[1;31mNOTHING" in console.export_text(styles=True)


def test_a_super_servers_listener_for_an_unsettled_unit_says_why() -> None:
    o = sock(8, 2323, holders=(holder("systemd", "systemd", pid=1, euid=0),))
    why = "systemd unit demo.socket: drop-in /etc/x.conf unreadable: Permission denied"
    unknown = Launch("", Endpoint("tcp", 2323, 2323), "systemd demo.socket", "never", why)
    (row,) = [r for r in audit.audit([SSHD], [], [unknown], [], [o]) if r.kind == "superserved"]
    assert row.note == f"{audit.SUPERSERVED}; not settled: {why}"
