"""Where the agent's bans go: into the eBPF ban maps of a service in place, or compiled into a
classic program; and the ban state file they outlive the agent in.

Why two paths: an eBPF program looks every source up in its service's pinned ``bans4``/``bans6``
tries before any rule (kernel/banmaps.py), so a ban there is a map update that the next packet
sees — no compile, no load, no socket touched, and expiry is the program's own comparison. A
classic program has no maps: its bans are ranges compiled into it, so a ban is a recompile of
the service and a replace on each of its sockets (``Kernel.update_bans`` answers False). eBPF
services are therefore always compiled *without* bans (their digest does not move with the
book) and brought to the book with ``push``; classic ones are compiled with them
(``compile_for``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from typing import Callable, Literal, Mapping

from sockgate.agent.banbook import BanBook, BanEntry, BanStateError
from sockgate.bans import NEVER, BannedPrefix, Origin
from sockgate.errors import CompileError, SockgateError, UnsupportedInKernel
from sockgate.kernel import BackendChoice, Kernel
from sockgate.kernel.backend import Compiled, Loaded
from sockgate.loading import read_regular
from sockgate.log import Log
from sockgate.policy.ir import IPNetwork
from sockgate.resolve.model import ResolvedService
from sockgate.supervisor import Cancel, Loop

ORIGINS: Mapping[str, Origin] = {"manual": Origin.MANUAL, "fail2ban": Origin.FAIL2BAN, "hosts_deny": Origin.HOSTS_DENY,
                                 "crowdsec": Origin.CROWDSEC}
BansIn = Literal["maps", "program"]
# CrowdSec's changes are saved at most this often: every pull may change a few of 100,000
# decisions, and each save rewrites them all (a second of CPU). The LAPI keeps them anyway: an
# agent restarted reads them again at its startup pull; the file only bridges a restart while
# the LAPI is down, and is then at most this old. Other origins' bans are saved at once; ended
# bans are tidied away within the same delay (a state file's ended bans are dropped when read).
CROWDSEC_SAVE_S = 30.0


def bans_in(loaded: Loaded | None) -> BansIn:
    """Where ``loaded``'s bans live (status: ``bans_in``)."""
    return "maps" if loaded is not None and loaded.compiled.backend == "ebpf" else "program"


def compile_for(kernel: Kernel, r: ResolvedService, bans: tuple[BannedPrefix, ...], backend: BackendChoice) -> Compiled:
    """``r``'s program: without bans when it lands on eBPF (they go to its maps: ``push``),
    with them compiled in otherwise. Under ``auto``, a classic program the bans make too big
    is an eBPF one without them."""
    bare = kernel.compile(r, bans=(), backend=backend)
    if bare.backend == "ebpf" or not bans:
        return bare
    try:
        return kernel.compile(r, bans=[b.network for b in bans], backend=bare.backend)
    except (CompileError, UnsupportedInKernel):
        if backend != "auto":
            raise
        return kernel.compile(r, bans=(), backend="ebpf")


def push(kernel: Kernel, loaded: Mapping[str, Loaded], effective: Callable[[str], tuple[BannedPrefix, ...]]) -> None:
    """Every eBPF service's ban maps made its ``effective`` bans (in place)."""
    for name, program in loaded.items():
        if bans_in(program) == "maps":
            kernel.update_bans(program, effective(name))


def needs_program(loaded: Mapping[str, Loaded]) -> bool:
    """Whether some service holds its bans in its program (a ban change recompiles it)."""
    return any(bans_in(p) == "program" for p in loaded.values())


def entry(net: IPNetwork, seconds: int | None, origin: str, service: str | None, reason: str | None,
          now_ns: int) -> BanEntry[BannedPrefix]:
    expires = NEVER if seconds is None else now_ns + seconds * 1_000_000_000
    return BanEntry(BannedPrefix(net, expires, ORIGINS[origin]), None if service is None else frozenset({service}),
                    now_ns, reason)


def load_book(path: str | None) -> BanBook[BannedPrefix]:
    """The bans the state file holds (an agent restarted keeps them); a file that is not
    what the agent writes stops the start, naming the entry."""
    if path is None or not os.path.lexists(path):
        return BanBook()
    try:
        doc = json.loads(read_regular(path))
        return BanBook.from_json(doc, mono_clock(), _ban).expire(time.monotonic_ns())
    except ValueError as e:
        raise BanStateError(f"{path}: {e}") from None
    except SockgateError as e:
        raise BanStateError(f"{path}: {e}") from None


def save_book(path: str | None, book: BanBook[BannedPrefix], log: Log) -> str | None:
    """The book to the state file: a new file renamed over the old (never half written), the
    directory synced after the rename (a ban acknowledged is on disk). CrowdSec's decisions are
    saved too: an agent restarted while the LAPI is down keeps them (the first answer replaces
    them). The temporary file is a fresh name made with ``O_EXCL|O_NOFOLLOW`` (``mkstemp``):
    nothing planted at a predictable name is truncated or followed. Returns why it failed
    (shown by ``status``), None when saved."""
    if path is None:
        return None
    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                # dumps, not dump: dump encodes in Python a token at a time (100,000 CrowdSec
                # decisions: seconds); dumps is the C encoder, one write. One clock reading
                # converts every time.
                f.write(json.dumps(book.to_json(wall_clock())))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        why = f"bans not persisted: {path}: {e.strerror}"
        log.record("error", message=f"{why}; the bans stay in force but not saved")
        return why
    return None


class StateSaver:
    """The state file written now, or once within a delay (``CROWDSEC_SAVE_S``): the last
    book handed in is what a due save writes; ``flush`` writes it at once (the agent's stop)."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.path: str | None = None
        self.error: str | None = None  # why the last save failed (status)
        self._book: BanBook[BannedPrefix] | None = None
        self._pending: Cancel | None = None

    def save(self, path: str | None, book: BanBook[BannedPrefix], loop: Loop | None, within: float = 0.0) -> None:
        self.path, self._book = path, book
        if within <= 0 or loop is None:
            self.flush()
        elif self._pending is None:
            self._pending = loop.call_later(within, self._due)

    def _due(self) -> None:
        self._pending = None
        self.flush()

    def flush(self) -> None:
        if self._pending is not None:
            self._pending()
            self._pending = None
        if self._book is not None:
            self.error = save_book(self.path, self._book, self.log)
            self._book = None


def not_banned(book: BanBook[BannedPrefix], net: IPNetwork, origin: str) -> str:
    """The answer to an unban that lifted nothing: which origins hold ``net``, if any."""
    held = sorted({e.ban.origin.name.lower() for e in book.entries if e.ban.network == net})
    if not held:
        return f"{net} was not banned"
    return (f"{net} is not banned by {origin}; banned by {', '.join(held)} "
            f"(unban with --origin {held[0]}, or --origin any)")


def mono_to_wall(ns: int) -> float:
    return time.time() + (ns - time.monotonic_ns()) / 1e9


def wall_clock() -> Callable[[int], float]:
    """``mono_to_wall`` with both clocks read once, for converting many times together."""
    wall, mono = time.time(), time.monotonic_ns()
    return lambda ns: wall + (ns - mono) / 1e9


def mono_clock() -> Callable[[float], int]:
    """Wall-clock seconds → CLOCK_MONOTONIC ns, both clocks read once (a state file's times)."""
    wall, mono = time.time(), time.monotonic_ns()
    return lambda t: mono + int((t - wall) * 1e9)


def _ban(net: IPNetwork, expires_ns: int, origin: str) -> BannedPrefix:
    return BannedPrefix(net, expires_ns, Origin[origin.upper()])
