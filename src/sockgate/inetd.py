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
credentials and spawns; it never reads from a connection. One event loop
(``supervisor.SelectorLoop``) watches the listeners and the supervisor's signal descriptor:
SIGCHLD reaps, SIGHUP reloads, SIGTERM/SIGINT stop accepting, pass SIGTERM to the running
children and wait for them a short while. At most
``--max-conns`` commands run at once; at the limit the listeners are set aside and further
clients wait in the kernel's accept queue, which is what tcpserver ``-c`` does.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import signal
import socket
import subprocess

from sockgate.decide import decide_resolved
from sockgate.resolve.kernelpart import assume_unlearned
from sockgate.launcher import Gate, RefusalHost
from sockgate.linux import activation, peercred, privileges
from sockgate.linux.listen import Listener
from sockgate.linux.signalfd import SigInfo
from sockgate.peers import Peer
from sockgate.policy.source import escape
from sockgate.policy.ir import Policy
from sockgate.resolve import ResolvedService, resolve_service
from sockgate.supervisor import Notifier, SelectorLoop, Supervisor

STOP_GRACE_SECONDS = 5.0


def peer_env(conn: socket.socket, service: str, peer: Peer | None = None) -> dict[str, str]:
    """The tcpserver/unixserver environment for one accepted connection (``peer``: the Unix
    peer's credentials when already read)."""
    env = {"SOCKGATE_SERVICE": service}
    if conn.family == socket.AF_UNIX:
        p = peer if peer is not None else peercred.peer_of(conn.fileno())
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
    """The accept loop as the supervisor's ``Lifecycle``: SIGCHLD reaps (and may let the
    listeners back in), SIGTERM/SIGINT stop accepting and pass SIGTERM to the children, which
    get ``STOP_GRACE_SECONDS`` before they are killed."""

    drain_timeout: float | None = STOP_GRACE_SECONDS

    def __init__(self, gate: Gate, creds: privileges.Credentials | None, loop: SelectorLoop) -> None:
        self.gate = gate
        self.creds = creds
        self.loop = loop
        self.children: list[subprocess.Popen[bytes]] = []
        self.child_mask: set[int] = set()  # the signal mask each command gets back
        self.accepting = False
        self.stopping = False
        self._decided: tuple[Policy, ResolvedService] | None = None  # (the gate's policy, its service decided)
        self.refusals = RefusalHost(gate.cfg, loop)  # the refusal log, with an eBPF guard

    def open(self) -> None:
        for lst in self.gate.listeners:
            lst.sock.setblocking(False)
        self._update()

    def close(self) -> None:
        self._accepting(False)
        self.refusals.close()

    def _accepting(self, on: bool) -> None:
        if on == self.accepting:
            return
        for lst in self.gate.listeners:
            if on:
                self.loop.watch(lst.sock.fileno(), functools.partial(self._accept, lst))
            else:
                self.loop.unwatch(lst.sock.fileno())
        self.accepting = on

    def _update(self) -> None:
        """At most ``--max-conns`` commands at once: beyond, clients wait in the accept queue."""
        self._accepting(not self.stopping and len(self.children) < self.gate.cfg.max_conns)

    # -- Lifecycle -------------------------------------------------------------------------

    def reload(self) -> None:
        self.gate.reload()
        self.refusals.update(self.gate)

    def on_signal(self, info: SigInfo) -> None:
        if info.signo == signal.SIGCHLD:
            self._reap()
            self._update()

    def stop(self) -> None:
        self.stopping = True
        self._accepting(False)
        for c in self.children:
            with contextlib.suppress(ProcessLookupError):
                c.send_signal(signal.SIGTERM)

    def busy(self) -> bool:
        self._reap()
        return bool(self.children)

    def abort(self) -> None:
        for c in self.children:
            c.kill()
            c.wait()
        self.children = []

    def ended(self) -> int | None:
        return None

    # -- connections -----------------------------------------------------------------------

    def _accept(self, lst: Listener) -> None:
        if not self.accepting:  # set aside earlier in the same round of events
            return
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
        self._update()

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
                preexec_fn=self._in_child,
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

    def _in_child(self) -> None:
        """Between fork and exec: the signals the supervisor blocks are the command's again."""
        signal.pthread_sigmask(signal.SIG_SETMASK, self.child_mask)
        if self.creds is not None:
            privileges.drop(self.creds)

    def _unix_peer_if_allowed(self, conn: socket.socket) -> Peer | None:
        peer = peercred.peer_of(conn.fileno())
        d = decide_resolved(self._unlearned(), peer)
        if not d.allowed:
            self.gate.cfg.say(f"denied Unix peer {escape(peer.describe())}: {d.reason}")  # exe: the peer's choice
            return None
        return peer

    def _unlearned(self) -> ResolvedService:
        """The gate's service with ident and the server's name assumed as the answer that
        denies (never learned here), resolved once per policy the gate holds."""
        policy = self.gate.policy
        if self._decided is None or self._decided[0] is not policy:
            service = assume_unlearned(policy.service(self.gate.cfg.service), ident=True, server_name=True)
            self._decided = (policy, resolve_service(service))
        return self._decided[1]

    def _reap(self) -> None:
        self.children = [c for c in self.children if c.poll() is None]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in activation.ENV_VARS}


def serve(gate: Gate, creds: privileges.Credentials | None) -> int:
    """Accept and spawn until SIGTERM/SIGINT; returns the exit status (0)."""
    cfg = gate.cfg
    loop = SelectorLoop()
    server = _Server(gate, creds, loop)
    sup = Supervisor(server, Notifier(cfg.notify, cfg.say))
    sup.start(loop)
    try:
        server.child_mask = sup.child_mask()
        server.open()
        server.refusals.update(gate)
        cfg.say(f"running {' '.join(cfg.command)} per connection (inetd mode, at most {cfg.max_conns} at once)")
        sup.ready()
        loop.run()
        return sup.status or 0
    finally:
        server.close()
        sup.close()
        loop.close()
