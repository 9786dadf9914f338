"""Name lookups at the edge: client text → ``Peer`` values for the pure engine.

The engine never resolves names (``decide.py``); whoever builds a ``Peer`` does it here,
through a ``NameService`` that tests replace with a ``StaticNameService``. The default
``SystemNameService`` asks the C library (``getaddrinfo``/``getnameinfo``: /etc/hosts, DNS...),
each lookup bounded by a timeout. A lookup that times out raises ``LookupTimedOut``: it is
*not* a lookup that found no name. libwrap waits for its resolver (resolv.conf ``timeout``
times ``attempts``) and decides with the name that comes back, so a caller must not decide
such a peer as nameless — ``sockgate check`` grants it only where every name would be let in
(``decide.decide_unnamed``). The bound is a thread per call that is abandoned
when it runs late, since libc cannot be interrupted; a caller that bounds its own threads (the
proxy's ``namecache.NameCache``) passes ``timeout=None`` and the calls are made directly.

A host name is trusted the way libwrap's ``sock_hostname`` trusts it: the reverse lookup of
the address gives a name, the forward lookup of that name must give the same canonical name
(``localhost`` excepted) and must list the address again. When any step fails after a name
was found, the name is *paranoid* (``Peer.name_verified=False``, hosts_access PARANOID); when
the reverse lookup fails, the name is unknown.

``peers_for_client`` follows tcpdmatch(8): an address is taken as given (and looked up in
reverse only when the policy has rules about names); a host name gives one peer per address
it resolves to, each with the name its reverse lookup verifies; ``unknown`` and
``paranoid`` stand for a client whose address and name are unknown, or whose name did not
verify. Unix credentials get their supplementary groups from the system's group database.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import queue
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, TypeVar

from sockgate.errors import SockgateError, UsageError
from sockgate.peers import Peer
from sockgate.policy.forward import unmapped_address
from sockgate.policy.ir import IPAddress

T = TypeVar("T")
DEFAULT_TIMEOUT = 5.0


class LookupTimedOut(SockgateError):
    """A lookup sockgate stopped waiting for; the resolver had not answered yet."""


# A peer, and why its host-name lookup was cut short (None: it finished, with or without a name)
Looked = tuple[Peer, "str | None"]


@dataclass(frozen=True)
class HostName:
    """What a reverse lookup learned: the name (None: unknown) and whether it verified."""

    name: str | None
    verified: bool = True


class NameService(Protocol):
    def addresses(self, name: str) -> tuple[IPAddress, ...]:
        """Forward lookup: the addresses of ``name`` (empty when it does not resolve)."""
        ...

    def host_name(self, address: IPAddress) -> HostName:
        """Reverse lookup of ``address``, confirmed forward as libwrap does."""
        ...


@dataclass(frozen=True)
class StaticNameService:
    """A resolver from dictionaries (tests): ``forward`` name → addresses, ``reverse``
    address → name. Names compare case-insensitively."""

    forward: dict[str, tuple[IPAddress, ...]] = field(default_factory=dict)
    reverse: dict[IPAddress, str] = field(default_factory=dict)

    def addresses(self, name: str) -> tuple[IPAddress, ...]:
        for k, v in self.forward.items():
            if k.lower() == name.lower():
                return v
        return ()

    def host_name(self, address: IPAddress) -> HostName:
        name = self.reverse.get(address)
        if name is None:
            return HostName(None)
        return HostName(name, address in self.addresses(name))


class SystemNameService:
    """The C library's resolver, each call bounded by ``timeout`` seconds (None: unbounded,
    made in the caller's thread)."""

    def __init__(self, timeout: float | None = DEFAULT_TIMEOUT):
        self.timeout = timeout

    def addresses(self, name: str) -> tuple[IPAddress, ...]:
        found = _bounded(lambda: _getaddrinfo(name), self.timeout)
        return found[1] if found else ()

    def host_name(self, address: IPAddress) -> HostName:
        name = _bounded(lambda: _getnameinfo(address), self.timeout)
        if not name:
            return HostName(None)
        try:
            ipaddress.ip_address(name)
            return HostName(name, False)  # a numeric "name": libwrap calls this paranoid
        except ValueError:
            pass
        found = _bounded(lambda: _getaddrinfo(name), self.timeout)
        if not found:
            return HostName(name, False)
        canonical, addrs = found
        if canonical and canonical.lower() != name.lower() and name.lower() != "localhost":
            return HostName(name, False)
        return HostName(name, unmapped_address(address) in {unmapped_address(a) for a in addrs})


def _getaddrinfo(name: str) -> tuple[str, tuple[IPAddress, ...]] | None:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM, flags=socket.AI_CANONNAME)
    except (OSError, UnicodeError):
        return None
    canonical = next((i[3] for i in infos if i[3]), "")
    out: list[IPAddress] = []
    for family, _, _, _, sa in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            a = unmapped_address(ipaddress.ip_address(str(sa[0]).split("%", 1)[0]))
            if a not in out:
                out.append(a)
    return canonical, tuple(out)


def _getnameinfo(address: IPAddress) -> str | None:
    try:
        host, _ = socket.getnameinfo((str(address), 0), socket.NI_NAMEREQD)
    except (OSError, UnicodeError):
        return None
    return host


def _bounded(fn: Callable[[], T], timeout: float | None) -> T:
    """``fn()`` in a daemon thread; ``LookupTimedOut`` when it does not finish within
    ``timeout``. With no timeout, ``fn()`` here."""
    if timeout is None:
        return fn()
    box: queue.Queue[T] = queue.Queue(maxsize=1)
    t = threading.Thread(target=lambda: box.put(fn()), name="sockgate-lookup", daemon=True)
    t.start()
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        raise LookupTimedOut(f"the name lookup did not finish within {timeout:g}s") from None


# ---------------------------------------------------------------------------------------------
# Clients as `sockgate check` names them


def parse_address(text: str) -> IPAddress | None:
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        return ipaddress.ip_address(t.split("%", 1)[0])
    except ValueError:
        return None


def peers_for_client(
    text: str,
    resolver: NameService | None,
    *,
    names: bool,
    user: str | None = None,
    server: IPAddress | None = None,
) -> tuple[Looked, ...]:
    """The peers ``text`` stands for (several when a host name has several addresses), each
    with why its host-name lookup was cut short (None: it was not). ``resolver`` None means no
    lookups at all; ``names`` says whether an address client needs its host name. Raises
    ``UsageError`` for a client that is neither an address nor a name that resolves."""
    kw: dict[str, object] = {"user": user, "server_address": server}
    if "@" in text[1:]:
        at = text.index("@", 1)
        kw["user"] = text[:at]
        text = text[at + 1 :]
    low = text.lower()
    if low == "unknown":
        return ((Peer(**kw), None),)  # type: ignore[arg-type]
    if low == "paranoid":
        return ((Peer(name_verified=False, **kw), None),)  # type: ignore[arg-type]
    addr = parse_address(text)
    if addr is not None:
        if names and resolver is not None:
            return (_named(addr, resolver, kw),)
        return ((Peer(address=addr, **kw), None),)  # type: ignore[arg-type]
    if not text or any(c.isspace() for c in text):
        raise UsageError(f"not an address or host name: {text!r}")
    if resolver is None:
        raise UsageError(f"client {text!r} is a host name, and name lookups are off (--no-resolve)")
    try:
        addrs = resolver.addresses(text)
    except LookupTimedOut as e:
        raise UsageError(f"client {text!r}: {e}") from None
    if not addrs:
        raise UsageError(f"client {text!r}: host name does not resolve")
    return tuple(_named(a, resolver, kw) for a in addrs)


def _named(addr: IPAddress, resolver: NameService, kw: dict[str, object]) -> Looked:
    try:
        hn = resolver.host_name(addr)
    except LookupTimedOut as e:
        return Peer(address=addr, **kw), str(e)  # type: ignore[arg-type]
    return Peer(address=addr, name=hn.name, name_verified=hn.verified, **kw), None  # type: ignore[arg-type]


def credentials_peer(uid: int, gid: int | None = None, exe: str | None = None, pid: int | None = None) -> Peer:
    """A Unix-socket peer with these credentials; its supplementary groups (and its primary
    group when ``gid`` is not given) come from the passwd/group database."""
    groups: frozenset[int] = frozenset()
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        pw = None
    if pw is not None:
        if gid is None:
            gid = pw.pw_gid
        try:
            groups = frozenset(os.getgrouplist(pw.pw_name, gid))
        except OSError:
            groups = frozenset()
    return Peer(uid=uid, gid=gid, groups=groups, exe=exe, pid=pid)
