"""``sockgate refused`` over maps created and pinned, as the loader pins them, under a private
bpffs: counters sorted by count with wall-clock times, active bans with origin and expiry,
``--service``, ``--json``; hostile pins (a program or a map of another layout where the
counters should be, a directory name with a newline) are reported escaped and skipped; nothing
pinned, or not permitted, is one line and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest

from sockgate.cli.main import main
from sockgate.ebpf import layout
from sockgate.ebpf.insn import ProgType, encode, exit_, mov64
from sockgate.ebpf.layout import Ban, Count, Origin
from sockgate.linux import bpfsys
from support.pinned import PinnedService, pin_map, private_bpffs

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="bpffs is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting bpffs and creating BPF maps needs root"),
    pytest.mark.root,
]

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def root() -> Iterator[str]:
    with private_bpffs() as r:
        yield r


def _ns_ago(seconds: float) -> int:
    return time.monotonic_ns() - int(seconds * 1e9)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["refused", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def two(root: str) -> Iterator[str]:
    ssh, web = PinnedService(root, "ssh"), PinnedService(root, "we b\n")
    try:
        ssh.count("203.0.113.5", Count(3, _ns_ago(3600), _ns_ago(60)))
        ssh.count("2001:db8::7", Count(40, _ns_ago(100), _ns_ago(1)))
        web.count("198.51.100.1", Count(7, _ns_ago(50), _ns_ago(5)))
        ssh.ban("198.51.100.0/24", Ban(0, Origin.FAIL2BAN))
        ssh.ban("192.0.2.1/32", Ban(_ns_ago(-3600), Origin.MANUAL))
        ssh.ban("192.0.2.9/32", Ban(_ns_ago(10), Origin.CROWDSEC))  # expired: not listed
        web.ban("2001:db8:1::/48", Ban(0, Origin.HOSTS_DENY))
        yield root
    finally:
        ssh.close()
        web.close()


def test_json_rows_sorted_by_count_with_wall_clock_times(two: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "--root", two, "--json")
    assert (code, err) == (0, "")
    rows = [json.loads(line) for line in out.splitlines()]
    refused = [r for r in rows if r["type"] == "refused"]
    assert [(r["service"], r["source"], r["count"]) for r in refused] == [
        ("ssh", "2001:db8::7", 40), ("we b\n", "198.51.100.1", 7), ("ssh", "203.0.113.5", 3)]
    third = refused[2]
    assert abs(datetime.fromisoformat(third["first_seen"]).timestamp() - (time.time() - 3600)) < 3
    assert abs(datetime.fromisoformat(third["last_seen"]).timestamp() - (time.time() - 60)) < 3
    bans = [(r["service"], r["source"], r["origin"]) for r in rows if r["type"] == "ban"]
    assert bans == [("ssh", "192.0.2.1/32", "manual"), ("ssh", "198.51.100.0/24", "fail2ban"),
                    ("we b\n", "2001:db8:1::/48", "hosts-deny")]
    expiring = next(r for r in rows if r.get("source") == "192.0.2.1/32")
    assert abs(datetime.fromisoformat(expiring["expires"]).timestamp() - (time.time() + 3600)) < 3
    assert next(r for r in rows if r.get("origin") == "fail2ban")["expires"] is None


def test_table_escapes_names_and_lists_bans(two: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "--root", two)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["SERVICE", "SOURCE", "REFUSED", "FIRST", "SEEN", "LAST", "SEEN"]
    assert lines[2].split()[:3] == ["we", "b\\x0a", "198.51.100.1"]
    assert lines[3].split()[:3] == ["ssh", "203.0.113.5", "3"]
    assert abs(datetime.fromisoformat(lines[3].split()[4]).timestamp() - (time.time() - 60)) < 3
    assert any(ln.split()[:4] == ["ssh", "198.51.100.0/24", "fail2ban", "never"] for ln in lines)
    assert all(ln.isprintable() for ln in lines)


def test_service_filter(two: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "--root", two, "--json", "--service", "we b\n")
    assert code == 0 and {json.loads(x)["service"] for x in out.splitlines()} == {"we b\n"}
    code, out, err = _cli(capsys, "--root", two, "--service", "nope")
    assert (code, out) == (1, "") and err.count("\n") == 1 and "service nope: nothing pinned" in err


def test_hostile_pins_are_reported_and_skipped(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    good = PinnedService(root, "ssh")
    fds = []
    try:
        good.count("203.0.113.5", Count(1, _ns_ago(5), _ns_ago(5)))
        # a map of another layout where a service's counters belong
        wrong = layout.service_dir("wrong", root)
        fds.append(pin_map(wrong, layout.MapSpec("sg_counts", layout.MapType.HASH, 4, 4, 8)))
        # a program where the counters belong
        prog_dir = layout.service_dir("prog", root)
        os.makedirs(prog_dir)
        prog = bpfsys.prog_load(ProgType.SOCKET_FILTER, encode([mov64(0, imm=0), exit_()]), "sg_test")
        fds.append(prog)
        bpfsys.pin(prog, f"{prog_dir}/counts")
        # a directory name layout.service_dir never makes, with a newline in it
        os.makedirs(f"{root}/services/evil\nname")
        code, out, err = _cli(capsys, "--root", root, "--json")
        assert code == 0 and [json.loads(x)["source"] for x in out.splitlines()] == ["203.0.113.5"]
        warnings = err.splitlines()
        assert len(warnings) == 3 and all(w.startswith("sockgate: warning: ") and w.isprintable() for w in warnings)
        assert any("services/evil\\x0aname: not a sockgate service directory" in w for w in warnings)
        assert any("services/wrong/counts: not a sockgate counts map (type 1, key 4 bytes" in w for w in warnings)
        assert any("services/prog/counts: not a BPF map (a prog)" in w for w in warnings)
    finally:
        good.close()
        for fd in fds:
            os.close(fd)


def test_only_hostile_pins_fail(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    fd = pin_map(layout.service_dir("wrong", root), layout.bans_spec(4, 4))
    try:
        os.rename(f"{layout.service_dir('wrong', root)}/bans4", f"{layout.service_dir('wrong', root)}/counts")
        code, out, err = _cli(capsys, "--root", root)
        assert code == 1 and out == "" and err.startswith("sockgate: ") and "not a sockgate counts map" in err
    finally:
        os.close(fd)


def test_nothing_pinned_is_one_line(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "--root", root)
    assert (code, out) == (1, "") and err == f"sockgate: {root}/services: nothing pinned there\n"
    os.makedirs(f"{root}/services")
    code, out, err = _cli(capsys, "--root", root)
    assert (code, out) == (1, "") and err == f"sockgate: {root}/services: no service has pinned objects\n"


@pytest.mark.parametrize("target", ["services", "services/ssh/counts"])
def test_not_permitted_is_one_line(two: str, target: str) -> None:
    """Root without its capabilities (setpriv drops them all, CAP_DAC_OVERRIDE included) may
    not read a directory or a pin that another user owns with mode 0700/0600."""
    for path in {two, f"{two}/services", f"{two}/{target}"}:
        os.chown(path, 65534, 65534)
    os.chmod(f"{two}/{target}", 0o700 if target == "services" else 0o600)
    drop = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]
    r = subprocess.run([*drop, sys.executable, "-m", "sockgate", "refused", "--root", two, "--service", "ssh"],
                       env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("sockgate: ") and "permission denied" in r.stderr.lower()


def test_default_root_honours_sockgate_bpffs(root: str, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --root, refused reads where the backend pins: $SOCKGATE_BPFFS/sockgate."""
    svc = PinnedService(f"{root}/sockgate", "ssh")
    try:
        svc.count("203.0.113.5", Count(3, _ns_ago(60), _ns_ago(1)))
        monkeypatch.setenv("SOCKGATE_BPFFS", root)
        code, out, err = _cli(capsys, "--json")
    finally:
        svc.close()
    assert (code, err) == (0, "")
    assert [(r["service"], r["source"], r["count"]) for r in map(json.loads, out.splitlines())] == [("ssh", "203.0.113.5", 3)]


def test_lost_events_and_failed_bans_are_warnings(two: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What the program could not do (layout.Stat) is said, never hidden (a full ring, a
    full ban trie)."""
    fd = pin_map(layout.service_dir("ssh", two), layout.stats_spec())
    try:
        for stat, n in ((layout.Stat.EVENTS_LOST, 12), (layout.Stat.BANS_FAILED, 3)):
            bpfsys.map_update(fd, int(stat).to_bytes(4, sys.byteorder), layout.STAT_VALUE.pack(n))
        code, _, err = _cli(capsys, "--root", two)
        assert code == 0
        assert "sockgate: warning: ssh: 12 refusal events lost (the event ring was full)" in err
        assert "sockgate: warning: ssh: 3 bans by `limit rate ... ban` failed (the ban trie was full)" in err
        assert "we b" not in err  # no stats pinned for it: nothing to say
    finally:
        os.close(fd)
