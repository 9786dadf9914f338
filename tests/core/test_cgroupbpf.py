"""linux/cgroupbpf: the cgroup2 mount is read from mountinfo (escapes undone, other
filesystems and malformed lines skipped), never assumed."""

from __future__ import annotations

from pathlib import Path

from sockgate.linux.cgroupbpf import cgroup2_mounts, cgroup2_root


def test_cgroup2_mount_from_mountinfo() -> None:
    text = ("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
            "42 31 0:38 /sub /mnt/with\\040space rw shared:1 - cgroup2 none rw\n"
            "garbage\n - cgroup2\n")
    assert cgroup2_mounts(text) == [("/sys/fs/cgroup/unified", "/"), ("/mnt/with space", "/sub")]


def test_no_cgroup2_is_none(tmp_path: Path) -> None:
    p = tmp_path / "mountinfo"
    p.write_text("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    assert cgroup2_root(str(p)) is None
    p.write_text("42 31 0:38 /sub /a rw - cgroup2 none rw\n41 31 0:38 / /b rw - cgroup2 none rw\n")
    assert cgroup2_root(str(p)) == "/b"
