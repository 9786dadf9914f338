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

* systemd (``systemd.socket(5)``): each socket unit's ``ListenStream`` (tcp) and
  ``ListenDatagram`` (udp) ports (``%i`` expanded for an enabled template instance); the
  service it starts is ``Service=``, else ``NAME@.service`` (an instance per connection) with
  ``Accept=yes``, else ``NAME.service``; the daemon is the basename of that service's
  ``ExecStart`` argv[0] (unquoted; the second word with the ``@`` prefix). Which file, with
  which drop-ins, a name loads is systemd's loader (``agent/systemdunits.py``: search path,
  masks, aliases, drop-in order), the syntax systemd's parser (``agent/unitsyntax.py``).
  Whatever cannot be settled exactly gives launches of an *unknown* daemon (``daemon`` empty,
  ``why`` the reason) on the unit's ports (every port when those are unsettled too): they
  claim nothing, and status shows the reason at a listener pid 1 holds there.

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

import ipaddress
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping, Sequence

from sockgate.agent.model import MAX_PORT, Endpoint, HolderInfo
from sockgate.agent.unitsyntax import (ANY_INSTANCE, Assignments, Masked, UnitName, Unsettled, dropin_names, exec_argv0,
                                       expand_instance, parse_boolean, parse_config, unit_name)
from sockgate.intlist import number
from sockgate.policy.hostmatch import fold
from sockgate.policy.ir import Endpoint as ServiceEndpoint

SUPERSERVERS = frozenset({"xinetd", "inetd", "systemd", "tcpd"})
Services = Mapping[str, tuple[ServiceEndpoint, ...]]
SYSTEMD_UNITS = (  # the system manager's unit search path, in its order (``systemd-analyze unit-paths``, systemd 252)
    "/etc/systemd/system.control", "/run/systemd/system.control", "/run/systemd/transient",
    "/run/systemd/generator.early", "/etc/systemd/system", "/etc/systemd/system.attached", "/run/systemd/system",
    "/run/systemd/system.attached", "/run/systemd/generator", "/usr/local/lib/systemd/system", "/lib/systemd/system",
    "/usr/lib/systemd/system", "/run/systemd/generator.late")
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
_ALL = (Endpoint("tcp", 1, MAX_PORT), Endpoint("udp", 1, MAX_PORT))
_LISTEN = {"ListenStream": "tcp", "ListenDatagram": "udp"}
_RESETS = frozenset({"ListenStream", "ListenDatagram", "ListenSequentialPacket", "ListenFIFO", "ListenSpecial",
                     "ListenNetlink", "ListenMessageQueue", "ListenUSBFunction"})
_IPV4_PORT = re.compile(r"([0-9.]+):([0-9]+)")
_IPV6_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)(?:%[A-Za-z0-9_.-]+)?\]:([0-9]+)")


def dropin_dirs(unit: str) -> list[str]:
    """The drop-in directory names one unit directory has for ``unit``, in systemd's order;
    the type's last (``unitsyntax.dropin_names``; ``agent/systemdunits.py`` puts every unit
    directory's names before any type directory)."""
    u = unit_name(unit)
    if u is None:
        return []
    return [*dict.fromkeys(f"{n}.d" for n in dropin_names(u)), f"{u.kind}.d"]


def parse_socket_unit(name: str, text: UnitText, where: str, service_text: Callable[[str], UnitText | None]) -> list[Launch]:
    """The daemon socket unit ``name`` (``sshd.socket``) starts on each of its IP ports, when
    it is settled; ``text`` the unit (with its drop-ins), ``service_text(unit)`` a service
    unit's (None: not found)."""
    u = unit_name(name)
    if u is None or u.kind != "socket":
        return []

    def settings(t: UnitText, at: str) -> Assignments:
        return [a for x in ([t] if isinstance(t, str) else t) for a in parse_config(x, at)]

    def service(n: UnitName) -> Assignments:
        found = service_text(str(n if n.instance != ANY_INSTANCE else n.template()))
        if found is None:
            raise Unsettled(f"unit {n} not found")
        return settings(found, str(n))

    try:
        own = settings(text, where)
    except Unsettled:
        return []
    return [x for x in socket_launches(u, own, where, service) if x.daemon]


def socket_launches(name: UnitName, settings: Assignments, where: str,
                    service: Callable[[UnitName], Assignments]) -> list[Launch]:
    """The launches of socket unit ``name`` loaded with ``settings``; ``service(name)`` the
    settings of a service unit (raises ``Unsettled``/``Masked``). What cannot be settled gives
    *unknown* launches (``daemon`` empty, ``why`` the reason) on the unit's ports, or on every
    port when even those are unsettled: never a guessed daemon."""
    try:
        ports = _listen(settings, name.instance)
    except Unsettled as e:
        return unknown_launches(where, f"systemd unit {name}: {e}")
    try:
        daemon = _daemon(name, settings, service)
    except Unsettled as e:
        return unknown_launches(where, f"systemd unit {name}: {e}", ports)
    except Masked as e:
        return unknown_launches(where, f"systemd unit {name}: its service is masked ({e})", ports)
    return [Launch(daemon, ep, f"systemd {where}", "never", "systemd calls no libwrap") for ep in ports]


def unknown_launches(where: str, why: str, ports: Sequence[Endpoint] = _ALL) -> list[Launch]:
    """Launches of an unknown daemon (``Launch.daemon`` empty) on ``ports``, saying why."""
    return [Launch("", ep, f"systemd {where}", "never", why) for ep in ports]


def unknown_why(launches: Iterable[Launch], proto: str, port: int) -> str:
    """Why the super-servers' configurations could not say which daemon ``proto/port`` starts
    (empty: nothing unsettled there)."""
    return "; ".join(dict.fromkeys(x.why for x in launches if not x.daemon and x.endpoint.covers(proto, port)))


def _listen(settings: Assignments, instance: str | None) -> list[Endpoint]:
    """The IP ports of ``ListenStream=``/``ListenDatagram=`` (an empty ``Listen*=`` clears
    every port, as systemd's ``socket_free_ports``)."""
    ports: list[Endpoint] = []
    for section, key, value in settings:
        if section != "Socket" or key not in _RESETS:
            continue
        if not value:
            ports = []
        elif key in _LISTEN:
            ports += _address_port(expand_instance(value, instance), _LISTEN[key])
    return list(dict.fromkeys(ports))


def _address_port(value: str, proto: str) -> list[Endpoint]:
    if value.startswith(("/", "@", "vsock:")):
        return []  # AF_UNIX, abstract, AF_VSOCK
    m = _IPV6_PORT.fullmatch(value) or _IPV4_PORT.fullmatch(value)
    port = m.group(2) if m else value
    n = number(port, 1, MAX_PORT)
    if m and not _is_address(m.group(1)) or n is None:
        raise Unsettled(f"the address {value!r} is not read here")
    return [Endpoint("tcp" if proto == "tcp" else "udp", n, n)]


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _daemon(name: UnitName, settings: Assignments, service: Callable[[UnitName], Assignments]) -> str:
    accept, chosen = False, None
    for section, key, value in settings:
        if section == "Socket" and key == "Accept":
            accept = parse_boolean(value)
        elif section == "Socket" and key == "Service":
            chosen = unit_name(value)
            if chosen is None or chosen.kind != "service" or chosen.instance == "" or "%" in value:
                raise Unsettled(f"Service={value!r} is no service unit name read here")
    if accept and chosen is not None:
        raise Unsettled("Service= with Accept=yes: systemd refuses the socket")
    if accept:
        chosen = UnitName(name.prefix, ANY_INSTANCE, "service")
    target = chosen or name.with_kind("service")
    commands: list[str] = []
    for section, key, value in service(target):
        if section == "Service" and key == "ExecStart":
            commands = [*commands, value] if value else []
    if len(commands) != 1 or ";" in commands[0].split():
        raise Unsettled(f"{target} has {len(commands)} ExecStart= commands, or several in one")
    return exec_argv0(commands[0])


def _ports(port: str, service: str, proto: str, services: Services) -> list[Endpoint]:
    """The port given, else the service's in services(5), else the service name as a number."""
    for text in (port, service):
        n = number(text, 1, 65535)
        if n is not None:
            return [Endpoint("tcp" if proto == "tcp" else "udp", n, n)]
    return [Endpoint("tcp" if proto == "tcp" else "udp", a, b)
            for e in services.get(service, ()) if e.proto == proto for a, b in e.ports]
