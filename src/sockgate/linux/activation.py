"""Socket activation, systemd style, both ways; and ``sd_notify``.

Passing (what ``sockgate run`` and the proxy do before ``exec``): the sockets become fds
3, 4, ... (``SD_LISTEN_FDS_START``) in the order given, inheritable, and the environment gets
``LISTEN_FDS=n``, ``LISTEN_PID=<pid of the process that will exec>`` and
``LISTEN_FDNAMES=a:b:...`` (sd_listen_fds(3)). ``place_fds`` does the renumbering in the
child between ``fork`` and ``exec``: every source is first duplicated above the highest fd
involved, so moving one fd into place never overwrites another source; ``close_inherited``
then closes every other descriptor, so the command gets stdio and its sockets only.

Receiving (``listen_fds``): the same checks as libsystemd's ``sd_listen_fds``: nothing unless
``LISTEN_PID`` is this process; the fds get ``FD_CLOEXEC`` so they do not leak into further
children; the variables are removed from the environment when asked, so a child of ours is not
mistaken for the target.

Notify (``notify``): one datagram with ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET``, a path or,
starting with ``@``, an abstract name (sd_notify(3)). ``RELOADING=1`` carries
``MONOTONIC_USEC`` as ``Type=notify-reload`` requires (systemd.service(5)).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from typing import Mapping, MutableMapping, Sequence

from sockgate.errors import UsageError
from sockgate.intlist import MAX_ID, number
from sockgate.linux._errors import translated

MAX_LISTEN_FDS = 65536  # more descriptors than any unit passes: a typo or a hostile environment

SD_LISTEN_FDS_START = 3  # <systemd/sd-daemon.h>
MAX_FD = 2**31 - 1  # close_range(2) takes ~0U; descriptors are ints
ENV_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def listen_env(names: Sequence[str], pid: int) -> dict[str, str]:
    """The three variables for ``len(names)`` sockets passed to process ``pid``."""
    for n in names:
        if not n or ":" in n or len(n) > 255:
            raise UsageError(f"fd name {n!r}: 1-255 characters, no ':'")
    return {"LISTEN_FDS": str(len(names)), "LISTEN_PID": str(pid), "LISTEN_FDNAMES": ":".join(names)}


def child_env(base: Mapping[str, str], names: Sequence[str], pid: int) -> dict[str, str]:
    """``base`` without stale activation variables, plus those for ``names`` and ``pid``."""
    env = {k: v for k, v in base.items() if k not in ENV_VARS}
    if names:
        env.update(listen_env(names, pid))
    return env


def place_fds(fds: Sequence[int], start: int = SD_LISTEN_FDS_START) -> None:
    """Make ``fds[i]`` available as fd ``start + i``, inheritable across exec.

    Meant for a freshly forked child just before exec: it overwrites whatever ``start..`` held.
    Sources stay open (they are close-on-exec, as Python creates every fd)."""
    if not fds:
        return
    top = max(max(fds), start + len(fds)) + 1
    temps = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top) for fd in fds]
    for i, tmp in enumerate(temps):
        os.dup2(tmp, start + i, inheritable=True)
        os.close(tmp)


def close_inherited(keep_below: int, keep: int | None = None) -> None:
    """Close every descriptor from ``keep_below`` up, but ``keep`` (one the caller still needs
    until exec, close-on-exec itself). For a freshly forked child just before exec: what this
    process inherited from whoever started it (a shell's ``3<file``, a parent's leak) is not
    close-on-exec and would reach the command, which may run as a less privileged user; only
    stdio and the sockets ``place_fds`` put at 3, 4, ... are meant for it. (``subprocess``
    does the same with its default ``close_fds=True``; ``os.closerange`` uses close_range(2),
    Linux 5.9, where it exists.)"""
    if keep is None or keep < keep_below:
        os.closerange(keep_below, MAX_FD)
        return
    os.closerange(keep_below, keep)
    os.closerange(keep + 1, MAX_FD)


def listen_fds(unset_environment: bool = True, environ: MutableMapping[str, str] | None = None) -> list[tuple[int, str]]:
    """The sockets passed to this process as ``(fd, name)``, as sd_listen_fds_with_names does.

    Empty when ``LISTEN_PID`` is absent or another process's. Names default to ``unknown``."""
    env = os.environ if environ is None else environ
    try:
        pid_text = env.get("LISTEN_PID")
        count_text = env.get("LISTEN_FDS")
        if pid_text is None or count_text is None:
            return []
        if number(pid_text, 1, MAX_ID) != os.getpid():
            return []
        count = number(count_text, 0, MAX_LISTEN_FDS)
        if count is None:
            raise UsageError(f"LISTEN_FDS={count_text[:20]!r} is not a number from 0 to {MAX_LISTEN_FDS}")
        names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
        if names and len(names) != count:
            raise UsageError(f"LISTEN_FDNAMES has {len(names)} names for LISTEN_FDS={count}")
        out = []
        for i in range(count):
            fd = SD_LISTEN_FDS_START + i
            with translated(f"passed fd {fd}"):
                os.set_inheritable(fd, False)
            out.append((fd, names[i] if names else "unknown"))
        return out
    finally:
        if unset_environment:
            for k in ENV_VARS:
                env.pop(k, None)


def notify(state: str | Mapping[str, str], environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"`` or a mapping) to ``$NOTIFY_SOCKET``; False if unset."""
    env = os.environ if environ is None else environ
    where = env.get("NOTIFY_SOCKET")
    if not where:
        return False
    text = state if isinstance(state, str) else "\n".join(f"{k}={v}" for k, v in state.items())
    if where.startswith("@"):
        addr: str | bytes = b"\0" + where[1:].encode()
    elif where.startswith("/"):
        addr = where
    else:
        raise UsageError(f"NOTIFY_SOCKET={where!r}: expected an absolute path or @abstract name")
    with translated(f"notify {where}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(text.encode(), addr)
    return True


def ready(environ: Mapping[str, str] | None = None) -> bool:
    return notify("READY=1", environ)


def reloading(environ: Mapping[str, str] | None = None) -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify({"RELOADING": "1", "MONOTONIC_USEC": str(usec)}, environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    return notify({"STATUS": text.replace("\n", " ")}, environ)
