"""``sockgate run``: bind, guard, drop privileges, and run a service with its sockets.

Order of work (each step fails before the next touches anything):

1. load the policy and compile the service's program completely (through the kernel seam);
   refuse what the backend cannot enforce: concurrent limits always (``run`` counts no open
   connections: only ``sockgate proxy`` enforces them), rate limits unless the program is
   eBPF (its buckets enforce them), any limit for Unix-only services; resolve
   ``--user``/``--group``;
2. open every listener (privileged ports work while still root); each TCP/UDP socket gets the
   filter between ``bind`` and ``listen``, so no SYN is ever queued unguarded;
3. run the command.

Process model (socket activation, the default). ``run`` cannot simply ``exec``: a process that
has exec'd the service is gone and cannot reload. So it forks once. The child moves the sockets
to fds 3, 4, ... (``linux.activation.place_fds``), drops privileges for good, and execs the
command with ``LISTEN_FDS``/``LISTEN_PID`` (its own pid, which exec keeps)/``LISTEN_FDNAMES``.
Every other descriptor is closed before exec (``activation.close_inherited``): one the
caller of ``run`` left open on a root-only file must not reach a ``--user`` command.
The parent — the supervisor — keeps its own descriptors of the same listening sockets (a
filter belongs to the socket, not the descriptor) and waits in ``sockgate.supervisor``
(a blocking loop on a signalfd, the interesting signals blocked):

* SIGHUP re-reads the policy, compiles it, and swaps the filter on every socket in one
  transaction of the kernel seam (``Kernel.apply``): one ``setsockopt`` each, atomic (the
  kernel replaces the program under RCU), and if one fails the sockets already changed get
  their previous program back. Any error leaves the old filters in place and is reported on
  stderr; ``--forward-hup`` also passes SIGHUP on. With ``--lock`` each TCP/UDP filter is
  locked right after it is attached (``SO_LOCK_FILTER``): the command, which holds the same
  sockets and needs no capability to detach a filter, can no longer remove or replace its
  guard — and neither can a reload, so SIGHUP is refused with that reason;
* SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT are forwarded to the command
  (except those a terminal sent: it sent the command its own copy);
* when the command exits, the supervisor exits with its status (128+N for a signal N);
* every ``--guard-check`` seconds (10) it re-reads each TCP/UDP socket's filter: the command
  can detach it (``SO_DETACH_FILTER`` needs no capability), so a guard that vanished or was
  replaced is reported and put back (``--lock`` prevents the removal in the first place).

The supervisor keeps the privileges it started with so that it can read the policy again; it
never accepts a connection. With an eBPF guard it also hosts the refusal log (``RefusalHost``,
``refusallog.start_refusal_log`` on its loop): one line per refused source per interval, text
or JSON, to stderr, syslog or the journal. An exec failure (command not found, cannot
drop privileges) travels back over a close-on-exec pipe and becomes an error message.

``--inetd`` is the other model (``sockgate.inetd``): sockgate accepts each connection and runs the
command per connection. ``cli/run.py`` chooses between the two after ``prepare``, so this module
and ``inetd`` (which builds on ``Gate``) do not import each other.

Unix listeners get no address filter (a Unix peer has no address: a classic BPF filter would see
no network header and drop everything); their file mode/owner/group protect them, and in
``--inetd`` mode each connection is decided by its peer credentials. In socket-activation mode
the policy does not apply to them at all, and the startup line says so.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Callable, NoReturn, Sequence

from sockgate import cutoff
from sockgate.errors import AdapterError, PolicyError, SockgateError, UnsupportedInKernel, UsageError
from sockgate.kernel import BackendChoice, Kernel, Loaded, Slot, Step, default_kernel
from sockgate.kernel.ebpf import EbpfBackend, EbpfLoaded
from sockgate.linux import activation, privileges
from sockgate.linux.listen import Listener, open_listeners, tcp_syncookies
from sockgate.linux.signalfd import SigInfo
from sockgate.policy.ir import Policy
from sockgate.resolve import ResolvedService, resolve
from sockgate.policy.source import printable
from sockgate.log import LogFormat, LogSink
from sockgate.refusallog import DEFAULT_INTERVAL, RefusalMonitor, rule_labels, start_refusal_log
from sockgate.supervisor import Cancel, Loop, Notifier, SelectorLoop, Supervisor, failure_text
from sockgate.urls import SocketURL

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
)
# A terminal sends these to its whole foreground process group (si_code SI_KERNEL, from
# <asm-generic/siginfo.h>): the command got its own copy, so forwarding would double it.
SI_KERNEL = 0x80
TTY_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH)


SWEEP_INTERVAL = 60.0  # seconds between sweeps of expired bans (BanSweeper)

UNIX_INETD = "no address filter: each connection is decided by its peer credentials"
UNIX_ACTIVATION = (
    "no address filter and the policy is not applied to it (its file mode/owner/group protect"
    " it; --inetd or `sockgate proxy` decide Unix peers by their credentials)"
)


RUN_ADVICE = (
    "start `sockgate run` as root or with that capability, and give --user/--group for the"
    " command (the supervisor keeps the capability for reloads; the command runs without it)"
)


def _say(msg: str) -> None:
    print(printable(f"sockgate run: {msg}"), file=sys.stderr, flush=True)  # rule texts, peers' executables


GUARD_CHECK = 10.0


@dataclass
class RunConfig:
    load: Callable[[], Policy]  # reads the policy (again on every reload)
    service: str
    urls: tuple[SocketURL, ...]
    command: tuple[str, ...]
    user: str | None = None
    group: str | None = None
    inetd: bool = False
    max_conns: int = 40
    forward_hup: bool = False
    notify: bool = False
    say: Callable[[str], None] = field(default=_say)
    backend: BackendChoice = "auto"  # which kernel backend compiles the service (docs/ebpf.md)
    log_format: LogFormat = "text"  # the refusal log of an eBPF guard (refusallog.py)
    log_sink: LogSink = "stderr"
    refusal_interval: float = DEFAULT_INTERVAL  # seconds: one line per source per interval
    lock: bool = False  # SO_LOCK_FILTER after the attach: the command cannot remove its guard; no reloads
    keep_established: bool = False  # a reload leaves the connections it newly denies open (cutoff.py)
    guard_check: float = GUARD_CHECK  # seconds between checks that each socket still has its guard


class Gate:
    """The guarded listeners and the current policy; ``reload`` swaps the filter of every
    TCP/UDP listener in one transaction of the kernel seam (all of them, or none)."""

    def __init__(self, cfg: RunConfig, policy: Policy, kernel: Kernel | None = None) -> None:
        self.cfg = cfg
        self.policy = policy
        self.resolved = resolve(policy, cfg.service)  # the service the sockets enforce
        self.kernel = kernel or default_kernel()
        self.listeners: list[Listener] = []
        self.loaded: Loaded | None = None  # the program on the TCP/UDP sockets

    def guard_socket(self, sock: socket.socket) -> None:
        """Before ``listen``: the current program on one fresh TCP/UDP socket."""
        if sock.family != socket.AF_UNIX:
            if self.loaded is None:
                self.loaded = self._load(self.resolved)
            self.kernel.apply([Step(Slot(sock.fileno(), _where(sock), RUN_ADVICE), self.loaded)])
            if self.cfg.lock:
                self.kernel.lock(sock.fileno(), _where(sock))

    @property
    def inet(self) -> list[Listener]:
        return [lst for lst in self.listeners if not lst.url.is_unix]

    def describe(self) -> str:
        if self.loaded is None:
            return "no address filter (Unix sockets only)"
        p = self.loaded.compiled
        via = ", backend ebpf" if p.backend == "ebpf" else ""
        return f"service {p.service}, digest {p.digest}, {p.instructions} instructions{via}"

    def reload(self) -> bool:
        """Re-read, compile, swap. On any error the old filters stay; False is returned."""
        cfg = self.cfg
        if cfg.lock and self.inet:
            cfg.say("reload refused: the sockets' filters are locked (--lock), the policy they started with stays;"
                    " restart sockgate run to change it")
            return False
        try:
            self._swap(cfg.load())
        except PolicyError as e:
            cfg.say(f"reload failed, the previous policy stays in force:\n{e.render(caret=True)}")
            return False
        except Exception as e:  # noqa: BLE001 - a supervisor must survive any failed reload
            cfg.say(f"reload failed, the previous policy stays in force: {failure_text(e)}")
            return False
        cfg.say(f"reloaded: {self.describe()}, on {len(self.inet)} socket(s)")
        _say_notes(cfg, self.resolved, self)
        if not cfg.keep_established:
            self._end_denied()
        return True

    def _end_denied(self) -> None:
        """Abort the established connections the new policy denies (accepted ones keep the
        filter they were accepted under); said on stderr, a failure too."""
        listeners = [tcp_listener(lst.sock) for lst in self.inet if lst.sock.type == socket.SOCK_STREAM]
        try:
            ended = cutoff.end_denied(self.resolved, listeners)
        except SockgateError as e:
            self.cfg.say(f"established connections the new policy denies were not ended: {failure_text(e)}")
            return
        if ended:
            self.cfg.say(f"ended {ended} established connection(s) the new policy denies")

    def _swap(self, policy: Policy) -> None:
        """Compile and load, then one ``Kernel.apply`` over the TCP/UDP listeners: if one
        attach fails, the seam puts the previous program back on those already changed."""
        resolved = resolve(policy, self.cfg.service)
        if not self.inet:
            check_resolved(resolved, inet=False, backend=self.cfg.backend)
            self.policy, self.resolved = policy, resolved
            return
        loaded = self._load(resolved)
        self.kernel.apply([Step(Slot(lst.sock.fileno(), lst.address(), RUN_ADVICE), loaded) for lst in self.inet])
        self.policy, self.resolved, self.loaded = policy, resolved, loaded

    def check_guards(self) -> None:
        """Re-read each TCP/UDP socket's filter: one that is no longer the program this gate
        attached — the command, which holds the same sockets, may detach it without any
        capability — is reported and put back (a filter the command locked cannot be: said)."""
        loaded = self.loaded
        if loaded is None:
            return
        for lst in self.inet:
            slot = Slot(lst.sock.fileno(), lst.address(), RUN_ADVICE)
            try:
                info = self.kernel.read(slot.fd, lock=False)
                if info.state == "sockgate" and info.digest == loaded.compiled.digest:
                    continue
                self.kernel.apply([Step(slot, loaded)])  # before saying so: the line is the news that it is back
                self.cfg.say(f"the guard of {lst.address()} was removed or replaced (found {info.describe()}); put back")
            except SockgateError as e:
                self.cfg.say(f"the guard of {lst.address()} could not be put back: {failure_text(e)}")

    def _load(self, resolved: ResolvedService) -> Loaded:
        return self.kernel.load(self.kernel.compile(resolved, backend=self.cfg.backend))

    def close(self) -> None:
        for lst in self.listeners:
            lst.close()
        self.listeners = []


class RefusalHost:
    """The refusal log of the guard and its ban sweeps (``BanSweeper``), on the supervisor's
    loop: running while the sockets carry an eBPF program (a classic filter counts nothing), started or stopped when a reload
    changes the backend. It reads the service's pinned ring; a log that cannot start is said,
    and the guard stays (the log is what is lost, never the filter)."""

    def __init__(self, cfg: RunConfig, loop: Loop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.monitor: RefusalMonitor | None = None
        self.sweeper = BanSweeper(loop)

    def update(self, gate: Gate) -> None:
        loaded = gate.loaded
        self.sweeper.update(gate)
        if not isinstance(loaded, EbpfLoaded):
            self.close()
            return
        labels: dict[str, Sequence[str]] = {self.cfg.service: rule_labels(gate.resolved)}
        if self.monitor is not None:
            self.monitor.labels = labels
            return
        cfg = self.cfg
        try:
            self.monitor = start_refusal_log(self.loop, [cfg.service], cfg.log_format, cfg.log_sink, root=loaded.root,
                                             interval=cfg.refusal_interval, labels=labels)
        except SockgateError as e:
            cfg.say(f"no refusal log: {e}")
            return
        cfg.say(f"refusal log: {cfg.log_format} to {cfg.log_sink}, one line per refused source per {cfg.refusal_interval:g} s")

    def close(self) -> None:
        """Write what is pending and stop (the log and the ban sweeps)."""
        self.sweeper.stop()
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None


class BanSweeper:
    """Every ``SWEEP_INTERVAL`` seconds while the guard is eBPF, the service's expired bans
    deleted (``EbpfBackend.sweep_bans``): the ban tries are not LRU, and expired entries
    left in them would fill them until every new ban failed. A put that finds them full
    sweeps at once by itself (``BanMaps.put``); this keeps them from getting there."""

    def __init__(self, loop: Loop, interval: float = SWEEP_INTERVAL) -> None:
        self.loop = loop
        self.interval = interval
        self.gate: Gate | None = None
        self.cancel: Cancel | None = None

    def update(self, gate: Gate) -> None:
        if not isinstance(gate.loaded, EbpfLoaded):
            self.stop()
            return
        self.gate = gate
        if self.cancel is None:
            self.cancel = self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self.cancel = None
        gate = self.gate
        if gate is None or not isinstance(gate.loaded, EbpfLoaded):
            return
        for backend in gate.kernel.backends:
            if isinstance(backend, EbpfBackend):
                backend.sweep_bans(gate.loaded.compiled.service)
        self.cancel = self.loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        self.gate = None
        if self.cancel is not None:
            self.cancel()
            self.cancel = None


def tcp_listener(sock: socket.socket) -> cutoff.TcpListener:
    host, port = sock.getsockname()[:2]
    return cutoff.TcpListener(ipaddress.ip_address(host.split("%", 1)[0]), port)


def _say_notes(cfg: RunConfig, resolved: ResolvedService, gate: Gate | None = None) -> None:
    """hosts_options(5) options of the service that ``run`` does not carry out (``spawn``...),
    and what an eBPF guard of TCP sockets leaves to the proxy (``ebpf_notes``)."""
    for note in resolved.option_notes:
        cfg.say(f"note: {note}")
    if gate is not None and isinstance(gate.loaded, EbpfLoaded):
        tcp = any(not lst.url.is_unix and lst.url.is_stream for lst in gate.listeners)
        for note in ebpf_notes(resolved, tcp, tcp_syncookies() if tcp else None):
            cfg.say(f"note: {note}")


def ebpf_notes(resolved: ResolvedService, tcp: bool, syncookies: int | None) -> list[str]:
    """What the kernel does not do for a TCP service's rate limits (docs/ebpf.md): ``ban``
    after a per-source rate is not set from a SYN, whose source can be forged; and with
    ``net.ipv4.tcp_syncookies=2`` a replayed cookie ACK opens a connection without a SYN."""
    if not tcp:
        return []
    svc = resolved.service
    limited = [(f"{svc.span.file}:{svc.span.line}" if svc.span is not None else f"service {svc.name}", resolved.limits)]
    limited += [(f"{r.rule.span.file}:{r.rule.span.line}", r.limits) for r in resolved.rules]
    notes = [f"{where}: `ban` after a per-source rate is not set by the kernel for TCP (a SYN's source can be forged);"
             " such sources are refused by the rate, not banned — `sockgate proxy` bans after completed handshakes"
             for where, lim in limited if lim is not None and lim.ban_seconds and lim.rate_per_source is not None]
    if syncookies == 2 and any(lim is not None and (lim.rate_per_source or lim.rate_total) for _, lim in limited):
        notes.append("net.ipv4.tcp_syncookies=2: a replayed SYN-cookie ACK opens a connection without a SYN, past"
                     " the kernel's `limit rate`; strict per-source connection limits belong to `sockgate proxy`")
    return notes


def _where(sock: socket.socket) -> str:
    """A listener as its URL, for messages (before ``listen``: its bound address)."""
    kind = "tcp" if sock.type == socket.SOCK_STREAM else "udp"
    host, port = sock.getsockname()[:2]
    return f"{kind}://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{kind}://{host}:{port}"


def check_service(policy: Policy, service: str, inet: bool, backend: BackendChoice = "auto") -> None:
    """Refuse what ``run`` cannot enforce, before any socket is touched: with TCP/UDP
    listeners, anything the backend's compiler refuses (host names, principals, concurrent
    limits; rate limits unless eBPF enforces them); with Unix
    listeners only, connection limits (``run`` counts no connections: the command accepts
    them, or in ``--inetd`` mode each is decided alone)."""
    check_resolved(resolve(policy, service), inet, backend)


def check_resolved(resolved: ResolvedService, inet: bool, backend: BackendChoice = "auto") -> None:
    """``check_service`` for a service already resolved."""
    if inet:
        default_kernel().compile(resolved, backend=backend)
        return
    if not resolved.has_limits:
        return
    where = [f"{r.rule.span.file}:{r.rule.span.line}: {r.rule.text}" for r in resolved.rules if r.limits is not None]
    svc = resolved.service
    if resolved.limits is not None:
        at = f"{svc.span.file}:{svc.span.line}: " if svc.span is not None else ""
        where.append(f"{at}service {svc.name}: service-wide limits")
    raise UnsupportedInKernel(
        f"service {svc.name!r} has connection limits, which `sockgate run` does not enforce:\n  "
        + "\n  ".join(where) + "\nenforce this service with `sockgate proxy` instead"
    )


def prepare(cfg: RunConfig) -> tuple[Gate, privileges.Credentials | None]:
    """Steps 1 and 2 of the module docstring: everything checked, then every socket bound."""
    if not cfg.command:
        raise UsageError("no command to run: give it after '--'")
    if not cfg.urls:
        raise UsageError("nothing to listen on: give at least one --listen URL")
    if cfg.inetd:
        bad = [u.text for u in cfg.urls if not u.is_stream]
        if bad:
            raise UsageError(f"--inetd accepts connections: stream sockets only (tcp:, unix:), not {', '.join(bad)}")
    policy = cfg.load()
    resolved = resolve(policy, cfg.service)
    check_resolved(resolved, inet=any(not u.is_unix for u in cfg.urls), backend=cfg.backend)
    creds = privileges.credentials(cfg.user, cfg.group)
    privileges.preflight(creds)
    gate = Gate(cfg, policy)
    gate.listeners = open_listeners(cfg.urls, before_listen=gate.guard_socket)
    if gate.loaded is not None:
        cfg.say(gate.kernel.choose(cfg.backend).describe())  # which backend guards, and why (auto's probe)
    for i, lst in enumerate(gate.listeners):
        where = "" if cfg.inetd else f" as fd {activation.SD_LISTEN_FDS_START + i} ({lst.name})"
        guard_text = f"guarded: {gate.describe()}" + (", locked" if cfg.lock else "")
        if lst.url.is_unix:
            guard_text = "Unix socket, " + (UNIX_INETD if cfg.inetd else UNIX_ACTIVATION)
        cfg.say(f"listening on {lst.address()}{where}, {guard_text}")
    _say_notes(cfg, resolved, gate)
    return gate, creds


# ---------------------------------------------------------------------------------------------
# Socket activation: fork, exec in the child, supervise in the parent


RUN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGCHLD, *FORWARDED})


class RunLifecycle:
    """The command as the supervisor sees it: SIGHUP reloads the gate (and with
    ``--forward-hup`` reaches the command too), the other signals are forwarded, SIGCHLD
    reaps; ``sockgate run`` ends with the command, whenever it exits."""

    drain_timeout: float | None = None  # a stopping command takes the time it needs

    def __init__(self, gate: Gate, refusals: RefusalHost | None = None) -> None:
        self.gate = gate
        self.refusals = refusals
        self.pid = 0
        self.status: int | None = None

    def reload(self) -> None:
        self.gate.reload()
        if self.refusals is not None:
            self.refusals.update(self.gate)

    def stop(self) -> None:
        pass  # the signal itself is forwarded in on_signal

    def busy(self) -> bool:
        return self.status is None

    def abort(self) -> None:
        pass  # never called: no drain deadline

    def ended(self) -> int | None:
        return self.status

    def on_signal(self, info: SigInfo) -> None:
        sig = info.signo
        if sig == signal.SIGCHLD:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done == self.pid:
                self.status = exit_code(status)
        elif sig == signal.SIGHUP:
            if self.gate.cfg.forward_hup:
                _forward(self.pid, sig)
        elif not (info.code == SI_KERNEL and sig in TTY_SIGNALS):
            _forward(self.pid, sig)


def supervise(gate: Gate, creds: privileges.Credentials | None) -> int:
    cfg = gate.cfg
    loop = SelectorLoop()
    refusals = RefusalHost(cfg, loop)
    life = RunLifecycle(gate, refusals)
    sup = Supervisor(life, Notifier(cfg.notify, cfg.say), RUN_SIGNALS)
    sup.start(loop)
    try:
        life.pid = _spawn(gate, creds, sup.child_mask())
        refusals.update(gate)
        cfg.say(f"running {' '.join(cfg.command)} as pid {life.pid}")
        _every(loop, cfg.guard_check, gate.check_guards)
        sup.ready()
        loop.run()
        assert sup.status is not None
        return sup.status
    finally:
        refusals.close()
        sup.close()
        loop.close()


def _every(loop: SelectorLoop, period: float, work: Callable[[], None]) -> None:
    def tick() -> None:
        loop.call_later(period, tick)  # first: a failing pass must not end the checks
        work()

    loop.call_later(period, tick)


def _spawn(gate: Gate, creds: privileges.Credentials | None, child_mask: set[int]) -> int:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or _exits; covered by kernel tests
        os.close(read_end)
        _exec_child(gate, creds, child_mask, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        failure = r.read()
    if failure:
        os.waitpid(pid, 0)
        raise AdapterError(failure.decode(errors="replace"))
    return pid


def _exec_child(gate: Gate, creds: privileges.Credentials | None, mask: set[int], err: int) -> NoReturn:
    fds = [lst.fileno() for lst in gate.listeners]
    err = fcntl.fcntl(err, fcntl.F_DUPFD_CLOEXEC, max([err, *fds, 2 + len(fds)]) + 1)
    try:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores SIGPIPE/SIGXFSZ; exec keeps SIG_IGN
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        activation.place_fds(fds)
        activation.close_inherited(activation.SD_LISTEN_FDS_START + len(fds), keep=err)
        if creds is not None:
            privileges.drop(creds)
        env = activation.child_env(os.environ, [lst.name for lst in gate.listeners], os.getpid())
        env["SOCKGATE_SERVICE"] = gate.cfg.service
        cmd = gate.cfg.command
        try:
            os.execvpe(cmd[0], list(cmd), env)
        except OSError as e:
            raise AdapterError(f"cannot run {cmd[0]!r}: {e.strerror}") from None
    except BaseException as e:  # noqa: BLE001 - report anything to the parent, never return
        msg = str(e) if isinstance(e, SockgateError) else f"{type(e).__name__}: {e}"
        try:
            os.write(err, msg.encode() or b"child failed")
        finally:
            os._exit(127)


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it exited; SIGCHLD is pending and ends the supervisor


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N after signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)
