"""Listeners held by a super-server for a daemon: which port runs which daemon, as the
super-server's configuration says, so that a hosts.allow line naming ``in.ftpd`` guards the
listener xinetd holds for it.

Under inetd, xinetd or systemd socket activation the daemon a hosts_access rule names does not
hold its listener: the super-server does, and the daemon (or tcpd in front of it) only ever
holds a connected socket. Enrolment by the holder's name (``enrol``) therefore never selects
that listener. Here the configurations are read for the port → daemon mapping, with the daemon
named as libwrap names it:

* xinetd (``xinetd.conf(5)``): the ``libwrap`` attribute when given, else the basename of
  ``server`` — or, with ``flags = NAMEINARGS`` (tcpd in front), of the first ``server_args``
  word; the port is ``port``, else the service's in services(5) for its ``protocol`` (else
  the socket type's: stream → tcp, dgram → udp); ``disable = yes`` and ``INTERNAL`` or
  ``REDIRECT`` services launch no daemon. ``includedir`` lists a directory's files (names
  with a dot or ending in ``~`` skipped, as xinetd does).
* inetd (``inetd.conf(5)``): ``service socktype proto wait user server argv0 args...``; the
  daemon is the basename of argv[0] (what tcpd and a libwrap daemon take as their name);
  ``internal`` and RPC services launch none.

* systemd (``systemd.socket(5)``): each ``NAME.socket`` unit's ``ListenStream`` (tcp) and
  ``ListenDatagram`` (udp) ports; the service it starts is ``Service=``, else ``NAME@.service``
  with ``Accept=yes``, else ``NAME.service``; the daemon is the basename of that service's
  ``ExecStart`` argv[0] (the second word with the ``@`` prefix). The unit directories are
  read in systemd's order, the first file of a name winning. Drop-ins (``systemd.unit(5)``)
  apply to both units: ``*.conf`` in ``NAME.d/``, the template's ``PREFIX@.socket.d/``, each
  dash prefix's ``a-b-.socket.d/`` and the type's ``socket.d/``, in every unit directory; a
  file name found twice is taken from the first directory in that order (``/etc`` before
  ``/run`` before ``/lib``, then the more specific name), and the files are applied after the
  unit in the order of their names — so ``ListenStream=`` (empty) in an override clears the
  unit's ports, as systemd does.

Each launch also says who would call libwrap for it (``Launch.wrap``), for the audit
(``agent/audit.py``): ``tcpd`` when tcpd is the server in front of the daemon; ``superserver``
when xinetd itself calls it (xinetd built with libwrap, as Debian's: the audit checks that the
process maps it), unless ``flags = NOLIBWRAP``; ``never`` for inetd without tcpd (its own
libwrap support, where built in, names the service, not the daemon), for systemd (no libwrap
since v214) and for a ``wait = yes`` stream service (the server accepts the connections itself:
no address is checked, xinetd.conf(5)).

A listener held by a super-server (``SUPERSERVERS``, by name, from root) whose port no
configuration maps to a daemon is not silently left: the agent reports it ("held by a
super-server for an unknown daemon", with the ``--map`` advice).

Pure: texts in, mappings out; the files are read by the caller (``agent/transaction.py``,
through the reader that also watches them).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping, Sequence

from sockgate.agent.model import Endpoint, HolderInfo
from sockgate.policy.hostmatch import fold
from sockgate.policy.ir import Endpoint as ServiceEndpoint

SUPERSERVERS = frozenset({"xinetd", "inetd", "systemd", "tcpd"})
Services = Mapping[str, tuple[ServiceEndpoint, ...]]
SYSTEMD_UNITS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")  # systemd's order
WrapBy = Literal["tcpd", "superserver", "never"]
_WAIT_STREAM = "wait = yes on a stream service: the server accepts connections itself, no address is checked"


@dataclass(frozen=True)
class Launch:
    """One daemon a super-server starts for connections on ``endpoint``."""

    daemon: str
    endpoint: Endpoint
    where: str  # "xinetd /etc/xinetd.d/ftp", for messages
    wrap: WrapBy = "never"  # who calls libwrap for its connections (the module's docstring)
    why: str = ""  # why nobody does (``never``), or the limit of the check


def is_superserver(h: HolderInfo) -> bool:
    """``h`` is named as a super-server is and runs as root (a user's process named
    ``xinetd`` is no super-server: its listener is its own)."""
    names = {fold(h.comm), fold(h.argv0 or "")}
    return h.euid == 0 and not names.isdisjoint(SUPERSERVERS)


def launches_for(launches: Iterable[Launch], daemons: Iterable[str]) -> dict[str, tuple[Endpoint, ...]]:
    """The endpoints super-servers listen on for each of ``daemons`` (libwrap's comparison)."""
    wanted = {fold(d): d for d in daemons}
    out: dict[str, list[Endpoint]] = {}
    for x in launches:
        d = wanted.get(fold(x.daemon))
        if d is not None and x.endpoint not in out.setdefault(d, []):
            out[d].append(x.endpoint)
    return {d: tuple(eps) for d, eps in out.items()}


# -- xinetd -----------------------------------------------------------------------------------


def parse_xinetd(text: str, path: str, services: Services,
                 include: Callable[[str], Iterable[tuple[str, str]]] = lambda d: ()) -> list[Launch]:
    """The daemons an xinetd configuration launches; ``include(dir)`` gives the (path, text)
    of each file an ``includedir`` names (the caller's reader)."""
    out: list[Launch] = []
    for kind, name, attrs in _xinetd_blocks(text):
        if kind == "includedir":
            for sub_path, sub_text in include(name):
                out += parse_xinetd(sub_text, sub_path, services)
        elif kind == "service":
            out += _xinetd_service(name, attrs, f"xinetd {path}", services)
    return out


def _xinetd_blocks(text: str) -> list[tuple[str, str, dict[str, list[str]]]]:
    """``(kind, name, attributes)`` for each ``service NAME { ... }`` and ``includedir DIR``."""
    blocks: list[tuple[str, str, dict[str, list[str]]]] = []
    current: dict[str, list[str]] | None = None
    header: tuple[str, str] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if current is None:
            words = line.split()
            if words[0] == "includedir" and len(words) == 2:
                blocks.append(("includedir", words[1], {}))
            elif words[0] in ("service", "defaults") and line.endswith("{"):
                header, current = (words[0], words[1] if len(words) > 2 else ""), {}
            elif words[0] in ("service", "defaults"):
                header = (words[0], words[1] if len(words) > 1 else "")
            elif line == "{" and header is not None:
                current = {}
            continue
        if line == "}":
            if header is not None:
                blocks.append((header[0], header[1], current))
            header, current = None, None
            continue
        attr, op, value = _assignment(line)
        if attr:
            values = value.split()
            if op == "+=":
                current[attr] = [*current.get(attr, []), *values]
            elif op == "-=":
                current[attr] = [v for v in current.get(attr, []) if v not in values]
            else:
                current[attr] = values
    return blocks


def _assignment(line: str) -> tuple[str, str, str]:
    for op in ("+=", "-=", "="):
        attr, sep, value = line.partition(op)
        if sep and attr.strip() and " " not in attr.strip():
            return attr.strip().lower(), op, value.strip()
    return "", "", ""


def _xinetd_service(name: str, a: Mapping[str, list[str]], where: str, services: Services) -> list[Launch]:
    def first(attr: str) -> str:
        return (a.get(attr) or [""])[0]

    flags = {f.upper() for f in a.get("flags", [])}
    types = {t.upper() for t in a.get("type", [])}
    if first("disable").lower() == "yes" or types & {"INTERNAL"} or a.get("redirect"):
        return []
    if first("libwrap"):
        daemon = first("libwrap")
    elif "NAMEINARGS" in flags:
        daemon = posixpath.basename(first("server_args"))
    else:
        daemon = posixpath.basename(first("server"))
    socket_type = first("socket_type").lower()
    proto = first("protocol").lower() or {"stream": "tcp", "dgram": "udp"}.get(socket_type, "")
    if not daemon or proto not in ("tcp", "udp") or "RPC" in types:
        return []
    wait = first("wait").lower() == "yes"
    wrap, why = _xinetd_wrap(flags, posixpath.basename(first("server")), wait and socket_type == "stream",
                             wait and proto == "udp")
    return [Launch(daemon, ep, where, wrap, why) for ep in _ports(first("port"), name, proto, services)]


def _xinetd_wrap(flags: set[str], server: str, wait_stream: bool, wait_dgram: bool) -> tuple[WrapBy, str]:
    if wait_stream:
        return "never", _WAIT_STREAM
    if "NAMEINARGS" in flags and server == "tcpd":
        return "tcpd", "tcpd is its server"
    if "NOLIBWRAP" in flags:
        return "never", "flags = NOLIBWRAP: xinetd calls no libwrap for it"
    return "superserver", "the first datagram only (wait = yes)" if wait_dgram else ""


# -- inetd ------------------------------------------------------------------------------------


def parse_inetd(text: str, path: str, services: Services) -> list[Launch]:
    """The daemons an inetd.conf launches (``service socktype proto wait user server argv...``)."""
    out: list[Launch] = []
    for raw in text.splitlines():
        fields = raw.split("#", 1)[0].split()
        if len(fields) < 7 or fields[5] == "internal":
            continue
        service = fields[0].rpartition(":")[2]  # [address:]service
        proto = fields[2].lower().rstrip("46")
        if proto not in ("tcp", "udp"):
            continue  # rpc/tcp, unix, ...
        daemon = posixpath.basename(fields[6])
        wrap, why = _inetd_wrap(fields[1] == "stream" and fields[3].split(".")[0] == "wait", fields[5])
        out += [Launch(daemon, ep, f"inetd {path}", wrap, why) for ep in _ports("", service, proto, services)]
    return out


def _inetd_wrap(wait_stream: bool, server: str) -> tuple[WrapBy, str]:
    if wait_stream:
        return "never", _WAIT_STREAM
    if posixpath.basename(server) == "tcpd":
        return "tcpd", "tcpd is its server"
    return "never", "tcpd is not its server"


# -- systemd ----------------------------------------------------------------------------------


UnitText = str | Sequence[str]  # a unit file, or it and its drop-ins in the order they apply


def dropin_dirs(unit: str) -> list[str]:
    """The drop-in directory names of ``unit``, most specific first (module doc)."""
    stem, dot, kind = unit.rpartition(".")
    if not dot or not stem:
        return []
    out = [f"{unit}.d"]
    at = stem.find("@")
    if 0 < at < len(stem) - 1:
        out.append(f"{stem[:at + 1]}.{kind}.d")
    out += [f"{stem[:i + 1]}.{kind}.d" for i in range(len(stem) - 1, 0, -1) if stem[i] == "-"]
    out.append(f"{kind}.d")
    return out


def parse_socket_unit(name: str, text: UnitText, where: str, service_text: Callable[[str], UnitText | None]) -> list[Launch]:
    """The daemon socket unit ``name`` (``sshd.socket``) starts on each of its IP ports;
    ``text`` the unit (with its drop-ins), ``service_text(unit)`` a service unit's (None: not
    found)."""
    socket = _unit(text).get("Socket", {})
    accept = (socket.get("Accept") or ["no"])[-1].lower() in ("yes", "true", "1", "on")
    stem = name.removesuffix(".socket")
    service = (socket.get("Service") or [""])[-1] or (f"{stem}@.service" if accept else f"{stem}.service")
    found = service_text(service)
    exec_start = [v for v in _unit(found or "").get("Service", {}).get("ExecStart", []) if v]
    daemon = _argv0(exec_start[0]) if exec_start else ""
    if not daemon or "@" in stem:
        return []
    out: list[Launch] = []
    for key, proto in (("ListenStream", "tcp"), ("ListenDatagram", "udp")):
        for value in socket.get(key, []):
            port = value.rpartition(":")[2] if not value.startswith("/") else ""
            out += [Launch(daemon, ep, f"systemd {where}", "never", "systemd calls no libwrap")
                    for ep in _ports(port, "", proto, {})]
    return out


def _unit(texts: UnitText) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections (and its drop-ins', in order) → key → values in order (an empty
    value resets the list, as systemd does for list settings); continuation lines joined; a
    line before a file's first section header belongs to no section."""
    sections: dict[str, dict[str, list[str]]] = {}
    for text in [texts] if isinstance(texts, str) else texts:
        _sections(text, sections)
    return sections


def _sections(text: str, sections: dict[str, dict[str, list[str]]]) -> None:
    current: dict[str, list[str]] | None = None
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if sep and current is not None:
            value = value.strip()
            current[key.strip()] = [*current.get(key.strip(), []), value] if value else []


def _argv0(exec_start: str) -> str:
    """The basename of argv[0] of an ``ExecStart`` line (its ``-@:+!`` prefixes read)."""
    prefix = exec_start[:len(exec_start) - len(exec_start.lstrip("-@:+!"))]
    words = exec_start[len(prefix):].split()
    word = words[1] if "@" in prefix and len(words) > 1 else words[0] if words else ""
    return posixpath.basename(word)


def _ports(port: str, service: str, proto: str, services: Services) -> list[Endpoint]:
    """The port given, else the service's in services(5), else the service name as a number."""
    for number in (port, service):
        if number.isascii() and number.isdigit() and 1 <= int(number) <= 65535:
            return [Endpoint("tcp" if proto == "tcp" else "udp", int(number), int(number))]
    return [Endpoint("tcp" if proto == "tcp" else "udp", a, b)
            for e in services.get(service, ()) if e.proto == proto for a, b in e.ports]
