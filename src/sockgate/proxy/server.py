"""The proxy process: open (or inherit) listeners, run the services, reload, drain, exit.

Life cycle of ``Proxy.serve()``:

1. **Compile everything first.** Each ``ProxySpec`` becomes a ``service.Runner`` and its kernel
   program is compiled before any socket is opened: a policy that does not compile changes
   nothing.
2. **Listeners.** Sockets passed by systemd (``LISTEN_FDS``/``LISTEN_FDNAMES``) are matched to
   listen URLs by name (the URL's ``name=``, default its scheme), else taken in order; the rest
   are opened (``sockgate.linux.listen``), with the filter attached *before* ``listen()`` so no
   SYN is ever queued on an unguarded socket.
3. **Serve** on one event loop per process (``loop.ProxyLoop``; uvloop if asked). ``--workers N`` forks N
   processes after the listeners exist; they share the listening sockets (and so the one
   filter on each), and the kernel hands each connection to one of them. Limits count per
   process, so services with limits or bans refuse ``--workers`` > 1. Workers may be pinned
   to a CPU each (``--cpu-affinity``, ``proxy.affinity``) and ask for the TCP connections their
   CPU processed (``--accept-by-cpu``, ``linux.cpus``).
4. **SIGHUP**: ``RELOADING=1``; the policy is loaded and every program compiled and loaded
   again; only if all of that succeeds are the filters replaced, on the same sockets, in one
   transaction of the kernel seam (all of them or none); only then are the services swapped,
   services that appeared opened and services that disappeared stopped accepting
   (``proxy.reload``). Live connections are never touched. Then ``READY=1``.
5. **SIGTERM/SIGINT**: ``STOPPING=1``, listeners closed, clients still waiting for a host-name
   lookup refused, live connections drain for at most ``drain_timeout`` seconds, the rest are
   reset; exit 0. Signals, notifications and the drain are ``sockgate.supervisor``'s: the
   ``Proxy`` is its ``Lifecycle`` in each serving process; with ``--workers`` the parent
   forwards (``ForwardingLifecycle``). Lookups still hanging in the C library are left to their daemon threads
   (``names``): nothing waits for them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from dataclasses import replace
from functools import partial
from typing import Callable, Sequence

from sockgate.errors import SockgateError, UsageError
from sockgate.kernel import Kernel, Loaded, Slot, Step, default_kernel
from sockgate.linux import activation, cpus
from sockgate.linux.listen import Listener, open_listener, take_over
from sockgate.linux.signalfd import SigInfo
from sockgate.log import Log
from sockgate.proxy import kernelbans
from sockgate.proxy import lane as lanes
from sockgate.proxy.loop import ProxyLoop
from sockgate.proxy.pacing import choose_cc
from sockgate.proxy.relay import PipePool
from sockgate.proxy.namecache import ReverseLookup
from sockgate.proxy.reload import Handover, Key, UnixName, run as run_reload, unix_name
from sockgate.proxy.service import PROXY_ADVICE, Runner
from sockgate.proxy.spec import ProxySettings, ProxySpec, tune_listener
from sockgate.refusallog import RefusalLogs
from sockgate.supervisor import AsyncioLoop, ForwardingLifecycle, Notifier, SelectorLoop, Supervisor
from sockgate.urls import SocketURL, parse_url

Loader = Callable[[], Sequence[ProxySpec]]
_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
_TICK = 0.5
_GC_THRESHOLD = 20000


def new_loop(use_uvloop: bool = False) -> asyncio.AbstractEventLoop:
    """The proxy's own loop (``loop.ProxyLoop``: fewer wake-ups and less Python per connection
    than uvloop or the standard loop, docs/benchmarks.md), or uvloop when asked and installed."""
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return ProxyLoop()


class Proxy:
    def __init__(
        self,
        plans: Sequence[ProxySpec],
        options: ProxySettings | None = None,
        log: Log | None = None,
        loader: Loader | None = None,
        workers: int = 1,
        cpus: Sequence[int] = (),
        accept_by_cpu: bool = False,
        reverse_lookup: ReverseLookup | None = None,
        use_uvloop: bool = False,
        inherit: bool = True,
        splice: bool = True,
        kernel: Kernel | None = None,
        relay: lanes.RelayChoice = "auto",
        loopback_cc: str = "auto",
    ) -> None:
        if not plans:
            raise UsageError("nothing to proxy: no service has both `listen` and `forward`")
        self.options = options or ProxySettings()
        self.log = log or Log()
        self.loader = loader
        self.workers = workers
        if cpus and len(cpus) != max(1, workers):
            raise UsageError(f"{len(cpus)} CPUs for {workers} workers: one each (proxy.affinity.worker_cpus)")
        self.cpus = tuple(cpus)  # the CPU of each worker in order (proxy.affinity); () unpinned
        self.accept_by_cpu = accept_by_cpu  # pinned workers steer their TCP listeners (_steer)
        self.cpu: int | None = None  # the CPU this process is pinned to (_pin)
        self.reverse_lookup = reverse_lookup
        self.use_uvloop = use_uvloop
        self.relay = lanes.choose(relay, use_uvloop)  # "c": the lane (proxy/lane.py), or "python"
        self.inherit = inherit
        self.pipes = PipePool(splice=splice, cc=choose_cc(loopback_cc))  # (proxy/pacing.py)
        self.kernel = kernel or default_kernel()
        self.runners: dict[Key, Runner] = {}
        self.retired: list[Runner] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.refusals: RefusalLogs | None = None  # the eBPF services' refusal log (run_loop)
        self.stopping = False
        self.is_child = False
        self.worker_index = 0  # in a worker: its number (0 is the first)
        self._check_workers(plans)
        self.plans = list(plans)

    def _check_workers(self, plans: Sequence[ProxySpec]) -> None:
        if self.workers > 1 and any(Runner.has_limits(p.service) for p in plans):
            raise UsageError("connection limits and bans need exact counts in one process: drop --workers")

    # -- opening --------------------------------------------------------------------------

    def open(self) -> None:
        """Compile and load every service's program, then open or inherit every listener (all
        or nothing)."""
        runners = [self.new_runner(p) for p in self.plans]
        for r in runners:
            r.loaded = self.kernel.load(r.compile())
            kernelbans.sync(self.kernel, r.loaded, r.admission)  # eBPF: its maps hold no ban of an earlier run
        inherited = self._inherited() if self.inherit else []
        opened: list[Listener] = []
        try:
            for r in runners:
                r.listeners = self._listeners_for(r, inherited)
                opened.extend(r.listeners)
                self.runners[r.plan.key] = r
            for fd_sock, name in inherited:
                self.log.notice(f"passed socket {name!r} matches no listen URL; closed")
                fd_sock.close()
        except BaseException:
            for lst in opened:
                lst.close()
            raise

    def loopback_cc(self) -> str:
        """The ``listening`` record's word on ``--loopback-cc``: what a bulk loopback leg gets."""
        return self.pipes.cc.decode() or "keep"

    def backend_text(self) -> str:
        """The kernel backend of the IP listeners' filters and why (the start-up line)."""
        return self.kernel.choose(self.options.backend).describe()

    def _inherited(self) -> list[tuple[socket.socket, str]]:
        return [(socket.socket(fileno=fd), name) for fd, name in activation.listen_fds()]

    def new_runner(self, spec: ProxySpec) -> Runner:
        return Runner(spec, self.options, self.log, self.pipes, self.reverse_lookup, self.kernel)

    def _guard(self, r: Runner, sock: socket.socket) -> None:
        """Put ``r``'s loaded program on a fresh IP socket (before ``listen``), and what its
        accepted sockets inherit (``service.tune_listener``)."""
        if sock.family != socket.AF_UNIX:
            assert r.loaded is not None
            self.kernel.apply([Step(Slot(sock.fileno(), _url_of(sock, "unknown").display(), PROXY_ADVICE), r.loaded)])
            try:
                tune_listener(sock)
            except OSError:
                pass  # not TCP: said once the runner starts

    def _listeners_for(self, r: Runner, inherited: list[tuple[socket.socket, str]],
                       skip_unix: bool = False, taken: dict[UnixName, Listener] | None = None) -> list[Listener]:
        guard = partial(self._guard, r)
        out: list[Listener] = []
        urls = list(r.plan.listen)
        try:
            if not urls and inherited:  # one-off mode under a socket unit: take them all
                while inherited:
                    s, name = inherited.pop(0)
                    guard(s)
                    out.append(Listener(_url_of(s, name), s))
            for url in urls:
                if taken and url.is_unix and unix_name(url) in taken:
                    out.append(taken.pop(unix_name(url)))  # a removed service's (hand_over)
                    continue
                if skip_unix and url.is_unix:
                    continue  # another worker binds the path (see start_fresh)
                match = next((i for i, (_, n) in enumerate(inherited) if n == url.fd_name), None)
                if match is None and inherited and all(n == "unknown" for _, n in inherited):
                    match = 0
                if match is not None:
                    s, _ = inherited.pop(match)
                    guard(s)
                    out.append(Listener(url, s))
                else:
                    if self.workers > 1 and not url.is_unix:
                        url = replace(url, reuseport=True)  # the other workers join its group
                    out.append(open_listener(url, before_listen=guard))
        except BaseException:
            for lst in out:
                lst.close()
            raise
        if not out and not (skip_unix and urls):
            raise UsageError(f"service {r.name}: no socket to listen on (give `listen` URLs or pass sockets)")
        return out

    # -- serving --------------------------------------------------------------------------

    def serve(self) -> int:
        self.open()
        if self.workers <= 1:
            if self.cpus:  # a list given with one worker: the proxy itself
                self._pin(self.cpus[0])
            return self.run_loop()
        return self._fork_workers()

    def addresses(self) -> list[str]:
        return [lst.address() for r in self.runners.values() for lst in r.listeners]

    def run_loop(self) -> int:
        # What exists now (modules, the compiled policy) lives as long as the process: keep
        # it out of every collection; and collect young objects less often (a connection's
        # objects are freed by reference counts, but asyncio's tasks and futures, name
        # lookups and exceptions still leave short-lived cycles).
        gc.freeze()
        gc.set_threshold(_GC_THRESHOLD, 20, 20)
        loop = new_loop(self.use_uvloop)
        relay = "python"
        if self.relay == "c" and isinstance(loop, ProxyLoop):
            lanes.attach(loop, self.pipes)
            relay = "c"
        asyncio.set_event_loop(loop)
        self.loop = loop
        done: asyncio.Future[None] = loop.create_future()
        # Signals are read from a descriptor the loop watches, so one that comes before the
        # loop runs (a SIGHUP right after READY, or to a worker still starting) waits in it.
        # The supervisor starts before any thread (name lookups): threads inherit the mask.
        sup = Supervisor(self, Notifier(not self.is_child, self.log.error), _SIGNALS)
        sup.start(AsyncioLoop(loop, done))
        if self.worker_index == 0:  # one refusal log, however many workers
            self.refusals = RefusalLogs(AsyncioLoop(loop, done), self.log.fmt, self.log.sink, self.options.refusal_interval,
                                        self.log.notice)
        try:
            for r in self.runners.values():
                self._steer(r.listeners)
                r.start(loop, r.listeners)
            self._log_refusals()
            loop.call_later(_TICK, self._tick)
            if not self.is_child:
                self.log.notice("listening", addresses=" ".join(self.addresses()), loop=type(loop).__module__, relay=relay,
                                backend=self.backend_text(), loopback_cc=self.loopback_cc(), **self._cpu_fields())
                self.log.flush()
                sup.ready()
            loop.run_until_complete(done)
            self.log.notice("stopped")
            return sup.status or 0
        finally:
            if self.refusals is not None:
                self.refusals.close()
            self.log.flush()
            sup.close()
            self.pipes.close()  # also the relays' epoll set, which the loop watches
            loop.close()
            asyncio.set_event_loop(None)

    def _tick(self) -> None:
        for r in list(self.runners.values()) + self.retired:
            r.housekeeping()
        lane = lanes.lane_of(self.loop)
        if lane is not None:  # the lane's connections, all services at once
            lane.sweep(self.options.connect_timeout, self.options.idle_timeout)
        self.retired = [r for r in self.retired if r.busy()]
        self.log.tick()
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_later(_TICK, self._tick)

    # -- reload ---------------------------------------------------------------------------

    # The supervisor's Lifecycle: reload, stop, busy, abort (drain_timeout, on_signal, ended).

    @property
    def drain_timeout(self) -> float:
        return self.options.drain_timeout

    def on_signal(self, info: SigInfo) -> None:
        pass  # HUP, TERM and INT are the supervisor's

    def ended(self) -> int | None:
        return None  # the proxy ends only when stopped

    def reload(self) -> None:
        if self.loader is not None:
            run_reload(self, self.kernel, self._wanted)
            self._log_refusals()

    def _log_refusals(self) -> None:
        """The refusal log brought to the services in force (those whose filter is eBPF)."""
        if self.refusals is not None:
            loaded = {r.name: r.loaded for r in self.runners.values() if r.loaded is not None}
            self.refusals.update(loaded, {r.name: r.resolved for r in self.runners.values()})

    def _wanted(self) -> Sequence[ProxySpec]:
        assert self.loader is not None
        plans = list(self.loader())
        self._check_workers(plans)
        return plans

    # The commit of a reload (proxy.reload): what it asks of the proxy.

    def hand_over(self, handovers: Sequence[Handover]) -> dict[Key, dict[UnixName, Listener]]:
        """Unix listeners of removed services given to fresh services on the same name
        (``listen.take_over``) rather than closed and bound again. Besides keeping the name
        and its queue, that spares the workers a race: a listener opened before they forked is
        held by all of them, and the first worker could not bind its name again until every
        other had closed it. Keyed by the fresh service."""
        out: dict[Key, dict[UnixName, Listener]] = {}
        for h in handovers:
            old = self.runners[h.source]
            lst = next((x for x in old.listeners if x.url.is_unix and unix_name(x.url) == h.name), None)
            if lst is None:
                continue
            try:
                new = take_over(lst, h.url, owns_file=self._owns_files(old))
            except SockgateError as e:  # it stays with the removed service, which closes it
                self.log.error(f"service {h.to.service.name}: {h.url.display()} not taken over: {e}")
                continue
            if old.accepting:
                old.unwatch(lst.sock)
            old.listeners.remove(lst)
            out.setdefault(h.to.key, {})[h.name] = new
        return out

    def retire(self, key: Key) -> None:
        r = self.runners.pop(key)
        r.stop_accepting(unlink=self._owns_files(r))
        self.retired.append(r)

    def start_fresh(self, r: Runner, loaded: Loaded, taken: dict[UnixName, Listener]) -> None:
        """Open and serve a service a reload added. A Unix path can be bound once: of the
        workers, only the first listens on a Unix listener added by a reload (those opened at
        start are shared by every worker). A worker after the first may so have no listener:
        it keeps the service all the same, so the next reload finds it and does not add it
        again."""
        assert self.loop is not None
        skip_unix = self.is_child and self.worker_index > 0
        r.loaded = loaded
        try:
            r.listeners = self._listeners_for(r, [], skip_unix, taken)
        except SockgateError as e:
            self.log.error(f"service {r.name} not started: {e}")
            return
        if skip_unix and len(r.listeners) < len(r.plan.listen):
            self.log.notice(f"service {r.name}: its new Unix listeners are served by the first worker only")
        r.opened_by_reload = True
        self.runners[r.plan.key] = r
        self._steer(r.listeners)
        r.start(self.loop, r.listeners)

    def _owns_files(self, r: Runner) -> bool:
        """Whether this process removes ``r``'s Unix socket files when it stops listening: the
        parent for what it opened before forking the workers, a worker for what it opened on
        a reload."""
        return not self.is_child or r.opened_by_reload

    # -- shutdown -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting; clients still waiting for a name lookup go with the listeners."""
        self.stopping = True
        for r in self.runners.values():
            r.stop_accepting(unlink=self._owns_files(r))
        for r in self._all():
            r.cancel_lookups()
        self.log.notice("stopping: draining connections", drain_timeout=self.options.drain_timeout)

    def _all(self) -> list[Runner]:
        return list(self.runners.values()) + self.retired

    def busy(self) -> bool:
        runners = self._all()
        for r in runners:
            for u in r.udp:
                u.close_all("shutdown")
        return any(r.busy() for r in runners)

    def abort(self) -> None:
        for r in self._all():
            r.abort_all("shutdown deadline")

    # -- workers --------------------------------------------------------------------------

    def _fork_workers(self) -> int:
        addresses = self.addresses()
        pids: list[int] = []
        sup = Supervisor(ForwardingLifecycle(pids), Notifier(True, self.log.error), _SIGNALS | {signal.SIGCHLD})
        loop = SelectorLoop()
        # Started before the fork: a signal to a worker that has no supervisor yet waits.
        sup.start(loop)
        try:
            for index in range(self.workers):
                try:
                    pid = os.fork()
                except OSError as e:  # (the finally stops the workers started)
                    raise SockgateError(f"cannot start worker {index + 1} of {self.workers}: {e.strerror or e}") from None
                if pid == 0:
                    sup.forget()
                    loop.close()
                    self._child(index)
                pids.append(pid)
            for r in self.runners.values():
                for lst in r.listeners:
                    lst.sock.close()  # only the workers accept; the files are unlinked at the end
            self.log.notice("listening", addresses=" ".join(addresses), workers=len(pids), backend=self.backend_text(),
                            loopback_cc=self.loopback_cc(), **self._cpu_fields())
            self.log.flush()
            sup.ready()
            loop.run()
            for r in self.runners.values():
                for lst in r.listeners:
                    lst.close()
            return sup.status or 0
        finally:
            for p in pids:  # normally all reaped already; never leave a worker behind
                try:
                    os.kill(p, signal.SIGKILL)
                    os.waitpid(p, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            sup.close()  # after the clean-up
            loop.close()

    def _child(self, index: int) -> None:
        """A worker: dies with its parent (PR_SET_PDEATHSIG), serves, never returns."""
        code = 1
        try:
            self.is_child = True
            self.worker_index = index
            _die_with_parent()
            if index > 0:
                self._own_listeners()
            if self.cpus:
                self._pin(self.cpus[index])
            code = self.run_loop()
        finally:
            os._exit(code)

    def _cpu_fields(self) -> dict[str, str]:
        """The ``listening`` record's word on pinning: each worker's CPU, in order."""
        if not self.cpus:
            return {}
        return {"cpus": ",".join(map(str, self.cpus)), **({"accept": "by-cpu"} if self.accept_by_cpu else {})}

    def _pin(self, cpu: int) -> None:
        """This process on ``cpu`` alone; a pin the kernel refuses (the CPU went offline, a
        cpuset changed since the start) leaves it unpinned and unsteered, and says so: it
        serves all the same. (A CPU taken offline later moves it: the kernel's doing.)"""
        try:
            cpus.pin(cpu)
        except SockgateError as e:
            self.log.error(f"worker {self.worker_index}: not pinned: {e}")
            return
        self.cpu = cpu

    def _steer(self, listeners: list[Listener]) -> None:
        """With ``--accept-by-cpu``, a pinned worker's own TCP ``SO_REUSEPORT`` listeners ask
        for the connections its CPU processed (``linux.cpus``: not UDP, where a flow would be
        split); shared listeners (Unix, passed) are left as they are."""
        if self.cpu is None or not self.accept_by_cpu:
            return
        for lst in listeners:
            if lst.url.reuseport and lst.sock.type == socket.SOCK_STREAM and lst.sock.family != socket.AF_UNIX:
                try:
                    cpus.steer(lst.sock, self.cpu)
                except SockgateError as e:  # the kernel's hash then spreads them, as unsteered
                    self.log.error(f"worker {self.worker_index}: {lst.address()} not steered: {e}")

    def _own_listeners(self) -> None:
        """Workers after the first open their own SO_REUSEPORT socket for each TCP/UDP listener
        the proxy opened (same address, same filter), so the kernel spreads connections over
        the workers' accept queues instead of waking every worker for each one. The first
        worker keeps the original; passed and Unix sockets stay shared."""
        for r in self.runners.values():
            mine: list[Listener] = []
            for lst in r.listeners:
                if not lst.url.reuseport:
                    mine.append(lst)
                    continue
                port = lst.sock.getsockname()[1]
                url = replace(lst.url, port=port)
                own = open_listener(url, before_listen=partial(self._guard, r))
                lst.sock.close()
                mine.append(own)
            r.listeners = mine


def _die_with_parent() -> None:
    import ctypes

    PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


def _url_of(sock: socket.socket, name: str) -> SocketURL:
    """A URL describing a passed socket (for logs and the listener record)."""
    local = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        text = local.decode(errors="replace") if isinstance(local, bytes) else str(local)
        body = "@" + text[1:] if text.startswith("\0") else text or "@unnamed"
        scheme = "unix" if sock.type == socket.SOCK_STREAM else "unix+dgram"
        return parse_url(f"{scheme}:{body}?name={name}") if name != "unknown" else parse_url(f"{scheme}:{body}")
    scheme = "tcp" if sock.type == socket.SOCK_STREAM else "udp"
    host = f"[{local[0]}]" if sock.family == socket.AF_INET6 else local[0]
    return parse_url(f"{scheme}://{host}:{local[1]}")

