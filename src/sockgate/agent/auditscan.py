"""The audit's look at the host: the files read, the daemons enrolled, every listener of theirs
borrowed, its filter read and its holders' memory maps read for libwrap — then the pure
``agent/audit.py`` says who enforces what.

It is the agent's look, reused: the policy through ``loading.load_policy`` (a bad file is a
``file:line:col`` error, nothing else runs), the super-servers' configurations through
``launchfiles.read_launches``, the sockets through ``observe.Observer`` — one inventory of
every listener, only the selected ones borrowed (``pidfd_getfd``, the cookie compared), the
holders whose names match identified under their pidfd, the filter read through the kernel
seam. Only our network namespace is seen (``ip netns exec NS sockgate ls …`` for another).
Without CAP_SYS_PTRACE the holders of other users' sockets are hidden, and a daemon would
look "not running": the audit refuses instead of guessing.

Each holder's map is read under the pidfd the socket was borrowed through (``procfs.libwrap``):
the pidfd is opened first, the map read, then the pidfd asked whether the process still lives
and the holder's descriptor asked whether it still is the socket. A process that exited, or
whose pid now names another, gives ``unknown``, never another process's libraries.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Mapping

from sockgate.agent import audit
from sockgate.agent.audit import HolderWrap, Row, Seen
from sockgate.agent.enrol import claims, daemon_names, identifies, impostor_among
from sockgate.agent.files import WatchingReader
from sockgate.agent.launchfiles import read_launches
from sockgate.agent.model import Endpoint, HolderInfo, Observed
from sockgate.agent.observe import AllPorts, Observer, still_holds
from sockgate.agent.superserver import is_superserver, launches_for
from sockgate.errors import AdapterError, SockgateError
from sockgate.kernel import Kernel, default_kernel
from sockgate.linux import pidfd, procfs
from sockgate.loading import load_policy
from sockgate.resolve import named_daemons


@dataclass(frozen=True)
class Sources:
    """Where the audit reads what the agent reads."""

    hosts_allow: str | None
    hosts_deny: str | None
    maps: Mapping[str, tuple[Endpoint, ...]]
    xinetd_conf: str | None = "/etc/xinetd.conf"
    inetd_conf: str | None = "/etc/inetd.conf"
    systemd_units: tuple[str, ...] = ()
    services_file: str = "/etc/services"


def run_audit(src: Sources, kernel: Kernel | None = None, proc: str = procfs.PROC) -> tuple[Row, ...]:
    """The audit's rows (``agent/audit.py``); raises ``PolicyError`` for a bad file."""
    reader = WatchingReader()
    policy = load_policy((), src.hosts_allow, src.hosts_deny, reader=reader, listdir=reader.listdir)
    if not procfs.sees_every_process(f"{proc}/self/status"):
        # a daemon whose descriptors are hidden from us would show as "no listener seen"
        raise AdapterError("the audit must see every process's sockets (root, with CAP_SYS_PTRACE); nothing was audited",
                           errno=errno.EPERM, target="sockgate ls --hosts-allow/--hosts-deny")
    daemons = named_daemons(policy)
    names = daemon_names(daemons, src.maps)
    if not names:
        return ()
    launches = read_launches(reader, src.xinetd_conf, src.inetd_conf, src.systemd_units, src.services_file)
    services = audit.enrolled(policy, daemons, src.maps, launches_for(launches, names))
    impostors: dict[int, tuple[str, Observed]] = {}
    superserved: dict[int, Observed] = {}

    def keep(o: Observed) -> bool:
        if claims(services, o) is not None:
            return True
        if (fake := impostor_among(services, o)) is not None:
            impostors[o.cookie] = (fake, o)
        elif any(is_superserver(h) for h in o.holders):
            superserved[o.cookie] = o
        return False

    observer = Observer(kernel or default_kernel(), proc, keep=keep, named=lambda h: identifies(names, h))
    with observer.scan(AllPorts()) as look:
        seen = [Seen(h.observed, wraps(h.observed, look.pidfds, proc)) for h in look.held.values()]
    return audit.audit(services, seen, launches, impostors.values(), superserved.values())


def wraps(o: Observed, pidfds: pidfd.PidfdCache, proc: str) -> tuple[HolderWrap, ...]:
    return tuple(holder_wrap(h, o.cookie, pidfds, proc) for h in o.holders)


def holder_wrap(h: HolderInfo, cookie: int, pidfds: pidfd.PidfdCache, proc: str) -> HolderWrap:
    """``h``'s libwrap reading, known to be the socket holder's (the module's docstring)."""
    try:
        pfd = pidfds.pidfd(h.pid)
    except SockgateError as e:
        return HolderWrap(h.pid, "unknown", why=str(e))
    found = procfs.libwrap(h.pid, proc)
    if pidfd.exited(pfd) or not still_holds(h, cookie, pidfds):
        return HolderWrap(h.pid, "unknown", why="it exited or let go of the socket while it was looked at")
    return HolderWrap(h.pid, found.state, found.path, found.why)
