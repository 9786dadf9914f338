"""agent/superserver: which daemon a super-server's listener is for — xinetd's libwrap name
(``libwrap``, ``server``'s basename, the first ``server_args`` word with NAMEINARGS), its port
(``port``, else services(5)), what launches nothing (disabled, internal, redirect, RPC); inetd's
argv[0]; and selection: a super-server's listener on such a port is the daemon's, a user's
process named xinetd is not a super-server."""

from __future__ import annotations

from pathlib import Path

from sockgate.agent.desired import ServiceSpec
from sockgate.agent.enrol import select
from sockgate.agent.model import Endpoint, GuardState, HolderInfo, Observed, Selector, Want
from sockgate.agent.files import WatchingReader
from sockgate.agent.launchfiles import read_launches
from sockgate.agent.superserver import (Launch, dropin_dirs, is_superserver, launches_for, parse_inetd, parse_socket_unit,
                                        parse_xinetd)
from sockgate.export.ports import parse_services

SERVICES = parse_services("ftp 21/tcp\ntelnet 23/tcp\ntftp 69/udp\n")

XINETD = """
defaults
{
    instances = 60
}
includedir /etc/xinetd.d

service ftp
{
    socket_type = stream
    wait        = no
    user        = root
    server      = /usr/sbin/in.ftpd
    server_args = -l
}
service telnet {
    socket_type = stream
    server      = /usr/sbin/tcpd
    server_args = /usr/sbin/in.telnetd -h
    flags       = REUSE
    flags      += NAMEINARGS
}
service sg
{
    type        = UNLISTED
    port        = 2296
    socket_type = stream
    protocol    = tcp
    server      = /usr/local/bin/sgd
    libwrap     = sgwrap
}
service tftp
{
    socket_type = dgram
    server      = /usr/sbin/in.tftpd
    disable     = yes
}
service echo
{
    type        = INTERNAL
    socket_type = stream
    port        = 7
}
"""


def test_xinetd_names_each_daemon_as_libwrap_sees_it_on_its_port() -> None:
    included: list[str] = []

    def include(d: str) -> list[tuple[str, str]]:
        included.append(d)
        return [(f"{d}/daytime", "service daytime\n{\n port = 13\n type = UNLISTED\n socket_type = stream\n"
                                 " server = /usr/sbin/in.daytimed\n}\n")]

    got = parse_xinetd(XINETD, "/etc/xinetd.conf", SERVICES, include)
    assert included == ["/etc/xinetd.d"]
    assert [(x.daemon, x.endpoint) for x in got] == [
        ("in.daytimed", Endpoint("tcp", 13, 13)),
        ("in.ftpd", Endpoint("tcp", 21, 21)),
        ("in.telnetd", Endpoint("tcp", 23, 23)),
        ("sgwrap", Endpoint("tcp", 2296, 2296)),
    ]
    assert got[1].where == "xinetd /etc/xinetd.conf"


def test_inetd_names_argv0_and_skips_internal_and_rpc() -> None:
    text = ("# comment\nftp stream tcp nowait root /usr/sbin/tcpd /usr/sbin/in.ftpd -l\n"
            "127.0.0.1:2222 stream tcp6 nowait root /usr/sbin/tcpd sshd -i\n"
            "echo stream tcp nowait root internal\n"
            "tftp dgram udp wait nobody /usr/sbin/tcpd in.tftpd /srv/tftp\n"
            "mountd/1 dgram rpc/udp wait root /usr/sbin/tcpd rpc.mountd\n")
    got = parse_inetd(text, "/etc/inetd.conf", SERVICES)
    assert [(x.daemon, x.endpoint) for x in got] == [
        ("in.ftpd", Endpoint("tcp", 21, 21)), ("sshd", Endpoint("tcp", 2222, 2222)), ("in.tftpd", Endpoint("udp", 69, 69))]


def test_only_the_policys_daemons_get_their_ports_by_libwraps_comparison() -> None:
    launches = [Launch("in.ftpd", Endpoint("tcp", 21, 21), "x"), Launch("other", Endpoint("tcp", 9, 9), "x")]
    assert launches_for(launches, ["IN.FTPD", "sshd"]) == {"IN.FTPD": (Endpoint("tcp", 21, 21),)}


def holder(comm: str, euid: int | None) -> HolderInfo:
    return HolderInfo(10, 3, comm, comm, euid)


def sock(port: int, *holders: HolderInfo) -> Observed:
    return Observed(1, "tcp", 4, "0.0.0.0", port, 0, holders, GuardState("none"))


class D:
    sys_uid_max = 999  # enrol.Services: the highest system account's uid (login.defs' default)

    def __init__(self, *services: ServiceSpec) -> None:
        self.services = services


def spec(name: str, sel: Selector) -> ServiceSpec:
    return ServiceSpec(name, "hosts_access", sel, Want(name, "cbpf", "d"), None)  # type: ignore[arg-type]


def test_a_super_servers_listener_on_a_launched_port_is_the_daemons_and_nobody_elses() -> None:
    d = D(spec("in.ftpd", Selector(daemon="in.ftpd", launched=(Endpoint("tcp", 21, 21),))))
    assert select(d, sock(21, holder("xinetd", 0))) == Want("in.ftpd", "cbpf", "d")
    assert select(d, sock(21, holder("xinetd", 1000))) is None  # a user's process named xinetd
    assert select(d, sock(21, holder("nginx", 0))) is None  # someone else on the port: not the daemon's
    assert select(d, sock(22, holder("xinetd", 0))) is None
    assert is_superserver(holder("systemd", 0)) and not is_superserver(holder("systemd", None))


def test_hostile_ports_and_names_launch_nothing() -> None:
    text = ("service x\n{\n port = ²\n type = UNLISTED\n socket_type = stream\n server = /bin/x\n}\n"
            "service y\n{\n port = 70000\n type = UNLISTED\n socket_type = stream\n server = /bin/y\n}\n"
            "service z\n{\n port = 9\n socket_type = raw\n server = /bin/z\n}\n")
    assert parse_xinetd(text, "x", SERVICES) == []
    assert parse_inetd("²³ stream tcp nowait root /usr/sbin/tcpd d\n", "i", SERVICES) == []


def test_a_socket_unit_names_its_services_argv0_on_its_ports() -> None:
    units = {
        "ssh@.service": "[Unit]\nDescription=x\n[Service]\nExecStart=-/usr/sbin/sshd -i\nStandardInput=socket\n",
        "ftp.service": "[Service]\nExecStart=\nExecStart=@/usr/sbin/tcpd in.ftpd -l\n",
        "other.service": "[Service]\nExecStart=/usr/bin/otherd\n",
    }
    ssh = "[Socket]\nListenStream=22\nListenStream=[::]:2222\nListenStream=/run/x.sock\nAccept=yes\n"
    ftp = "[Socket]\nListenStream=0.0.0.0:21\nListenDatagram=127.0.0.1:69\nService=other.service\n"
    assert [(x.daemon, x.endpoint) for x in parse_socket_unit("ssh.socket", ssh, "u", units.get)] == [
        ("sshd", Endpoint("tcp", 22, 22)), ("sshd", Endpoint("tcp", 2222, 2222))]
    assert [(x.daemon, x.endpoint) for x in parse_socket_unit("ftp.socket", ftp, "u", units.get)] == [
        ("otherd", Endpoint("tcp", 21, 21)), ("otherd", Endpoint("udp", 69, 69))]
    assert [x.daemon for x in parse_socket_unit("ftp.socket", "[Socket]\nListenStream=21\n", "u", units.get)] == ["in.ftpd"]
    assert parse_socket_unit("gone.socket", "[Socket]\nListenStream=9\n", "u", units.get) == []  # no service: unknown


def test_drop_in_directories_most_specific_first() -> None:
    assert dropin_dirs("a-b-c.socket") == ["a-b-c.socket.d", "a-b-.socket.d", "a-.socket.d", "socket.d"]
    assert dropin_dirs("getty@tty1.service") == ["getty@tty1.service.d", "getty@.service.d", "service.d"]
    assert dropin_dirs("ssh@.service") == ["ssh@.service.d", "service.d"]
    assert dropin_dirs("-.socket") == ["-.socket.d", "socket.d"] and dropin_dirs("noext") == []


def test_drop_ins_change_the_ports_and_the_daemon(tmp_path: Path) -> None:
    """An override that clears ``ListenStream=`` and sets another port, a service drop-in
    that replaces ``ExecStart``: the launches are systemd's, not the unit files'."""
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    files = {
        lib / "ftp.socket": "[Socket]\nListenStream=21\n",
        lib / "ftp.service": "[Service]\nExecStart=/usr/sbin/in.ftpd\n",
        lib / "ftp.socket.d" / "10-v.conf": "[Socket]\nListenStream=2121\n",
        etc / "ftp.socket.d" / "50-local.conf": "ListenStream=9\n[Socket]\nListenStream=\nListenStream=[::]:990\n",
        lib / "ftp.socket.d" / "50-local.conf": "[Socket]\nListenStream=4444\n",  # shadowed by /etc's
        lib / "socket.d" / "99-all.conf": "[Socket]\nListenDatagram=69\n",
        etc / "ftp.service.d" / "override.conf": "[Service]\nExecStart=\nExecStart=/usr/sbin/vsftpd\n",
        etc / "ftp.service.d" / "notes.txt": "[Service]\nExecStart=/usr/sbin/ignored\n",
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    launches = read_launches(WatchingReader(), None, None, (str(etc), str(lib)), services_file=str(tmp_path / "none"))
    assert {(x.daemon, x.endpoint) for x in launches} == {
        ("vsftpd", Endpoint("tcp", 990, 990)), ("vsftpd", Endpoint("udp", 69, 69))}
    assert len(launches) == 2
