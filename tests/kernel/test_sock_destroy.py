"""linux/sockdiag.destroy_tcp (SOCK_DESTROY): when a ban on 127.0.0.2 lands, that source's
established connection to the service ends — the client sees a reset, the server's socket an
abort — and 127.0.0.1's connection to the same port keeps working; other ports are left
alone; IPv4 clients of a dual-stack listener (peers ``::ffff:a.b.c.d``) are matched by their
IPv4 address; without CAP_NET_ADMIN it is one clear error."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
from typing import Iterator

import pytest

from sockgate.linux.sockdiag import destroy_tcp

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="sock_diag is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="SOCK_DESTROY needs CAP_NET_ADMIN"),
    pytest.mark.root,
]

TIMEOUT = 5.0


@contextlib.contextmanager
def service(family: int) -> Iterator[tuple[socket.socket, int]]:
    srv = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            srv.bind(("::", 0))
        else:
            srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.settimeout(TIMEOUT)
        yield srv, srv.getsockname()[1]
    finally:
        srv.close()


def connect(srv: socket.socket, port: int, source: str) -> tuple[socket.socket, socket.socket]:
    """A connection from ``source`` to ``port``: (the client's socket, the server's)."""
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(TIMEOUT)
    c.bind((source, 0))
    c.connect(("127.0.0.1", port))
    s, _ = srv.accept()
    s.settimeout(TIMEOUT)
    return c, s


def alive(c: socket.socket, s: socket.socket) -> bool:
    try:
        c.sendall(b"ping")
        return s.recv(4) == b"ping"
    except OSError:
        return False


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "dual-stack"])
def test_a_ban_ends_the_banned_sources_connection_only(family: int) -> None:
    with service(family) as (srv, port), service(socket.AF_INET) as (other, other_port):
        good, good_s = connect(srv, port, "127.0.0.1")
        bad, bad_s = connect(srv, port, "127.0.0.2")
        elsewhere, elsewhere_s = connect(other, other_port, "127.0.0.2")
        try:
            assert alive(good, good_s) and alive(bad, bad_s)
            assert destroy_tcp({port}, [ipaddress.ip_network("127.0.0.2/32")]) == 1
            with pytest.raises(ConnectionResetError):
                bad.recv(1)  # the peer's reset: readiness, not a sleep
            with pytest.raises(ConnectionAbortedError):
                bad_s.recv(1)
            assert alive(good, good_s) and alive(elsewhere, elsewhere_s)
            assert destroy_tcp({port}, [ipaddress.ip_network("127.0.0.2/32")]) == 0
        finally:
            for sock in (good, good_s, bad, bad_s, elsewhere, elsewhere_s):
                sock.close()


def test_prefixes_of_any_length_and_no_match() -> None:
    with service(socket.AF_INET) as (srv, port):
        conns = [connect(srv, port, f"127.0.0.{i}") for i in (1, 5, 6)]
        try:
            assert destroy_tcp({port}, [ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("127.0.0.8/29")]) == 0
            assert destroy_tcp({port}, [ipaddress.ip_network("127.0.0.4/30")]) == 2
            assert alive(*conns[0]) and not alive(*conns[1])
        finally:
            for c, s in conns:
                c.close()
                s.close()


def test_without_cap_net_admin_it_is_one_clear_error() -> None:
    code = ("import ipaddress, sys\n"
            "from sockgate.errors import AdapterError\n"
            "from sockgate.linux.sockdiag import destroy_tcp\n"
            "try:\n    destroy_tcp({1}, [ipaddress.ip_network('0.0.0.0/0')], states=(1 << 13) - 1)\n"
            "except AdapterError as e:\n    print(e)\n")
    with service(socket.AF_INET) as (srv, port):
        c, s = connect(srv, port, "127.0.0.1")
        try:
            code = code.replace("{1}", "{%d}" % port)
            r = subprocess.run(["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--",
                                sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
            assert r.stdout.strip() == "end a TCP connection (SOCK_DESTROY): operation not permitted (needs CAP_NET_ADMIN)", r.stderr
            assert alive(c, s)
        finally:
            c.close()
            s.close()


def test_a_service_on_one_address_leaves_the_same_port_on_another_alone() -> None:
    with service(socket.AF_INET) as (srv, port):
        other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        other.bind(("127.0.0.3", port))  # another service, same port, another address
        other.listen(8)
        other.settimeout(TIMEOUT)
        c1, s1 = connect(srv, port, "127.0.0.2")
        c2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c2.settimeout(TIMEOUT)
        c2.bind(("127.0.0.2", 0))
        c2.connect(("127.0.0.3", port))
        s2, _ = other.accept()
        s2.settimeout(TIMEOUT)
        try:
            banned = [ipaddress.ip_network("127.0.0.2/32")]
            assert destroy_tcp({port}, banned, addresses=[ipaddress.ip_address("::ffff:127.0.0.1")]) == 1
            assert not alive(c1, s1) and alive(c2, s2)
        finally:
            for sock in (c1, s1, c2, s2, other):
                sock.close()
