"""agent/systemdunits + agent/unitsyntax: systemd's units read as systemd reads them (systemd 252:
``conf_files_list`` in src/basic/conf-files.c, ``unit_file_find_dropin_paths`` in
src/shared/dropin.c, ``parse_boolean`` in src/basic/parse-util.c, ``systemd-analyze unit-paths``).
Each test asserts what systemd does (checked with ``systemd-analyze verify``); whatever cannot be
settled makes the unit's launches unknown, with the reason, never a guessed daemon."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockgate.agent.files import WatchingReader
from sockgate.agent.launchfiles import read_launches
from sockgate.agent.superserver import SYSTEMD_UNITS, launches_for, unknown_why
from sockgate.agent.unitsyntax import (UnitName, Unsettled, dropin_names, exec_argv0, parse_boolean, parse_config, read_lines,
                                       unit_name)
from sockgate.linux.inotify import Change


def _tree(files: dict[Path, str | None]) -> None:
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            os.symlink("/dev/null", path)  # systemd's mask
        else:
            path.write_text(content)


def _daemons(tmp_path: Path, reader: WatchingReader | None = None) -> set[str]:
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    launches = read_launches(reader or WatchingReader(), None, None, (str(etc), str(lib)),
                             services_file=str(tmp_path / "none"))
    return {x.daemon for x in launches}


BASE = {
    Path("lib/demo.socket"): "[Socket]\nListenStream=2323\n",
    Path("lib/demo.service"): "[Service]\nExecStart=/usr/sbin/in.telnetd\n",
    Path("lib/demo@.service"): "[Service]\nExecStart=/usr/sbin/in.telnetd-accept\n",
    Path("lib/other.service"): "[Service]\nExecStart=/usr/sbin/sshd -i\n",
}


def test_a_drop_in_masked_in_etc_is_not_applied(tmp_path: Path) -> None:
    """systemd.unit(5): a drop-in of the same name in /etc overrides /usr/lib's; a symlink to
    /dev/null masks it."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "lib/demo.socket.d/10-vendor.conf": "[Socket]\nService=other.service\n",
        tmp_path / "etc/demo.socket.d/10-vendor.conf": None,
    })
    assert _daemons(tmp_path) == {"in.telnetd"}


def test_a_masked_unit_in_etc_is_not_read_from_lib(tmp_path: Path) -> None:
    """``/etc/.../demo.service -> /dev/null`` masks the service: systemd never runs
    /usr/lib's ExecStart."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {tmp_path / "etc/demo.service": None})
    assert "in.telnetd" not in _daemons(tmp_path)


def test_a_hidden_drop_in_is_ignored(tmp_path: Path) -> None:
    """conf_files_list skips hidden names (hidden_or_backup_file): ``.x.conf`` is never applied."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "etc/demo.socket.d/.swap.conf": "[Socket]\nService=other.service\n",
    })
    assert _daemons(tmp_path) == {"in.telnetd"}


def test_accept_takes_every_boolean_systemd_takes(tmp_path: Path) -> None:
    """parse_boolean: 1 yes y true t on. ``Accept=y`` starts demo@.service."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "etc/demo.socket.d/accept.conf": "[Socket]\nAccept=y\n",
    })
    assert _daemons(tmp_path) == {"in.telnetd-accept"}


def test_a_drop_in_that_cannot_be_read_is_not_silently_skipped(tmp_path: Path) -> None:
    """The units have a read budget of their own: the policy's files spending theirs (here:
    nearly all) cannot drop a drop-in systemd applies. Fail closed: never the launch without
    the override."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "etc/demo.socket.d/override.conf": "[Socket]\nService=other.service\n" + "#" * 4096 + "\n",
    })
    reader = WatchingReader()
    reader.left = 200  # what the policy's files left of the budget: the units fit, the drop-in not
    assert "in.telnetd" not in _daemons(tmp_path, reader)


def test_the_unit_directories_are_systemds() -> None:
    """systemd-analyze unit-paths (systemd 252, the system manager): units and drop-ins in
    /usr/local/lib/systemd/system, the .control, transient, generator and .attached directories
    take part too (``systemctl set-property``, ``systemd-run --socket-property``, generators,
    locally installed units that override /usr/lib's)."""
    for d in ("/etc/systemd/system.control", "/run/systemd/system.control", "/run/systemd/transient",
              "/run/systemd/generator.early", "/run/systemd/generator", "/usr/local/lib/systemd/system",
              "/run/systemd/generator.late"):
        assert d in SYSTEMD_UNITS
    assert SYSTEMD_UNITS.index("/usr/local/lib/systemd/system") < SYSTEMD_UNITS.index("/usr/lib/systemd/system")


def test_a_comment_ending_in_a_backslash_continues_nothing(tmp_path: Path) -> None:
    """systemd's parser ignores a comment line whole, backslash or not (checked with
    ``systemd-analyze verify`` 252: the ExecStart= after ``# note \\`` is read)."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "etc/demo.service.d/override.conf":
            "[Service]\n# replaced on 2026-12-01 \\\nExecStart=\nExecStart=/usr/sbin/sshd -i\n",
    })
    assert _daemons(tmp_path) == {"sshd"}
    (tmp_path / "etc/demo.service.d/override.conf").unlink()
    _tree({tmp_path / "etc/demo.socket.d/svc.conf": "[Socket]\n# moved \\\nService=other.service\n"})
    assert _daemons(tmp_path) == {"sshd"}


def test_the_type_directory_comes_after_every_named_one(tmp_path: Path) -> None:
    """systemd (dropin.c: the "<type>.d" top-level drop-ins are added last, after every unit
    directory's NAME.d, template and prefix directories; checked with ``systemd-analyze verify``
    252): /usr/lib's ``demo.service.d/50-x.conf`` wins over /etc's ``service.d/50-x.conf``."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "lib/demo.service.d/50-x.conf": "[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -i\n",
        tmp_path / "etc/service.d/50-x.conf": "[Service]\nExecStart=\nExecStart=/usr/sbin/in.rlogind\n",
    })
    assert _daemons(tmp_path) == {"sshd"}


def test_an_alias_drop_in_applies_to_the_unit(tmp_path: Path) -> None:
    """systemd.unit(5): "drop-ins for the aliased name and all aliases are loaded" (checked with
    ``systemd-analyze verify`` 252: a drop-in in ``demo2.socket.d`` of the alias
    ``demo2.socket -> demo.socket`` applies to demo.socket)."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "etc/demo2.socket.d/svc.conf": "[Socket]\nService=other.service\n",
    })
    os.symlink(tmp_path / "lib/demo.socket", tmp_path / "etc/demo2.socket")
    assert _daemons(tmp_path) == {"sshd"}


def test_lines_end_where_systemds_end(tmp_path: Path) -> None:
    """systemd's read_line ends a line at LF, CR, CRLF and NUL only, and continues a line whose
    backslash is followed by CRLF (checked with ``systemd-analyze verify`` 252: neither file
    below sets Service= but the NUL one)."""
    _tree({tmp_path / p: t for p, t in BASE.items()})
    drop = tmp_path / "etc/demo.socket.d/x.conf"
    drop.parent.mkdir(parents=True)
    drop.write_bytes(b"[Socket]\nX-Note=1\x1cService=other.service\n")
    assert _daemons(tmp_path) == {"in.telnetd"}
    drop.write_bytes(b"[Socket]\r\nX-Note=1 \\\r\nService=other.service\r\n")
    assert _daemons(tmp_path) == {"in.telnetd"}
    drop.write_bytes(b"[Socket]\nX-Note=1\x0cService=other.service\n")  # \x0c: no line end for systemd
    assert _daemons(tmp_path) == {"in.telnetd"}
    drop.write_bytes(b"[Socket]\nX-Note=1\0Service=other.service\n")  # NUL: a line end for systemd
    assert _daemons(tmp_path) == {"sshd"}


def test_a_quoted_exec_start_names_its_daemon(tmp_path: Path) -> None:
    """systemd unquotes ExecStart's words (``systemd-analyze verify`` 252: ExecStart="/x/q" -h
    runs /x/q): the daemon is ``in.telnetd``, not ``in.telnetd"``."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "etc/demo.service.d/q.conf": '[Service]\nExecStart=\nExecStart="/usr/sbin/in.telnetd" -h\n',
    })
    assert _daemons(tmp_path) == {"in.telnetd"}


def test_a_unit_directory_created_later_is_noticed(tmp_path: Path) -> None:
    """A unit directory missing at the load is awaited: its creation (or of the directory
    towards it) reloads."""
    _tree({tmp_path / p: t for p, t in BASE.items()})
    reader = WatchingReader()
    run = tmp_path / "run" / "systemd" / "system"
    read_launches(reader, None, None, (str(tmp_path / "etc"), str(run), str(tmp_path / "lib")),
                  services_file=str(tmp_path / "none"))
    watch = reader.watch_list()
    assert watch.concerns(Change(str(run.parent), "system", 0x100)) or watch.concerns(Change(str(run.parent.parent), "systemd", 0x100))


def test_an_enabled_template_socket_instance_is_read(tmp_path: Path) -> None:
    """``systemctl enable demo@2424.socket`` links the template into sockets.target.wants;
    systemd listens on %i = 2424 and starts demo@2424.service (the template demo@.service)."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "lib/demo@.socket": "[Socket]\nListenStream=%i\n",
    })
    wants = tmp_path / "etc/sockets.target.wants"
    wants.mkdir(parents=True)
    os.symlink(tmp_path / "lib/demo@.socket", wants / "demo@2424.socket")
    launches = read_launches(WatchingReader(), None, None, (str(tmp_path / "etc"), str(tmp_path / "lib")),
                             services_file=str(tmp_path / "none"))
    assert {(x.daemon, x.endpoint.first) for x in launches} >= {("in.telnetd-accept", 2424)}


def test_an_accepted_connections_instance_takes_the_template_prefix_drop_ins(tmp_path: Path) -> None:
    """With Accept=yes systemd runs instances (ssh-x@N.service), and an instance's prefix
    drop-ins include ``ssh-@.service.d`` (dropin.c: the prefix keeps the instance, then its
    template; ``systemd-analyze verify ssh-x@1.service`` 252 applies lib/ssh-@.service.d/b.conf)."""
    _tree({
        tmp_path / "lib/ssh-x.socket": "[Socket]\nListenStream=2525\nAccept=yes\n",
        tmp_path / "lib/ssh-x@.service": "[Service]\nExecStart=/usr/sbin/in.base\nStandardInput=socket\n",
        tmp_path / "lib/ssh-@.service.d/b.conf": "[Service]\nExecStart=\nExecStart=/usr/sbin/sshd -i\n",
    })
    assert _daemons(tmp_path) == {"sshd"}


def _launches(tmp_path: Path, reader: WatchingReader | None = None) -> list[tuple[str, int, str]]:
    launches = read_launches(reader or WatchingReader(), None, None, (str(tmp_path / "etc"), str(tmp_path / "lib")),
                             services_file=str(tmp_path / "none"))
    return sorted((x.daemon, x.endpoint.first, x.why) for x in launches)


def test_an_unreadable_drop_in_makes_the_launches_unknown_and_says_why(tmp_path: Path) -> None:
    """A drop-in that exists but cannot be read (here a FIFO: systemd would block on it) leaves
    the unit unsettled: the port's launch names no daemon and says which file, never the
    daemon without it; ``unknown_why`` is what status shows at the listener."""
    _tree({tmp_path / p: t for p, t in BASE.items()})
    (tmp_path / "etc/demo.socket.d").mkdir(parents=True)
    os.mkfifo(tmp_path / "etc/demo.socket.d/svc.conf")
    got = _launches(tmp_path)  # a socket's drop-in may set any port: all of them are unsettled
    assert [(d, p) for d, p, _ in got] == [("", 1), ("", 1)]
    assert {why for _, _, why in got} == {
        f"systemd unit demo.socket: drop-in {tmp_path}/etc/demo.socket.d/svc.conf unreadable: "
        "a FIFO, not a regular file; only regular files are read"}
    os.unlink(tmp_path / "etc/demo.socket.d/svc.conf")
    (tmp_path / "etc/demo.service.d").mkdir(parents=True)
    os.mkfifo(tmp_path / "etc/demo.service.d/svc.conf")  # the service's: the socket's ports are known
    launches = read_launches(WatchingReader(), None, None, (str(tmp_path / "etc"), str(tmp_path / "lib")),
                             services_file=str(tmp_path / "none"))
    assert "demo.service.d/svc.conf unreadable" in unknown_why(launches, "tcp", 2323)
    assert unknown_why(launches, "tcp", 22) == ""
    assert launches_for(launches, ["in.telnetd", "sshd"]) == {}


def test_a_dangling_drop_in_link_hides_the_lower_one_as_systemd_does(tmp_path: Path) -> None:
    """systemd takes a drop-in name from the first directory having it and skips it when it
    cannot be opened for ENOENT (checked with systemd-analyze verify 252)."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "lib/demo.socket.d/svc.conf": "[Socket]\nService=other.service\n"})
    (tmp_path / "etc/demo.socket.d").mkdir(parents=True)
    os.symlink("/nonexistent/svc.conf", tmp_path / "etc/demo.socket.d/svc.conf")
    assert _launches(tmp_path) == [("in.telnetd", 2323, "systemd calls no libwrap")]


def test_a_masked_socket_launches_nothing_and_an_empty_unit_masks_too(tmp_path: Path) -> None:
    _tree({tmp_path / p: t for p, t in BASE.items()} | {tmp_path / "etc/demo.socket": None})
    assert _launches(tmp_path) == []
    (tmp_path / "etc/demo.socket").unlink()
    (tmp_path / "etc/demo.socket").write_text("")
    assert _launches(tmp_path) == []


def test_what_systemd_would_refuse_or_is_not_read_here_is_unknown(tmp_path: Path) -> None:
    """A boolean systemd does not take, a specifier, an empty Service=, Service= with Accept=yes,
    two ExecStart= commands: unknown launches with the reason, never a default."""
    for conf, reason in [("[Socket]\nAccept=maybe\n", "not a boolean"),
                         ("[Socket]\nService=%p.service\n", "Service="),
                         ("[Socket]\nService=\n", "Service="),
                         ("[Socket]\nAccept=yes\nService=other.service\n", "Accept=yes"),
                         ("[Socket]\nListenStream=\nListenStream=%n\n", "specifier")]:
        _tree({tmp_path / p: t for p, t in BASE.items()} | {tmp_path / "etc/demo.socket.d/x.conf": conf})
        got = _launches(tmp_path)
        assert got and all(d == "" and reason in why for d, _, why in got), (conf, got)
    (tmp_path / "etc/demo.socket.d/x.conf").unlink()
    _tree({tmp_path / "etc/demo.service.d/x.conf": "[Service]\nExecStart=/usr/sbin/other\n"})
    assert [(d, p) for d, p, _ in _launches(tmp_path)] == [("", 2323)]


def test_a_template_instance_expands_only_the_instance(tmp_path: Path) -> None:
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "lib/demo@.socket": "[Socket]\nListenStream=127.0.0.1:%i\n",
        tmp_path / "lib/odd@.socket": "[Socket]\nListenStream=%n\n"})
    wants = tmp_path / "etc/sockets.target.wants"
    wants.mkdir(parents=True)
    os.symlink(tmp_path / "lib/demo@.socket", wants / "demo@2424.socket")
    os.symlink(tmp_path / "lib/odd@.socket", wants / "odd@1.socket")
    os.symlink(tmp_path / "lib/gone@.socket", wants / "gone@1.socket")  # a stale link: no unit, no launch
    got = _launches(tmp_path)
    assert [(d, p) for d, p, _ in got if d] == [("in.telnetd", 2323), ("in.telnetd-accept", 2424)]
    assert {why for d, _, why in got if not d} == {"systemd unit odd@1.socket: the specifier %n in '%n'"}


def test_the_units_have_a_read_budget_of_their_own(tmp_path: Path) -> None:
    _tree({tmp_path / p: t for p, t in BASE.items()})
    reader = WatchingReader()
    reader.left = 0
    assert [d for d, _, _ in _launches(tmp_path, reader)] == ["in.telnetd"]
    assert str(tmp_path / "lib/demo.socket") in reader.asked  # still watched through the policy's reader


def test_lines_comments_and_continuations_as_config_parse() -> None:
    assert read_lines("a\nb\r\nc\rd\0e\n\rf\n\ng\0\nh") == ["a", "b", "c", "d", "e", "f", "", "g", "", "h"]
    text = "[Socket]\n# c \\\nA=1 \\\n  ; inside \\\n  B\nC=2\\\\\n\nD=3 \\\n\nE=\\"
    assert parse_config(text, "u") == [("Socket", "A", "1    B"), ("Socket", "C", "2\\\\"), ("Socket", "D", "3"),
                                       ("Socket", "E", "")]
    assert parse_config("A=1\n[X-Any]\nB=2\n", "u") == [("X-Any", "B", "2")]  # nothing before a section
    for bad in ("[Socket\n", "[So\\cket]\n", "[Socket]\nA=\udcff\n", "[Socket]\nA=" + "x" * (1 << 20) + "\n"):
        with pytest.raises(Unsettled):
            parse_config(bad, "u")


def test_argv0_is_unquoted_and_anything_unsettled_refused() -> None:
    assert exec_argv0('"/usr/sbin/in.telnetd" -h') == "in.telnetd"
    assert exec_argv0("-@/usr/sbin/tcpd in.ftpd -l") == "in.ftpd"
    assert exec_argv0("+/usr/sbin/sshd -i") == exec_argv0("!!/usr/sbin/sshd") == "sshd"
    assert exec_argv0("/usr/sbin/a'b c'") == "ab c" and exec_argv0("/usr/sbin/in\\x2etelnetd") == "in.telnetd"
    assert exec_argv0("sshd -i") == "sshd"
    for bad in ("/usr/sbin/%N", "@/bin/tcpd $NAME", "'/usr/sbin/x", "/usr/sbin/x\\q", "usr/sbin/x", "/usr/sbin/",
                "", " ; /bin/x", "@/bin/tcpd", "/bin/\\x01x", "!!+/usr/sbin/sshd"):  # "+" after "!!": the path
        with pytest.raises(Unsettled):
            exec_argv0(bad)


def test_booleans_and_names_as_systemd() -> None:
    assert all(parse_boolean(v) for v in ("1", "yes", "Y", "true", "T", "on"))
    assert not any(parse_boolean(v) for v in ("0", "NO", "n", "false", "f", "Off"))
    for bad in ("", "2", "yess", "enable"):
        with pytest.raises(Unsettled):
            parse_boolean(bad)
    assert str(unit_name("a-b@x@y.service")) == "a-b@x@y.service" and unit_name("a b.socket") is None
    assert [str(n) for n in dropin_names(UnitName("a-b", "x", "service"))] == [
        "a-b@x.service", "a-b@.service", "a-@.service", "a-@x.service", "a-@.service"]


def test_a_link_out_of_the_unit_directories_is_a_linked_unit_of_its_own_name(tmp_path: Path) -> None:
    """``systemctl link``: a link to a file outside the unit directories is loaded under the
    link's name with that name's drop-ins, whatever the file is called (checked with
    systemd-analyze verify 252); the unit named like the file is another unit."""
    _tree({tmp_path / p: t for p, t in BASE.items()} | {
        tmp_path / "opt/demo.socket": "[Socket]\nListenStream=9\n",
        tmp_path / "etc/demo2.socket.d/s.conf": "[Socket]\nService=other.service\n"})
    os.symlink(tmp_path / "opt/demo.socket", tmp_path / "etc/demo2.socket")
    assert [(d, p) for d, p, _ in _launches(tmp_path)] == [("in.telnetd", 2323), ("sshd", 9)]
