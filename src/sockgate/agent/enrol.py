"""Which service a socket belongs to: by its port, or by the process holding it.

A native service names endpoints (``tcp/22``) and takes every socket on them, whoever holds
it. A hosts_access rule names a daemon, and libwrap knew a daemon by the name tcpd or the
daemon itself gave it: the basename of ``argv[0]``, compared as ``strcasecmp`` does
(``hostmatch.fold``). A process that rewrote its argv (setproctitle: ``sshd: /usr/sbin/sshd -D
[listener]``) or whose command line cannot be read is still known by its ``comm``, the first
15 bytes of its name, so the daemon name is cut the same way before that comparison.

Enrolment is only ever by a literal name — one a hosts_access file names (the caller passes
what the resolve pass found) or a ``--map DAEMON=PROTO/PORT``. ``ALL``, a wildcard or a
``.suffix`` in a daemon list applies its rule to the enrolled daemons but never enrols a
process: otherwise one ``ALL: ALL`` line would put every process on the host under guard.
A name is something any process may take (``/proc/self/comm``, ``argv[0]``), so a name alone
does not make a process the daemon: a holder is enrolled only when it plausibly is — it runs
with effective uid 0, or the file it executes has the daemon's name and only root may change
it. A holder that has the name and neither of those is an impostor (``impostor``): its sockets
are never borrowed or guarded under the daemon's name, only reported.
Pure: names and values in, names and values out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Protocol, Sequence, TypeVar, Union, assert_never

from sockgate.agent.model import COMM_LEN, Endpoint, HolderInfo, Observed, Selector, Want
from sockgate.agent.superserver import SUPERSERVERS, is_superserver
from sockgate.policy.hostmatch import fold

_KEYWORDS = frozenset({"all", "local", "known", "unknown", "paranoid"})


@dataclass(frozen=True)
class Conflict:
    """A socket two services claim at the same precedence (say, held by two processes of two
    enrolled daemons): neither program goes on it; it is reported."""

    services: tuple[str, ...]

    @property
    def reason(self) -> str:
        return f"claimed by services {', '.join(self.services)}: not guarded until one of them lets go"


Selected = Union[Want, Conflict, None]


class Selecting(Protocol):
    """A service as selection sees it: a name and what it selects (``desired.ServiceSpec``,
    ``audit.Enrolled``)."""

    @property
    def name(self) -> str: ...
    @property
    def selector(self) -> Selector: ...


class Claimant(Selecting, Protocol):
    """A service the agent guards with a program."""

    @property
    def want(self) -> Want: ...


S = TypeVar("S", bound=Selecting)
Level = Literal["endpoint", "map", "superserver", "name"]
LEVELS: tuple[Level, ...] = ("endpoint", "map", "superserver", "name")


class Services(Protocol):
    """The desired state as selection sees it (``desired.Desired``)."""

    @property
    def services(self) -> Sequence[Claimant]: ...


def enrollable(name: str) -> bool:
    """A literal daemon name: not a keyword, wildcard, ``.suffix``/``prefix.`` or ``@host``
    form, not empty, no NUL or white space."""
    if not name or fold(name) in _KEYWORDS or name.startswith(".") or name.endswith("."):
        return False
    return not any(c in name for c in "*?[@\0") and not any(c.isspace() for c in name)


def daemon_names(literal: Iterable[str], maps: Mapping[str, tuple[Endpoint, ...]]) -> tuple[str, ...]:
    """The daemons to enrol: the literal names the policy's daemon lists give (``literal``,
    from the resolve pass) and the ``--map`` names, each once (by libwrap's case-folded
    comparison; the first spelling wins), in that order. Anything not a literal name is
    dropped here again, so an ``ALL`` that slipped through still enrols nothing."""
    out: dict[str, str] = {}
    for name in (*literal, *maps):
        if enrollable(name):
            out.setdefault(fold(name), name)
    return tuple(out.values())


def comm_name(daemon: str) -> str:
    """``daemon`` as the kernel keeps a process name: its first ``COMM_LEN`` bytes."""
    raw = daemon.encode("utf-8", "surrogateescape")[:COMM_LEN]
    return raw.decode("utf-8", "surrogateescape")


def process_matches(daemon: str, h: HolderInfo) -> bool:
    """Whether the process ``h`` is ``daemon`` as libwrap named it (``name_matches``) and
    plausibly is that daemon (``plausible``)."""
    return name_matches(daemon, h) and plausible(daemon, h)


def name_matches(daemon: str, h: HolderInfo) -> bool:
    """Whether ``h`` carries ``daemon``'s name as libwrap knew it: its argv[0]'s basename, else
    its comm (setproctitle'd or unreadable command lines). Anyone may choose these."""
    if h.argv0 is not None and fold(h.argv0) == fold(daemon):
        return True
    return fold(h.comm) == fold(comm_name(daemon))


def plausible(daemon: str, h: HolderInfo) -> bool:
    """Whether ``h`` could be ``daemon`` and not a user's process that took its name: effective
    uid 0, or its executable is a root-owned file, writable by root only, of that basename."""
    if h.euid == 0:
        return True
    if h.exe is None or not h.exe_root_owned:
        return False
    return fold(h.exe.rsplit("/", 1)[-1]) == fold(daemon)


def impostor(daemon: str, h: HolderInfo) -> bool:
    """``h`` has ``daemon``'s name but is not plausibly it (reported, never enrolled)."""
    return name_matches(daemon, h) and not plausible(daemon, h)


def select(desired: Services, sock: Observed) -> Selected:
    """The service ``sock`` belongs to (``claims``); two claims at one level are a ``Conflict``.
    (The build refuses two native services or two maps on one port, so in practice only
    holders conflict.)"""
    level = claims(desired.services, sock)
    if level is None:
        return None
    _, found = level
    return found[0].want if len(found) == 1 else Conflict(tuple(sorted(s.name for s in found)))


def claims(services: Sequence[S], sock: Observed) -> tuple[Level, tuple[S, ...]] | None:
    """The services claiming ``sock`` at the first level that has any, and that level.
    Precedence: a native service's endpoint, then a ``--map`` endpoint, then a port a
    super-server (``superserver.is_superserver``) holds for a daemon, then a holder that is an
    enrolled daemon."""
    for level in LEVELS:
        found = tuple(s for s in services if _claims_at(level, s.selector, sock))
        if found:
            return level, found
    return None


def _claims_at(level: Level, sel: Selector, sock: Observed) -> bool:
    match level:
        case "endpoint":
            return any(e.covers(sock.proto, sock.port) for e in sel.endpoints)
        case "map":
            return any(e.covers(sock.proto, sock.port) for e in sel.mapped)
        case "superserver":
            return (any(e.covers(sock.proto, sock.port) for e in sel.launched)
                    and any(is_superserver(h) for h in sock.holders))
        case "name":
            return sel.daemon is not None and any(process_matches(sel.daemon, h) for h in sock.holders)
        case _:
            assert_never(level)


def identifies(daemons: Iterable[str], holder: HolderInfo) -> bool:
    """Whether who ``holder`` is (uid, executable) is worth reading: it has the name of one of
    ``daemons``, or a super-server's while any daemon is enrolled."""
    names = list(daemons)
    if not names:
        return False
    if not {fold(holder.comm), fold(holder.argv0 or "")}.isdisjoint(SUPERSERVERS):
        return True
    return any(name_matches(d, holder) for d in names)


def impostor_of(desired: Services, sock: Observed) -> str | None:
    """The enrolled daemon whose name a holder of ``sock`` took without plausibly being it,
    when nothing selects ``sock`` (status lists it apart; it is never touched)."""
    return impostor_among(desired.services, sock)


def impostor_among(services: Sequence[Selecting], sock: Observed) -> str | None:
    """``impostor_of`` over any services that select."""
    if claims(services, sock) is not None:
        return None
    for s in services:
        if s.selector.daemon is not None and any(impostor(s.selector.daemon, h) for h in sock.holders):
            return s.name
    return None
