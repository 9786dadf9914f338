"""``sockgate run --inetd``: accept each connection and run the command for it.

The command gets the connection on stdin and stdout (stderr stays sockgate's, as with
tcpserver) and the peer in its environment, with the names ucspi-tcp and ucspi-unix use:

* TCP: ``PROTO=TCP``, ``TCPREMOTEIP``, ``TCPREMOTEPORT``, ``TCPLOCALIP``, ``TCPLOCALPORT``
  (an IPv4 peer of a dual-stack socket is shown as IPv4, not ``::ffff:a.b.c.d``);
* Unix: ``PROTO=UNIX``, ``UNIXREMOTEPID``, ``UNIXREMOTEEUID``, ``UNIXREMOTEEGID``,
  ``UNIXLOCALPATH``;
* both: ``SOCKGATE_SERVICE``.

The kernel filter has already dropped denied TCP clients before their SYN was answered. Unix
clients cannot be filtered by address, so each Unix connection is decided here by its peer
credentials (``SO_PEERCRED``) against the same policy (``decide``): a denied one is closed
without running anything.

Each command is started as ``--user``/``--group`` (``privileges.drop`` between fork and exec,
verified). The acceptor itself keeps the privileges it started with, for the same reason the
supervisor does: a reload must read the policy again and, on kernels that keep TCP filters for
CAP_NET_ADMIN (Linux 6.x, commit 5d39580f68e6), swap the filter. It only accepts, reads peer
credentials and spawns; it never reads from a connection. One event loop (``selectors``) watches the listeners and a
signal wake-up pipe (``signal.set_wakeup_fd``): SIGCHLD reaps, SIGHUP reloads, SIGTERM/SIGINT
stop accepting, pass SIGTERM to the running children and wait for them a short while. At most
``--max-conns`` commands run at once; at the limit the listeners are set aside and further
clients wait in the kernel's accept queue, which is what tcpserver ``-c`` does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import selectors
import signal
import socket
import subprocess
import time
from types import FrameType

from sockgate.decide import Peer, decide
from sockgate.launcher import Gate
from sockgate.linux import activation, privileges
from sockgate.linux.listen import Listener

STOP_GRACE_SECONDS = 5.0


def peer_env(conn: socket.socket, service: str, peer: Peer | None = None) -> dict[str, str]:
    """The tcpserver/unixserver environment for one accepted connection (``peer``: the Unix
    peer's credentials when already read)."""
    env = {"SOCKGATE_SERVICE": service}
    if conn.family == socket.AF_UNIX:
        from sockgate.linux.peercred import peer_of

        p = peer if peer is not None else peer_of(conn.fileno())
        env.update(PROTO="UNIX", UNIXLOCALPATH=_unix_name(conn.getsockname()))
        if p.pid is not None:
            env["UNIXREMOTEPID"] = str(p.pid)
        if p.uid is not None:
            env["UNIXREMOTEEUID"] = str(p.uid)
        if p.gid is not None:
            env["UNIXREMOTEEGID"] = str(p.gid)
        return env
    rip, rport = conn.getpeername()[:2]
    lip, lport = conn.getsockname()[:2]
    env.update(
        PROTO="TCP",
        TCPREMOTEIP=_plain(rip),
        TCPREMOTEPORT=str(rport),
        TCPLOCALIP=_plain(lip),
        TCPLOCALPORT=str(lport),
    )
    return env


def _plain(ip: str) -> str:
    a = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return ip


def _unix_name(name: str | bytes) -> str:
    if isinstance(name, bytes):
        return "@" + name[1:].decode(errors="replace") if name.startswith(b"\0") else name.decode(errors="replace")
    return name


class _Server:
    def __init__(self, gate: Gate, creds: privileges.Credentials | None) -> None:
        self.gate = gate
        self.creds = creds
        self.children: list[subprocess.Popen[bytes]] = []
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.accepting = False
        self.stopping = False

    # -- setup -----------------------------------------------------------------------------

    def install(self) -> None:
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _noop)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        for lst in self.gate.listeners:
            lst.sock.setblocking(False)
        self._accepting(True)

    def uninstall(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        self.sel.close()
        self.wake_r.close()
        self.wake_w.close()

    def _accepting(self, on: bool) -> None:
        if on == self.accepting:
            return
        for lst in self.gate.listeners:
            if on:
                self.sel.register(lst.sock, selectors.EVENT_READ, lst)
            else:
                self.sel.unregister(lst.sock)
        self.accepting = on

    # -- the loop --------------------------------------------------------------------------

    def loop(self) -> int:
        while not self.stopping:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data is None:
                    self._signals()
                elif self.accepting:
                    self._accept(key.data)
            self._reap()
            self._accepting(not self.stopping and len(self.children) < self.gate.cfg.max_conns)
        return self._stop()

    def _signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            data = self.wake_r.recv(512)
            for signo in data:
                if signo == signal.SIGHUP:
                    self.gate.reload()
                elif signo in (signal.SIGTERM, signal.SIGINT):
                    self.stopping = True

    def _accept(self, lst: Listener) -> None:
        try:
            conn, _ = lst.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as e:  # EMFILE and friends: say so, keep serving
            self.gate.cfg.say(f"accept on {lst.address()}: {e.strerror}")
            return
        with conn:
            conn.setblocking(True)
            self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        cfg = self.gate.cfg
        try:
            peer = None
            if conn.family == socket.AF_UNIX:
                peer = self._unix_peer_if_allowed(conn)
                if peer is None:
                    return
            env = {**_clean_env(), **peer_env(conn, cfg.service, peer)}
            child = subprocess.Popen(
                list(cfg.command),
                stdin=conn.fileno(),
                stdout=conn.fileno(),
                env=env,
                close_fds=True,  # stdio only: as activation.close_inherited in socket-activation mode
                preexec_fn=self._become_user if self.creds is not None else None,
            )
        except subprocess.SubprocessError as e:
            cfg.say(f"cannot run {cfg.command[0]!r} as {self.creds.describe() if self.creds else 'this user'}: {e}")
            return
        except OSError as e:
            cfg.say(f"cannot run {cfg.command[0]!r}: {e.strerror or e}")
            return
        except Exception as e:  # noqa: BLE001 - one bad peer never stops the server
            cfg.say(f"connection dropped: {e}")
            return
        self.children.append(child)

    def _become_user(self) -> None:
        if self.creds is not None:
            privileges.drop(self.creds)

    def _unix_peer_if_allowed(self, conn: socket.socket) -> Peer | None:
        from sockgate.linux.peercred import peer_of

        peer = peer_of(conn.fileno())
        d = decide(self.gate.policy, self.gate.cfg.service, peer)
        if not d.allowed:
            self.gate.cfg.say(f"denied Unix peer {peer.describe()}: {d.reason}")
            return None
        return peer

    def _reap(self) -> None:
        self.children = [c for c in self.children if c.poll() is None]

    def _stop(self) -> int:
        self._accepting(False)
        for c in self.children:
            with contextlib.suppress(ProcessLookupError):
                c.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for c in self.children:
            try:
                c.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        return 0


def _noop(signum: int, frame: FrameType | None) -> None:
    """Signals only wake the loop (through the wake-up fd); the loop does the work."""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in activation.ENV_VARS}


def serve(gate: Gate, creds: privileges.Credentials | None) -> int:
    """Accept and spawn until SIGTERM/SIGINT; returns the exit status (0)."""
    server = _Server(gate, creds)
    server.install()
    cfg = gate.cfg
    cfg.say(f"running {' '.join(cfg.command)} per connection (inetd mode, at most {cfg.max_conns} at once)")
    if gate.cfg.notify:
        activation.ready()
    try:
        return server.loop()
    finally:
        if gate.cfg.notify:
            activation.stopping()
        server.uninstall()
