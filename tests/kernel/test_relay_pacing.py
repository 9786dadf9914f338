"""No pacing on a loopback leg (proxy/pacing.py; ``same_host`` and ``pump_bulk`` in
_lane.c): a relay socket whose peer is this host, paced by BBR, switches to the proxy's
``--loopback-cc`` once its direction carries bulk data; short exchanges, remote peers, other
congestion controls and ``keep`` are left alone. Both relays, on real sockets: loopback
addresses (IPv4, IPv6, IPv4-mapped), a socket's own address and another host in network
namespaces; then the whole proxy in a namespace whose default is BBR, seen with ``ss``."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import given, strategies as st

from kernel.test_relay_both import Harness, _exchange
from sockgate.errors import UsageError
from sockgate.proxy import lane as lanes
from sockgate.proxy.pacing import choose_cc, same_host
from support import netlab
from support.proxyproc import EchoServer, ProxyProc, roundtrip, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_CONGESTION and the relays are Linux-only")
BULK = 1 << 20


def cc_of(s: socket.socket) -> str:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()


def set_cc(s: socket.socket, name: str) -> None:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())


Pair = tuple[socket.socket, socket.socket]  # (peer, the proxy's)
_OPEN: list[socket.socket] = []  # every socket pair_to made, closed after each test (pass or fail)


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()  # (no-op for one the lane took: detached)


def pair_to(host: str, family: int = socket.AF_INET, make: Callable[[int], socket.socket] | None = None,
            peer_make: Callable[[int], socket.socket] | None = None, source: str | None = None) -> Pair:
    """A TCP connection to ``host`` (from ``source``): (the accepted end, the connecting end),
    the connecting one the proxy's, BBR-paced."""
    new = make or (lambda fam: socket.socket(fam, socket.SOCK_STREAM))
    with (peer_make or new)(family) as ls:
        ls.bind((host, 0))
        ls.listen()
        c = new(family)
        _OPEN.append(c)
        set_cc(c, "bbr")
        if source is not None:
            c.bind((source, 0))
        c.connect((host, ls.getsockname()[1]))
        a, _ = ls.accept()
        _OPEN.append(a)
    return a, c


@pytest.fixture(params=["python", "c"])
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[True, False], ids=["splice", "copy"])
def splice(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def harness(impl: str, splice: bool) -> Iterator[Callable[[bytes], Harness]]:
    made: list[Harness] = []

    def make(cc: bytes) -> Harness:
        made.append(Harness(impl, splice, cc))
        return made[-1]

    yield make
    for h in made:
        h.close()


def relay_and_look(h: Harness, client: Pair, backend: Pair, up: bytes, down: bytes) -> tuple[str, str]:
    """Relay client ↔ backend, move ``up`` and ``down`` through, and read the congestion
    control of the proxy's two sockets while the connection is still open (through duplicates
    of their descriptors: the lane owns the originals)."""
    (cp, c), (bp, b) = client, backend
    b.setblocking(False)
    look_c, look_b = socket.socket(fileno=os.dup(c.fileno())), socket.socket(fileno=os.dup(b.fileno()))
    try:
        h.relay(c, b)
        _exchange(h, cp, bp, up, down)
        return cc_of(look_c), cc_of(look_b)
    finally:
        look_c.close()
        look_b.close()
        cp.close()
        bp.close()
        h.spin(lambda: bool(h.ends))


# (peer, family, the proxy's source): a source other than the peer's address, so the loopback
# rule decides, not the own-address one (::1 is the only IPv6 loopback address: there both do)
LOOPBACKS = [("127.0.0.1", socket.AF_INET, "127.0.0.2"), ("127.3.4.5", socket.AF_INET, "127.0.0.1"),
             ("::1", socket.AF_INET6, None), ("::ffff:127.0.0.1", socket.AF_INET6, "::ffff:127.0.0.2")]


@pytest.mark.parametrize("host,family,source", LOOPBACKS, ids=[h for h, _, _ in LOOPBACKS])
def test_a_bulk_loopback_leg_leaves_bbr(harness: Callable[[bytes], Harness], host: str, family: int, source: str | None) -> None:
    h = harness(b"cubic")
    # the backend leg carries 1 MiB up (the proxy sends it); the client leg gets 10 bytes back
    client_cc, backend_cc = relay_and_look(h, pair_to(host, family), pair_to(host, family, source=source),
                                           os.urandom(BULK), b"0123456789")
    assert backend_cc == "cubic"
    assert client_cc == "bbr"  # its direction carried a short reply: left alone
    # and the other way round: the client leg is the one the proxy sends bulk on
    h2 = harness(b"reno")
    client_cc, backend_cc = relay_and_look(h2, pair_to(host, family, source=source), pair_to(host, family), b"GET",
                                           os.urandom(BULK))
    assert (client_cc, backend_cc) == ("reno", "bbr")


def test_short_exchanges_keep(harness: Callable[[bytes], Harness]) -> None:
    h = harness(b"cubic")
    assert relay_and_look(h, pair_to("127.0.0.1"), pair_to("127.0.0.1"), os.urandom(60000), os.urandom(64)) == ("bbr", "bbr")


def test_keep_leaves_bbr(harness: Callable[[bytes], Harness]) -> None:
    h = harness(b"")
    assert relay_and_look(h, pair_to("127.0.0.1"), pair_to("127.0.0.1"), os.urandom(BULK), os.urandom(BULK)) == ("bbr", "bbr")


def test_only_bbr_is_switched(harness: Callable[[bytes], Harness]) -> None:
    h = harness(b"cubic")
    client, backend = pair_to("127.0.0.1"), pair_to("127.0.0.1")
    set_cc(backend[1], "reno")  # the operator's (or the system's) choice, not a pacing one
    assert relay_and_look(h, client, backend, os.urandom(BULK), os.urandom(BULK)) == ("cubic", "reno")


def test_a_unix_leg_is_not_touched(harness: Callable[[bytes], Harness]) -> None:
    """A Unix stream destination has no congestion control: the bulk transfer goes through
    as ever (the Python relay's getsockopt fails and is ignored; the lane does not ask)."""
    h = harness(b"cubic")
    cp, c = socket.socketpair()
    bp, b = socket.socketpair()
    b.setblocking(False)
    up, down = os.urandom(BULK), os.urandom(BULK)
    h.relay(c, b)
    _exchange(h, cp, bp, up, down)
    cp.close()
    bp.close()
    h.spin(lambda: bool(h.ends))
    assert h.ends == [("closed", len(up), len(down))]


@pytest.mark.root
@pytest.mark.netns
def test_own_address_switches_another_host_does_not(harness: Callable[[bytes], Harness], lab: netlab.Lab) -> None:
    """A leg to the socket's own non-loopback address is this host (the loopback device
    carries it); a leg over veth to another namespace is not."""
    h = harness(b"cubic")
    own = pair_to(lab.server_v4, make=lambda fam: lab.server.socket(fam))
    remote = pair_to(lab.server_v4, make=lambda fam: lab.client.socket(fam), peer_make=lambda fam: lab.server.socket(fam))
    client = pair_to("127.0.0.1")
    assert relay_and_look(h, client, own, os.urandom(BULK), b"ok") == ("bbr", "cubic")
    h2 = harness(b"cubic")
    assert relay_and_look(h2, pair_to("127.0.0.1"), remote, os.urandom(BULK), b"ok") == ("bbr", "bbr")
    h3 = harness(b"cubic")
    own6 = pair_to(lab.server_v6, socket.AF_INET6, make=lambda fam: lab.server.socket(fam))
    remote6 = pair_to(lab.server_v6, socket.AF_INET6, make=lambda fam: lab.client.socket(fam),
                      peer_make=lambda fam: lab.server.socket(fam))
    assert relay_and_look(h3, pair_to("::1", socket.AF_INET6), own6, os.urandom(BULK), b"ok")[1] == "cubic"
    h4 = harness(b"cubic")
    assert relay_and_look(h4, pair_to("::1", socket.AF_INET6), remote6, os.urandom(BULK), b"ok")[1] == "bbr"


# -- same_host: the Python relay's decision, and the lane's held to it -------------------

@given(st.ip_addresses())
def test_same_host_is_loopback_or_own(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    text, n = str(addr), int(addr)
    if addr.version == 4:
        want = n >> 24 == 127  # 127.0.0.0/8
        assert same_host(f"::ffff:{addr}", "2001:db8::1") == want  # the same, IPv4-mapped
    else:
        want = n == 1 or (n >> 32 == 0xFFFF and (n >> 24) & 0xFF == 127)  # ::1, ::ffff:127.0.0.0/104
    assert same_host(text, "192.0.2.1") == want
    assert same_host(text, text)  # the socket's own address


def test_same_host_refuses_what_is_not_an_address() -> None:
    assert not same_host("", "")  # (an empty text equal to itself is no address)
    assert not same_host("localhost", "localhost")
    assert same_host("fe80::1%veth0", "fe80::1%veth0") and same_host("fe80::1%a", "fe80::1")  # zones not compared
    assert not same_host("fe80::1", "fe80::2")


def _sockaddr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bytes:
    if addr.version == 4:
        return lanes.sockaddr(socket.AF_INET, (str(addr), port))
    return lanes.sockaddr(socket.AF_INET6, (str(addr), port, 0, 0))


_EDGE_TEXTS = ("127.0.0.1", "127.255.255.254", "126.255.255.255", "128.0.0.0", "127.0.0.2", "::1", "::2", "::", "0.0.0.0",
               "::ffff:127.0.0.1", "::ffff:127.0.0.2", "::ffff:126.0.0.1", "::ffff:128.0.0.1", "::127.0.0.1", "::ffff:7f00:1",
               "1::1", "::1:0:0:1", "fe80::1", "2001:db8::1", "192.0.2.1", "::ffff:192.0.2.1")
_LOOPBACKISH = st.sampled_from([ipaddress.ip_address(a) for a in _EDGE_TEXTS])
_ADDRESSES = st.one_of(st.ip_addresses(), _LOOPBACKISH)


@pytest.mark.skipif(not lanes.LANE_BUILT, reason="the C relay was not built (test_relay_both fails under CI then)")
def test_the_lane_decides_as_same_host_on_every_edge_pair() -> None:
    """Every pair of the edge addresses, both ways (deterministic; the property below adds
    random ones)."""
    from sockgate.proxy._lane import same_host as lane_same_host

    edges = [ipaddress.ip_address(a) for a in _EDGE_TEXTS]
    for peer in edges:
        for mine in edges:
            assert lane_same_host(_sockaddr(peer, 1), _sockaddr(mine, 2)) == same_host(str(peer), str(mine)), (peer, mine)


@pytest.mark.skipif(not lanes.LANE_BUILT, reason="the C relay was not built (test_relay_both fails under CI then)")
@given(_ADDRESSES, st.one_of(_ADDRESSES, st.none()), st.integers(0, 65535), st.integers(0, 65535))
def test_the_lane_decides_as_same_host(peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                       local: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                                       pport: int, lport: int) -> None:
    """The lane's same_host on the sockaddr bytes the kernel would give it, against
    pacing.same_host on the texts Python's getpeername gives (``None``: local == peer)."""
    from sockgate.proxy._lane import same_host as lane_same_host

    mine = peer if local is None else local
    assert lane_same_host(_sockaddr(peer, pport), _sockaddr(mine, lport)) == same_host(str(peer), str(mine))


# -- choosing the name, at start-up ------------------------------------------------------

@pytest.mark.skipif(not lanes.LANE_BUILT, reason="the C relay was not built (test_relay_both fails under CI then)")
def test_the_lane_takes_only_a_name() -> None:
    import select

    from sockgate.proxy._lane import Lane

    with select.epoll() as ep:
        for bad in (b"cu bic", b"reno\0x", b"x" * 16, b"Cubic", b"../a"):
            with pytest.raises(ValueError, match="bad congestion control name"):
                Lane(ep.fileno(), lambda m, e: None, cc=bad)
        Lane(ep.fileno(), lambda m, e: None, cc=b"cubic").close()


# These assume a kernel of this machine's kind: cubic and reno built in, bbr loaded and the
# default, net.ipv4.tcp_allowed_congestion_control "reno bbr" (so cubic is restricted).

@pytest.mark.root
def test_choose_cc() -> None:
    assert choose_cc("keep") == b""
    assert choose_cc("auto") == b"cubic"  # (root may set any the kernel has)
    assert choose_cc("reno") == b"reno"
    for bad in ("Cubic", "cu bic", "", "x" * 16, "reno\0", "../bbr", "ulp-tls"):
        with pytest.raises(UsageError, match="not a congestion control name"):
            choose_cc(bad)
    with pytest.raises(UsageError, match="not loaded in this kernel"):
        choose_cc("nosuchcc")  # (never a module load: only names already loaded are tried)
    with pytest.raises(UsageError, match="paces as BBR does"):
        choose_cc("bbr")
    assert choose_cc("auto", auto=("nosuchcc", "reno")) == b"reno"
    assert choose_cc("auto", auto=("nosuchcc",)) == b""


def test_choose_cc_without_its_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No readable list of loaded names: a NAME is refused (as root the kernel would load a
    module for it), ``auto`` still tries its own. No IPv4 socket (a Unix-only proxy under
    ``RestrictAddressFamilies=AF_UNIX``): ``auto`` is nothing to do, a NAME an error."""
    from sockgate.proxy import pacing

    monkeypatch.setattr(pacing, "_AVAILABLE", "/nonexistent/tcp_available_congestion_control")
    with pytest.raises(UsageError, match="cannot read .* use auto or keep"):
        choose_cc("reno")
    assert choose_cc("auto", auto=("reno",)) == b"reno"
    monkeypatch.undo()

    def no_inet(*a: object, **k: object) -> socket.socket:
        raise OSError(97, os.strerror(97))  # EAFNOSUPPORT

    monkeypatch.setattr(pacing.socket, "socket", no_inet)
    assert choose_cc("auto") == b""
    with pytest.raises(UsageError, match="reno: cannot try it: Address family not supported"):
        choose_cc("reno")


def test_choose_cc_auto_falls_back_to_what_this_user_may_set() -> None:
    """Without CAP_NET_ADMIN only net.ipv4.tcp_allowed_congestion_control may be set; reno
    always is. A child without the capability asks."""
    if os.geteuid() != 0:
        want = {b"cubic"} if b"cubic" in Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_bytes().split() else {b"reno"}
        assert choose_cc("auto") in want
        return
    allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()
    restricted = next((n for n in ("cubic", "htcp", "dctcp", "vegas") if n not in allowed and n in _loaded()), None)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)  # nobody: no capabilities left
            out = [choose_cc("auto")]
            if restricted is not None:  # the fallback itself: the first name is not allowed
                out.append(choose_cc("auto", auto=(restricted, "reno")))
                try:
                    choose_cc(restricted)
                except UsageError as e:
                    out.append(b"refused" if "tcp_allowed_congestion_control" in str(e) else b"?")
            os.write(w, b" ".join(out))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    got = os.read(r, 256).split(b" ")
    os.close(r)
    assert os.waitpid(pid, 0)[1] == 0
    assert got[0] == (b"cubic" if "cubic" in allowed else b"reno")
    if restricted is not None:
        assert got[1:] == [b"reno", b"refused"]
    elif os.environ.get("CI"):
        pytest.fail("no loaded congestion control is restricted here: the fallback was not tried")


def _loaded() -> list[str]:
    return Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()


# -- the whole proxy, in a namespace whose default is BBR ----------------------------------

def ss_cc(ns: netlab.Netns, filt: str) -> list[str]:
    """The congestion control names ``ss -ti`` shows for the sockets matching ``filt``."""
    out = ns.run("ss", "-tinH", "state", "established", *filt.split()).stdout.split()
    return [w for w in out if w in ("bbr", "cubic", "reno")]


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.parametrize("relay", ["c", "python"])
@pytest.mark.parametrize("option,want", [(None, "cubic"), ("keep", "bbr"), ("reno", "reno")])
def test_the_proxy_unpaces_its_loopback_legs(tmp_path: Path, relay: str, option: str | None, want: str) -> None:
    if netlab.can_netns():
        pytest.skip(str(netlab.can_netns()))
    ns = netlab.Netns()
    p: ProxyProc | None = None
    echo: EchoServer | None = None
    try:
        ns.run("sysctl", "-q", "-w", "net.ipv4.tcp_congestion_control=bbr")
        echo = ns.call(lambda: EchoServer())
        args = ["--listen", "tcp://127.0.0.1:0", "--forward", f"tcp://127.0.0.1:{echo.port}", "--relay", relay]
        if option is not None:
            args += ["--loopback-cc", option]
        p = ProxyProc(args, tmp_path / "proxy.log", prefix=ns.argv())
        p.ready()
        assert p.find(event="notice", message="listening")[0]["loopback_cc"] == ("keep" if want == "bbr" else want)
        s = ns.call(lambda: socket.create_connection(("127.0.0.1", p.tcp_port()), timeout=10))  # type: ignore[union-attr]
        with s:
            data = os.urandom(4 << 20)
            assert roundtrip(s, data) == data  # bulk both ways: the proxy sends on both legs
            assert ss_cc(ns, f"dport = :{echo.port}") == [want]  # the proxy's backend socket
            assert ss_cc(ns, f"sport = :{p.tcp_port()}") == [want]  # its accepted socket
            assert ss_cc(ns, f"dport = :{p.tcp_port()}") == ["bbr"]  # the client's own: not ours
        p.wait_record(event="close")
        assert p.stop() == 0
    finally:
        if p is not None:
            p.close()
        if echo is not None:
            echo.close()
        ns.delete()


def test_a_bad_name_is_a_one_line_usage_error(tmp_path: Path) -> None:
    p = ProxyProc(["--listen", "tcp://127.0.0.1:0", "--forward", "tcp://127.0.0.1:9", "--loopback-cc", "no such"],
                  tmp_path / "proxy.log")
    try:
        assert wait_for(lambda: p.proc.poll() is not None)
        assert p.proc.returncode == 2
        err = p.log_path.read_text().strip()
        assert "--loopback-cc 'no such': not a congestion control name" in err and "Traceback" not in err
    finally:
        p.close()
