"""inetd: the environment's address forms, and the accept loop as a Lifecycle with fakes."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any, Callable

from sockgate.inetd import _plain, _Server, _unix_name
from sockgate.linux.signalfd import SigInfo


def test_plain_addresses() -> None:
    assert _plain("::ffff:192.0.2.1") == "192.0.2.1"
    assert _plain("2001:db8::1") == "2001:db8::1"
    assert _plain("fe80::1%eth0") == "fe80::1%eth0"
    assert _plain("192.0.2.1") == "192.0.2.1"


def test_unix_names() -> None:
    assert _unix_name(b"\0abstract") == "@abstract"
    assert _unix_name(b"/run/x.sock") == "/run/x.sock"
    assert _unix_name("/run/y.sock") == "/run/y.sock"


class Loop:
    def __init__(self) -> None:
        self.watched: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        del self.watched[fd]


class Child:
    def __init__(self) -> None:
        self.code: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)

    def wait(self) -> int:
        self.code = -9
        return -9


def server(max_conns: int = 1) -> tuple[Any, Loop, Any]:
    a = SimpleNamespace(fileno=lambda: 7, setblocking=lambda flag: None)
    gate: Any = SimpleNamespace(cfg=SimpleNamespace(max_conns=max_conns), listeners=[SimpleNamespace(sock=a)])
    loop = Loop()
    s = _Server(gate, None, loop)  # type: ignore[arg-type]
    s.open()
    return s, loop, a


def test_listeners_set_aside_at_the_limit_and_back_after_sigchld() -> None:
    s, loop, a = server()
    assert a.fileno() in loop.watched
    child = Child()
    s.children.append(child)
    s._update()
    assert loop.watched == {}
    child.code = 0
    s.on_signal(SigInfo(int(signal.SIGCHLD)))
    assert a.fileno() in loop.watched and s.children == []


def test_stop_terms_children_then_abort_kills() -> None:
    s, loop, _ = server(max_conns=5)
    child = Child()
    s.children.append(child)
    s.stop()
    assert loop.watched == {} and child.signals == [signal.SIGTERM] and s.busy()
    s.on_signal(SigInfo(int(signal.SIGCHLD)))
    assert loop.watched == {}  # stopping: never accepting again
    s.abort()
    assert child.signals[-1] == signal.SIGKILL and not s.busy() and s.ended() is None


def test_a_unix_peer_is_decided_with_ident_and_server_names_assumed_against_it(monkeypatch: Any) -> None:
    """inetd learns neither the ident user nor the server's name: a deny that needs either
    holds (``kernelpart.assume_unlearned``), as the proxy and ``check`` decide."""
    import sockgate.linux.peercred as peercred
    from sockgate.peers import Peer
    from sockgate.policy.hostsaccess import parse_hosts_access

    files = {"hosts.allow": "", "hosts.deny": "myd : mallory@ALL\n"}
    policy = parse_hosts_access("hosts.allow", "hosts.deny", read=files.__getitem__)
    said: list[str] = []
    gate: Any = SimpleNamespace(policy=policy, cfg=SimpleNamespace(service="myd", say=said.append))
    s = _Server(gate, None, Loop())  # type: ignore[arg-type]
    monkeypatch.setattr(peercred, "peer_of", lambda fd: Peer(uid=1000, gid=1000))
    assert s._unix_peer_if_allowed(SimpleNamespace(fileno=lambda: 9)) is None  # type: ignore[arg-type]
    assert said and said[0].startswith("denied Unix peer uid=1000 gid=1000: matched hosts.deny:1")
