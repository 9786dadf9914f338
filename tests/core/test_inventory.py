"""The one inventory: the join of sock_diag's sockets with /proc's holders, which sockets are
worth a filter, what attach names, and the names `listeners` gives — over fake dumps, a fake
holder index and a fake /proc tree. No sockets, no root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest

from sockgate import inventory
from sockgate.errors import AdapterError
from sockgate.inventory import Holder, Target
from sockgate.linux import procfs, sockdiag
from sockgate.linux.procfs import HolderIndex
from sockgate.linux.sockdiag import TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_TIME_WAIT, Sock

PERMISSION = "permission denied (needs root with CAP_SYS_PTRACE, or the same user with ptrace rights over the process)"


def tcp(port: int, inode: int, state: int = TCP_LISTEN, addr: str = "127.0.0.1", **kw: Any) -> Sock:
    fam = "ipv6" if ":" in addr else "ipv4"
    return Sock("tcp", fam, "stream", state, inode, 0, addr, port, "0.0.0.0", 0, **kw)


def udp(port: int, inode: int, state: int = TCP_CLOSE, addr: str = "127.0.0.1", **kw: Any) -> Sock:
    return Sock("udp", "ipv4", "dgram", state, inode, 0, addr, port, "0.0.0.0", 0, **kw)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fake host: ``host.socks`` is what sock_diag lists, ``host.index`` who holds what."""

    class Host:
        socks: list[Sock] = []
        index = HolderIndex()
        asked: list[tuple[tuple[str, ...], dict[str, int], Any]] = []

    def dump(kinds: Iterable[str], states: Mapping[str, int], proc: str = procfs.PROC) -> list[Sock]:
        kinds = tuple(kinds)
        Host.asked.append((kinds, dict(states), None))
        mask = dict(states)
        return [s for s in Host.socks if s.proto in kinds and mask[s.proto] & (1 << s.state)]

    def index(proc: str = procfs.PROC, only_pids: Iterable[int] | None = None) -> HolderIndex:
        if only_pids is None:
            return Host.index
        pids = set(only_pids)
        by_inode = {i: tuple(p for p in pairs if p[0] in pids) for i, pairs in Host.index.by_inode.items()}
        return HolderIndex({i: p for i, p in by_inode.items() if p}, Host.index.denied & pids)

    monkeypatch.setattr(sockdiag, "inventory", dump)
    monkeypatch.setattr(procfs, "holders", index)
    monkeypatch.setattr(procfs, "sees_every_process", lambda *_: True)
    monkeypatch.setattr(procfs, "netns_of", lambda *_: 4026531840)
    monkeypatch.setattr(procfs, "pid_exists", lambda pid, *_: pid in (10, 11, 12, 13))
    Host.socks, Host.asked = [], []
    return Host


def test_join_groups_holders_by_process_and_keeps_the_denied(host: Any) -> None:
    shared, alone, waiting = tcp(80, 100), udp(53, 200), tcp(80, 0, TCP_TIME_WAIT)
    host.socks = [shared, alone, waiting]
    # a listener inherited across fork, held twice by pid 11; pid 99's descriptors are hidden
    host.index = HolderIndex({100: ((11, 7), (10, 3), (11, 4)), 0: ((12, 9),)}, frozenset({99}))
    scan = inventory.sockets(["tcp", "udp"], {"tcp": sockdiag.ALL_STATES, "udp": sockdiag.ALL_STATES})
    assert [f.sock for f in scan.found] == [shared, alone, waiting]
    assert scan.found[0].holders == (Holder(10, None, None, (3,)), Holder(11, None, None, (4, 7)))
    assert scan.found[1].holders == ()
    assert scan.found[2].holders == ()  # inode 0: no descriptor anywhere, whatever the index says
    assert scan.denied == frozenset({99})


def test_guardable_is_a_tcp_listener_or_an_unconnected_udp_socket() -> None:
    assert inventory.guardable(tcp(80, 1))
    assert inventory.guardable(udp(53, 2))
    assert not inventory.guardable(tcp(80, 1, TCP_ESTABLISHED))
    assert not inventory.guardable(tcp(80, 1, TCP_CLOSE))  # bound, neither listening nor connected
    assert not inventory.guardable(udp(53, 2, TCP_ESTABLISHED))  # a connected UDP socket is a client
    assert not inventory.guardable(Sock("unix", "unix", "stream", TCP_LISTEN, 3, unix_name="/run/x"))
    assert not inventory.guardable(Sock("raw", "ipv4", "raw", TCP_CLOSE, 4, 0, "0.0.0.0", 1))


def test_on_port_lists_every_holder_of_every_socket_on_the_port(host: Any) -> None:
    a, b = tcp(80, 100, reuse=None), tcp(80, 101, addr="::")
    host.socks = [b, a, tcp(81, 102), tcp(80, 103, TCP_ESTABLISHED)]
    host.index = HolderIndex({101: ((12, 5),), 100: ((11, 4), (10, 3)), 102: ((13, 3),), 103: ((13, 4),)})
    got = inventory.on_port(80)
    assert [(t.pid, t.fd, t.sock) for t in got] == [(10, 3, a), (11, 4, a), (12, 5, b)]
    assert host.asked[-1][:2] == (("tcp",), {"tcp": 1 << TCP_LISTEN})  # the kernel is asked for listeners only
    assert inventory.on_port(80, "udp") == []
    assert inventory.attach_targets(port=80) == [(10, 3), (11, 4), (12, 5)]


def test_on_port_refuses_a_socket_whose_owner_it_cannot_see(host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    host.socks = [tcp(80, 100), tcp(80, 101)]
    host.index = HolderIndex({100: ((10, 3),)})
    with pytest.raises(AdapterError) as kernel:
        inventory.on_port(80)
    assert str(kernel.value) == "tcp port 80: a socket there belongs to no process (a kernel socket); nothing was changed"
    monkeypatch.setattr(procfs, "sees_every_process", lambda *_: False)
    with pytest.raises(AdapterError) as hidden:
        inventory.on_port(80)
    assert str(hidden.value) == f"tcp port 80: a socket's owner: {PERMISSION}"
    # every process may be visible in principle, and still one was not readable
    monkeypatch.setattr(procfs, "sees_every_process", lambda *_: True)
    host.index = HolderIndex({100: ((10, 3),)}, frozenset({77}))
    with pytest.raises(AdapterError, match="a socket's owner: permission denied"):
        inventory.attach_targets(port=80)


def test_of_process_lists_its_guardable_sockets_by_fd(host: Any) -> None:
    listener, bound, client = tcp(80, 100), udp(53, 101), udp(9, 102, TCP_ESTABLISHED)
    host.socks = [listener, bound, client, tcp(81, 103)]
    host.index = HolderIndex({100: ((10, 6),), 101: ((10, 4),), 102: ((10, 5),), 103: ((11, 3),)}, frozenset({11}))
    assert [(t.fd, t.sock) for t in inventory.of_process(10)] == [(4, bound), (6, listener)]
    assert [(t.fd, t.sock) for t in inventory.of_process(10, "tcp")] == [(6, listener)]
    assert inventory.attach_targets(pid=10, proto="udp") == [(10, 4)]
    with pytest.raises(AdapterError) as denied:
        inventory.of_process(11)
    assert str(denied.value) == f"list the sockets of pid 11: {PERMISSION}"


def test_attach_targets_refusals(host: Any) -> None:
    host.socks = [udp(9, 102, TCP_ESTABLISHED)]
    host.index = HolderIndex({102: ((12, 5),)})
    cases = {
        (("pid", 12),): "pid 12 has no TCP listener or UDP socket to guard",
        (("pid", 12), ("proto", "udp")): "pid 12 has no udp socket to guard",
        (("pid", 55),): "no such process: pid 55",
        (("port", 9),): "no TCP listener is bound to port 9",
        (("port", 9), ("proto", "udp")): "no UDP socket is bound to port 9",
        (): "name a process (pid) or a port",
    }
    for args, message in cases.items():
        with pytest.raises(AdapterError) as raised:
            inventory.attach_targets(**dict(args))  # type: ignore[arg-type]
        assert str(raised.value) == message
    assert inventory.attach_targets(pid=12, fd=5) == [(12, 5)]  # a named fd needs no table


def test_same_address_is_the_rest_of_the_group(host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    member = tcp(80, 100, reuse=True)
    host.socks = [tcp(80, 100), tcp(80, 101), tcp(80, 102, addr="127.0.0.2"), tcp(80, 103, addr="::")]
    host.index = HolderIndex({100: ((10, 3), (11, 3)), 101: ((12, 4),), 102: ((13, 3),), 103: ((13, 4),)})
    others = inventory.same_address(Target(10, 3, member))
    assert [(t.pid, t.fd) for t in others] == [(11, 3), (12, 4)]  # not itself, not another address
    assert inventory.same_address(Target(10, 3, tcp(80, 100, reuse=False))) == []
    asked = len(host.asked)
    monkeypatch.setattr(procfs, "netns_of", lambda pid, *_: 1 if pid == 10 else 2)
    assert inventory.same_address(Target(10, 3, member)) == []  # another namespace: not our tables
    assert len(host.asked) == asked


def test_describe_at_keeps_the_words_attach_prints() -> None:
    assert tcp(80, 1, addr="::").describe_at(812, 6) == "pid 812 fd 6 (tcp [::]:80)"
    assert udp(53, 2).describe_at(1, 4) == "pid 1 fd 4 (udp 127.0.0.1:53)"
    unnamed = Sock("unix", "unix", "stream", TCP_CLOSE, 3)
    assert (unnamed.describe_at(1, 5), unnamed.local_text()) == ("pid 1 fd 5 (unix)", "unnamed")
    assert tcp(80, 1).listening and not udp(53, 2).listening


def fake_process(proc: Path, pid: int, comm: bytes | None, cmdline: bytes | None, fds: Mapping[int, str]) -> None:
    d = proc / str(pid)
    (d / "fd").mkdir(parents=True)
    if comm is not None:
        (d / "comm").write_bytes(comm)
    if cmdline is not None:
        (d / "cmdline").write_bytes(cmdline)
    for fd, target in fds.items():
        os.symlink(target, d / "fd" / str(fd))


def test_listeners_name_holders_as_libwrap_does_and_survive_hostile_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sshd, dns, other, gone = tcp(22, 100), udp(53, 101), tcp(8080, 102), tcp(22, 103, addr="::")
    listed = [sshd, dns, other, gone, tcp(22, 104, TCP_ESTABLISHED)]
    monkeypatch.setattr(sockdiag, "inventory", lambda kinds, states, proc: [s for s in listed if s.proto in kinds])
    fake_process(tmp_path, 10, b"ss\nhd\n", b"/usr/sbin/ss\nhd\0-D\0", {3: "socket:[100]", 4: "pipe:[9]"})
    fake_process(tmp_path, 11, b"\xff\x1b]0;x\n", b"\xfe/dns\xff\0", {5: "socket:[101]", 6: "socket:[104]"})
    fake_process(tmp_path, 12, b"kworker\n", b"", {7: "socket:[101]"})  # an empty command line
    fake_process(tmp_path, 13, None, None, {3: "socket:[103]"})  # exited while we looked
    scan = inventory.listeners({22, 53}, proc=str(tmp_path))
    assert [f.sock for f in scan.found] == [sshd, gone, dns]  # by protocol, port, family
    assert scan.found[0].holders == (Holder(10, "ss\nhd", None, (3,), "ss\nhd"),)
    assert scan.found[1].holders == ()  # kept: the caller looks again or reports it
    (named, kernelish) = scan.found[2].holders
    # not UTF-8, escapes: decoded so that they round-trip to the exact bytes
    assert (named.pid, named.fds) == (11, (5,))
    assert os.fsencode(named.name or "") == b"\xff\x1b]0;x" and os.fsencode(named.argv0 or "") == b"dns\xff"
    assert (kernelish.name, kernelish.argv0) == ("kworker", None)
    assert inventory.listeners({22}, ["udp"], proc=str(tmp_path)).found == ()
    with pytest.raises(AdapterError, match="no unix socket can be guarded"):
        inventory.listeners({22}, ["unix"], proc=str(tmp_path))


def test_listeners_drop_a_holder_whose_descriptor_changed_after_the_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pid reused between the fd scan and the name read never lends its names to a socket."""
    monkeypatch.setattr(sockdiag, "inventory", lambda kinds, states, proc: [tcp(22, 100)])
    fake_process(tmp_path, 10, b"sshd\n", b"sshd\0", {3: "socket:[100]"})
    real = procfs.names

    def reused(pid: int, proc: str = procfs.PROC) -> procfs.Names | None:
        link = tmp_path / str(pid) / "fd" / "3"
        link.unlink()
        os.symlink("socket:[555]", link)  # another process now, with another socket at fd 3
        return real(pid, proc)

    monkeypatch.setattr(procfs, "names", reused)
    (found,) = inventory.listeners({22}, proc=str(tmp_path)).found
    assert found.holders == ()


def test_holders_reads_the_fd_links(tmp_path: Path) -> None:
    fake_process(tmp_path, 10, None, None, {3: "socket:[100]", 4: "/dev/null", 5: "socket:[100]", 6: "socket:[x]"})
    fake_process(tmp_path, 11, None, None, {0: "socket:[101]"})
    (tmp_path / "self").mkdir()
    index = procfs.holders(str(tmp_path))
    assert {k: sorted(v) for k, v in index.by_inode.items()} == {100: [(10, 3), (10, 5)], 101: [(11, 0)]}
    assert procfs.holders(str(tmp_path), only_pids=[11, 12]).by_inode == {101: ((11, 0),)}


def test_pid_exists_is_a_process_not_a_thread(tmp_path: Path) -> None:
    for pid, tgid in ((10, 10), (11, 10)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "status").write_text(f"Name:\tx\nTgid:\t{tgid}\nPid:\t{pid}\n")
    assert procfs.pid_exists(10, str(tmp_path))
    assert not procfs.pid_exists(11, str(tmp_path))  # a thread of 10
    assert not procfs.pid_exists(12, str(tmp_path))
    assert not procfs.pid_exists(0, str(tmp_path))
