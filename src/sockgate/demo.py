"""``sockgate demo``: the whole idea in a second, with no files and (for UDP) no privilege.

A built-in policy (``DEMO_POLICY``, parsed from this string: nothing is read from disk) allows
127.0.0.1 and denies everyone else. The demo opens a TCP and a UDP echo service on 127.0.0.1
(free ports), guards each socket with that policy (the filter goes on between ``bind`` and
``listen``), and serves them from threads. Then it looks at each from two source addresses —
binding a client to any 127/8 address needs no privilege on Linux — and shows side by side:

* what the decision engine says (``decide``), with the rule that decided as ``file:line: text``;
* what the kernel does: a probe (``sockgate.probe``: open / filtered for TCP, open /
  open|filtered for UDP, with the round trip or the time waited) and, when open, one echo.

The filters are classic BPF whatever this process may load (``backend="cbpf"``): a demo leaves
nothing behind, where eBPF would pin its maps and program in the bpf filesystem under the demo's
service name. It also reads each filter back from its socket (``guard_of``). Kernels with Linux commit
5d39580f68e6 let only CAP_NET_ADMIN attach a filter to a TCP socket; without it the demo says
so and shows UDP alone. The exit status is 0 when the kernel did what the engine said for every
source, 1 otherwise. Everything is closed on the way out, even on errors.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from sockgate.decide import Decision, decide
from sockgate.errors import AdapterError
from sockgate.guard import guard, guard_of
from sockgate.linux.listen import open_listener
from sockgate.peers import Peer
from sockgate.policy.ir import Policy
from sockgate.policy.parser import parse_policy
from sockgate.probe import probe_tcp, probe_udp
from sockgate.urls import parse_url

DEMO_FILE = "demo.policy"
DEMO_SERVICE = "echo"
DEMO_POLICY = """\
# sockgate demo: who may talk to the echo service on loopback
service echo {
    allow 127.0.0.1        # this machine's usual loopback address
    default deny           # everyone else: dropped by the kernel, never answered
}
"""
SOURCES = ("127.0.0.1", "127.0.0.2")
MESSAGE = b"hello through the guard\n"
# Linux 6.x kernels with commit 5d39580f68e6 refuse SO_ATTACH_FILTER on TCP sockets without it.
NEEDS_NET_ADMIN = (
    "this kernel lets only CAP_NET_ADMIN attach a filter to a TCP socket (UDP needs no"
    " privilege); run `sudo sockgate demo` to see TCP too"
)


@dataclass(frozen=True)
class Look:
    """One source's view of one service: the engine's decision and what the kernel did."""

    proto: str  # tcp | udp
    source: str
    decision: Decision
    where: str  # file:line: text of the deciding rule (or default)
    state: str  # open / closed / filtered / open|filtered
    rtt: float | None
    waited: float
    echoed: bool | None  # None: no echo tried (not open)

    @property
    def expected(self) -> str:
        """What the engine's decision means on the wire: a dropped SYN is ``filtered``, a
        dropped datagram is silence (``open|filtered``)."""
        if self.decision.allowed:
            return "open"
        return "filtered" if self.proto == "tcp" else "open|filtered"

    @property
    def agrees(self) -> bool:
        return self.state == self.expected and self.echoed is not False


@dataclass(frozen=True)
class Shown:
    """One guarded echo service: where it listened and its filter as read back, or why it was
    not shown (``skipped``)."""

    proto: str
    address: str = ""
    guard: str = ""
    skipped: str | None = None


@dataclass(frozen=True)
class Report:
    services: tuple[Shown, ...]
    looks: tuple[Look, ...]
    timeout: float

    @property
    def ok(self) -> bool:
        return bool(self.looks) and all(look.agrees for look in self.looks)


def demo_policy() -> Policy:
    return parse_policy(DEMO_POLICY, DEMO_FILE)


def deciding_line(policy: Policy, d: Decision) -> str:
    """``demo.policy:3: allow 127.0.0.1`` for the rule (or the default) that decided."""
    if d.rule is not None:
        return f"{d.rule.span.file}:{d.rule.span.line}: {d.rule.text}"
    span = policy.service(d.service).default_span
    where = f"{span.file}:{span.line}: " if span is not None else ""
    return f"{where}default {d.action}"


def run(timeout: float = 0.5) -> Report:
    """Start the guarded echo services, look at each from each source, tear it all down."""
    policy = demo_policy()
    shown: list[Shown] = []
    looks: list[Look] = []
    for proto in ("tcp", "udp"):
        s, ls = _one_service(policy, proto, timeout)
        shown.append(s)
        looks.extend(ls)
    return Report(tuple(shown), tuple(looks), timeout)


def _one_service(policy: Policy, proto: str, timeout: float) -> tuple[Shown, list[Look]]:
    try:
        lst = open_listener(parse_url(f"{proto}://127.0.0.1:0"), before_listen=lambda s: guard(policy, s, DEMO_SERVICE, backend="cbpf"))
    except AdapterError as e:
        if e.errno != errno.EPERM:
            raise
        return Shown(proto, skipped=NEEDS_NET_ADMIN), []
    serve = _tcp_echo_server if proto == "tcp" else _udp_echo_server
    with contextlib.closing(lst.sock), serve(lst.sock):
        port = lst.sock.getsockname()[1]
        looks = [_look(policy, proto, src, port, timeout) for src in SOURCES]
        return Shown(proto, f"127.0.0.1:{port}", guard_of(lst.sock).describe()), looks


def _look(policy: Policy, proto: str, source: str, port: int, timeout: float) -> Look:
    d = decide(policy, DEMO_SERVICE, Peer.parse(source))
    t0 = time.monotonic()
    if proto == "tcp":
        r = probe_tcp("127.0.0.1", port, source=source, timeout=timeout)
        echoed = _echo_once(source, port, timeout) if r.state == "open" else None
    else:
        r = probe_udp("127.0.0.1", port, source=source, timeout=timeout, payload=MESSAGE)
        echoed = (r.reply == MESSAGE) if r.state == "open" else None
    waited = time.monotonic() - t0
    return Look(proto, source, d, deciding_line(policy, d), r.state, r.rtt, waited, echoed)


def _echo_once(source: str, port: int, timeout: float) -> bool:
    with socket.socket() as c:
        c.settimeout(max(timeout, 1.0))
        try:
            c.bind((source, 0))
            c.connect(("127.0.0.1", port))
            c.sendall(MESSAGE)
            got = b""
            while len(got) < len(MESSAGE):
                chunk = c.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            return False
    return got == MESSAGE


@contextlib.contextmanager
def _in_thread(loop: Callable[[threading.Event], None]) -> Iterator[None]:
    stop = threading.Event()
    t = threading.Thread(target=loop, args=(stop,), name="sockgate-demo-echo", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)


def _tcp_echo_server(sock: socket.socket) -> contextlib.AbstractContextManager[None]:
    sock.settimeout(0.05)

    def serve(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:  # the 50 ms tick (TimeoutError) or the socket closing
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2.0)
                while data := conn.recv(4096):
                    conn.sendall(data)

    return _in_thread(serve)


def _udp_echo_server(sock: socket.socket) -> contextlib.AbstractContextManager[None]:
    sock.settimeout(0.05)

    def serve(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65536)
                sock.sendto(data, peer)
            except OSError:
                continue

    return _in_thread(serve)


# ---------------------------------------------------------------------------------------------
# Rendering


def render(report: Report) -> str:
    out = ["sockgate demo: guarded echo services on loopback", ""]
    out.append(f"policy {DEMO_FILE} (built in):")
    for i, line in enumerate(DEMO_POLICY.splitlines(), 1):
        out.append(f"  {i:3}  {line}")
    for svc in report.services:
        out.append("")
        if svc.skipped is not None:
            out.append(f"{svc.proto} echo service: not shown: {svc.skipped}")
            continue
        out.append(f"{svc.proto} echo service on {svc.address}")
        out.append(f"  filter read back from the socket: {svc.guard}")
        for look in (lk for lk in report.looks if lk.proto == svc.proto):
            out.append(f"  from {look.source:<10} engine: {look.decision.action!s:<6} {look.where}")
            out.append(f"  {'':15} kernel: {look.state:<13} {_kernel_detail(look)}")
    out.append("")
    if report.ok:
        out.append("the kernel did what the decision engine said, for every source: a denied source")
        out.append("got nothing back, not even a sign that the port exists.")
    elif not report.looks:
        out.append("nothing could be shown.")
    else:
        bad = ", ".join(f"{lk.proto} from {lk.source}" for lk in report.looks if not lk.agrees)
        out.append(f"MISMATCH: the kernel disagreed with the engine for {bad}.")
    return "\n".join(out)


def _kernel_detail(look: Look) -> str:
    rtt = f"{look.rtt * 1000:.2f} ms" if look.rtt is not None else "?"
    echo = "the echo came back" if look.echoed else "but the echo did NOT come back"
    if look.state == "open":
        what = "handshake" if look.proto == "tcp" else "reply"
        return f"{what} in {rtt}; {echo}"
    if look.state == "filtered":
        return f"no answer in {look.waited:.1f} s: the SYN was dropped in the kernel"
    if look.state == "open|filtered":
        return f"no answer in {look.waited:.1f} s: the datagrams were dropped in the kernel"
    return f"answered {look.state} after {rtt}"
