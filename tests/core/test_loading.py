"""The file edge: every file a policy names is read once, only if regular, within a size cap.

Reads that would never end (``/dev/zero``) or never start (a FIFO with no writer) run in a
child process with a memory limit and a timeout, so a regression fails the test instead of
hanging or exhausting the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import sockgate
from sockgate import loading
from sockgate.errors import PolicyError
from sockgate.loading import FileReader, load_policy, read_regular

NOT_REGULAR = "a character device, not a regular file; only regular files are read"


def sockgate_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``sockgate ARGV`` in a child limited to 1 GiB of memory and 60 s."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    env = {**os.environ, "PYTHONPATH": str(Path(sockgate.__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "sockgate", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, preexec_fn=limit)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"p.conf": 'include "/dev/zero"\n'}, f"p.conf:1:9: cannot read policy file '/dev/zero': {NOT_REGULAR}"),
        ({"p.conf": 'set z < "/dev/zero"\n'}, f"p.conf:1:9: cannot read address list '/dev/zero': {NOT_REGULAR}"),
        ({"hosts.allow": "sshd: /dev/zero\n"},
         f"hosts.allow:1:7: cannot read pattern file /dev/zero: {NOT_REGULAR}"),
    ],
    ids=["include", "set-file", "hosts-pattern-file"],
)
def test_a_device_is_refused_not_read_until_memory_runs_out(tmp_path: Path, files: dict[str, str],
                                                              expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = ["--hosts-allow", "hosts.allow"] if "hosts.allow" in files else ["p.conf"]
    done = sockgate_cli("lint", *args, cwd=tmp_path)
    assert (done.returncode, done.stdout.splitlines()[0]) == (2, expected), done.stderr


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.conf")
    (tmp_path / "p.conf").write_text('include "fifo.conf"\nset s < "fifo.conf"\n')
    done = sockgate_cli("lint", "p.conf", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout.splitlines()[::3] == [
        "p.conf:1:9: cannot read policy file 'fifo.conf': a FIFO, not a regular file; only regular files are read",
        "p.conf:2:9: cannot read address list 'fifo.conf': a FIFO, not a regular file; only regular files are read",
    ]


def test_a_fifo_given_on_the_command_line_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "hosts.deny")
    with pytest.raises(PolicyError) as info:
        load_policy([], None, str(tmp_path / "hosts.deny"))
    assert "a FIFO, not a regular file" in str(info.value)


def test_a_file_over_the_cap_is_refused_and_the_cap_named(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(loading.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    (tmp_path / "p.conf").write_text('set s < "big.txt"\n')
    with pytest.raises(PolicyError) as info:
        load_policy([str(tmp_path / "p.conf")])
    assert str(info.value) == (f"{tmp_path}/p.conf:1:9: cannot read address list '{tmp_path}/big.txt': "
                               "larger than 64 MiB, the limit for one file")


def test_a_file_growing_past_its_size_is_still_capped(tmp_path: Path) -> None:
    """/proc files report size 0: the cap holds on what is read, not on what fstat says."""
    path = tmp_path / "x"
    path.write_bytes(b"a" * 11)
    with pytest.raises(OSError, match="larger than 0 MiB"):
        read_regular(str(path), limit=10)
    assert read_regular("/proc/self/comm")  # size 0 in stat, text when read


def test_the_files_of_one_load_have_a_total_budget(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).write_text("x" * 600)
    read = FileReader(limit=1000, total=1000)
    read(str(tmp_path / "a"))
    with pytest.raises(OSError, match="larger than 0 MiB together"):
        read(str(tmp_path / "b"))


def test_each_file_is_read_once_however_often_it_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "common.conf").write_text("set office = { 192.0.2.0/24 }\n")
    (tmp_path / "list.txt").write_text("203.0.113.0/24\n")
    (tmp_path / "p.conf").write_text('include "common.conf"\ninclude "common.conf"\nset a < "list.txt"\n'
                                     'set b < "list.txt"\nservice s { allow @office\n deny @a\n default deny }\n')
    (tmp_path / "hosts.allow").write_text(f"sshd: {tmp_path}/list.txt\nftpd: {tmp_path}/list.txt\n")
    seen: list[str] = []
    real = loading.read_regular

    def counting(path: str, limit: int = loading.MAX_FILE_BYTES) -> str:
        seen.append(os.path.basename(path))
        return real(path, limit)

    monkeypatch.setattr(loading, "read_regular", counting)
    policy = load_policy([str(tmp_path / "p.conf")], str(tmp_path / "hosts.allow"))
    assert sorted(seen) == ["common.conf", "hosts.allow", "list.txt", "p.conf"]
    assert [s.name for s in policy.sets] == ["office", "a", "b"]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("p.conf", 'set x < "a\0b"\n', "p.conf:1:9: cannot read address list 'a\\x00b': a file name cannot contain a NUL byte"),
        ("p.conf", 'include "a\0b"\n', "p.conf:1:9: cannot read policy file 'a\\x00b': a file name cannot contain a NUL byte"),
        ("p.conf", 'include "a\0b/*.conf"\n', "p.conf:1:9: cannot list directory 'a\\x00b': a file name cannot contain a NUL byte"),
        ("hosts.deny", "ALL: /a\0b\n", "hosts.deny:1:8: NUL byte in the line"),
        ("hosts.deny", "ALL: /pf\n", "pf:1:3: NUL byte in a pattern file"),
    ],
    ids=["set-file", "include", "include-glob", "hosts-pattern", "hosts-pattern-in-pattern-file"],
)
def test_a_nul_byte_in_a_file_name_is_a_located_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                      text: str, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    (tmp_path / "pf").write_text("/a\0b\n")
    (tmp_path / "hosts.deny").write_text(text.replace("/pf", str(tmp_path / "pf")))
    with pytest.raises(PolicyError) as e:
        load_policy(hosts_deny="hosts.deny") if name == "hosts.deny" else load_policy([name])
    assert str(e.value.diagnostics[0]).replace(str(tmp_path) + "/", "").startswith(expected)
    with pytest.raises(OSError):
        read_regular("a\0b")
    with pytest.raises(OSError):
        loading.list_files("a\0b")


def test_an_account_name_with_a_nul_byte_is_unknown_not_a_traceback() -> None:
    from sockgate.loading import SystemAccounts

    assert SystemAccounts().uid("root\0x") is None and SystemAccounts().gid("root\0x") is None


# -- login.defs' SYS_UID_MAX: who is a system account (the agent's enrolment) -------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("SYS_UID_MAX 499\n", 499),
    ("#SYS_UID_MAX 999\nUID_MIN 1000\nSYS_UID_MAX\t\t 750  # local\n", 750),
    ("SYS_UID_MAX 750\nSYS_UID_MAX 750\n", 750),
    ("", 999),
    ("UID_MIN 500\n", 999),
    ("SYS_UID_MAX 750\nSYS_UID_MAX 60000\n", 999),  # disagreeing values
    ("SYS_UID_MAX -1\n", 999),
    ("SYS_UID_MAX 0x3e7\n", 999),
    ("SYS_UID_MAX 0777x\n", 999),
    ("SYS_UID_MAX 4294967295\n", 999),
    ("SYS_UID_MAX 65534\n", 999),  # nobody, and every user below it
    ("SYS_UID_MAX 99999999999999999999999\n", 999),
    ("SYS_UID_MAX ١٢٣\n", 999),  # digits, but not ASCII ones
    ("SYS_UID_MAX 500 600\n", 999),
    ("SYS_UID_MAX\n", 999),
    ("SYS_UID_MAX\0 5\n", 999),
    ("\udcff\udcfe" * 1000 + "\nSYS_UID_MAX 100\n", 100),
])
def test_sys_uid_max_is_one_plain_value_or_the_default(text: str, expected: int) -> None:
    assert loading.parse_sys_uid_max(text) == expected


def test_sys_uid_max_of_a_missing_unreadable_or_foreign_file_is_the_default(tmp_path: Path) -> None:
    assert loading.system_uid_max(str(tmp_path / "absent")) == 999
    assert loading.system_uid_max(None) == 999
    assert loading.system_uid_max(str(tmp_path)) == 999  # a directory
    defs = tmp_path / "login.defs"
    defs.write_text("SYS_UID_MAX 200\n")
    defs.chmod(0o644)
    assert loading.system_uid_max(str(defs)) == (200 if os.getuid() == 0 else 999)  # root's file, or not trusted
    defs.chmod(0o666)
    assert loading.system_uid_max(str(defs)) == 999  # anyone may write it
