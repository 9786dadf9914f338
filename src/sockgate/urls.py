"""Listen (and connect) URLs: ``tcp://HOST:PORT``, ``udp://...``, ``unix:PATH``, ``unix:@NAME``.

Pure: text in, a frozen ``SocketURL`` out, ``UsageError`` with what was expected and what was
found for anything else. Nothing is resolved or opened here (``sockgate.linux.listen`` does
that), so the proxy, ``sockgate run`` and the tests share one grammar::

    tcp://127.0.0.1:8080        one IPv4 address
    tcp://[::1]:8080            one IPv6 address (``[fe80::1%eth0]`` with a zone)
    tcp://:8080  tcp://*:8080   every address, IPv4 and IPv6 (one dual-stack socket)
    tcp://localhost:8080        a host name, resolved when the socket is opened
    udp://...                   the same forms for datagrams
    unix:/run/app.sock          a file-system Unix stream socket (relative paths too)
    unix:@app                   a Linux abstract socket (no file)
    unix+dgram:/run/app.sock    a Unix datagram socket

Query options (``?a=1&b=2``) tune the socket; each scheme accepts only its own, and an unknown
or repeated option is an error that lists the valid ones:

    name=NAME        the LISTEN_FDNAMES entry (default: derived from the scheme)
    backlog=N        listen(2) backlog for stream sockets (default 128)
    reuseport=1      SO_REUSEPORT (tcp, udp)
    v6only=0|1       IPV6_V6ONLY on an IPv6 socket (default: off for ``[::]``, on otherwise)
    mode=0660        file mode of a Unix socket file (octal)
    owner=USER       owner of a Unix socket file (name or number)
    group=GROUP      group of a Unix socket file (name or number)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from sockgate.errors import UsageError
from sockgate.intlist import is_number, number

Scheme = Literal["tcp", "udp", "unix", "unix+dgram"]
SCHEMES: tuple[Scheme, ...] = ("tcp", "udp", "unix", "unix+dgram")
DEFAULT_BACKLOG = 128

_COMMON = ("name",)
_OPTIONS: dict[str, tuple[str, ...]] = {
    "tcp": _COMMON + ("backlog", "reuseport", "v6only"),
    "udp": _COMMON + ("reuseport", "v6only"),
    "unix": _COMMON + ("backlog", "mode", "owner", "group"),
    "unix+dgram": _COMMON + ("mode", "owner", "group"),
}
# A DNS host name (RFC 1123 labels); anything else that is not an address literal is refused.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,255}$")  # sd_listen_fds_with_names: no ':' allowed
_ACCOUNT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?$")


@dataclass(frozen=True)
class SocketURL:
    """One parsed socket URL.

    ``host`` is ``None`` for "every address"; ``address`` is the literal when ``host`` is one
    (``None`` for a host name, resolved later). ``path`` is the Unix path, or the abstract name
    when ``abstract``. ``owner``/``group`` are kept as written (names or numbers)."""

    scheme: Scheme
    text: str
    host: str | None = None
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    zone: str | None = None
    port: int | None = None
    path: str | None = None
    abstract: bool = False
    name: str | None = None
    backlog: int = DEFAULT_BACKLOG
    reuseport: bool = False
    v6only: bool | None = None
    mode: int | None = None
    owner: str | None = None
    group: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.scheme in ("unix", "unix+dgram")

    @property
    def is_stream(self) -> bool:
        return self.scheme in ("tcp", "unix")

    @property
    def proto(self) -> Literal["tcp", "udp", "unix"]:
        """The policy protocol (service endpoints speak tcp/udp/unix)."""
        return "unix" if self.is_unix else self.scheme  # type: ignore[return-value]

    @property
    def all_addresses(self) -> bool:
        return not self.is_unix and (self.host is None or (self.address is not None and self.address.is_unspecified))

    @property
    def fd_name(self) -> str:
        """The LISTEN_FDNAMES entry: ``name=`` if given, else the scheme (``tcp``, ``unix``...)."""
        return self.name or self.scheme.replace("+", "-")

    def display(self) -> str:
        """A canonical rendering without options (``tcp://[::1]:80``, ``unix:@x``)."""
        if self.is_unix:
            return f"{self.scheme}:{'@' if self.abstract else ''}{self.path}"
        host = "" if self.host is None else self.host
        if self.address is not None and self.address.version == 6:
            host = f"[{self.address}{'%' + self.zone if self.zone else ''}]"
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.display()


def parse_url(text: str) -> SocketURL:
    """Parse one socket URL; raises ``UsageError`` naming the problem."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("empty socket URL: expected tcp://HOST:PORT, udp://HOST:PORT, unix:PATH")
    t = text.strip()
    scheme, sep, rest = t.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise UsageError(
            f"{text!r}: unknown socket URL scheme {scheme!r}; expected one of " + ", ".join(f"{s}:" for s in SCHEMES)
        )
    body, _, query = rest.partition("?")
    opts = _parse_query(text, query, _OPTIONS[scheme])
    if scheme in ("unix", "unix+dgram"):
        return _parse_unix(text, scheme, body, opts)
    return _parse_inet(text, scheme, body, opts)  # type: ignore[arg-type]


def parse_urls(texts: list[str] | tuple[str, ...]) -> tuple[SocketURL, ...]:
    """Parse several URLs; refuses the same address given twice."""
    urls = tuple(parse_url(t) for t in texts)
    seen: dict[str, str] = {}
    for u in urls:
        key = u.display()
        if key in seen and not (u.port == 0 and not u.is_unix):
            raise UsageError(f"{u.text!r}: the same socket as {seen[key]!r}")
        seen[key] = u.text
    return urls


def _parse_query(text: str, query: str, valid: tuple[str, ...]) -> dict[str, str]:
    opts: dict[str, str] = {}
    if not query:
        return opts
    for part in query.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = unquote(key)
        if key not in valid:
            raise UsageError(f"{text!r}: unknown option {key!r}; valid here: {', '.join(valid)}")
        if key in opts:
            raise UsageError(f"{text!r}: option {key!r} given twice")
        if not eq:
            raise UsageError(f"{text!r}: option {key!r} needs a value ({key}=...)")
        opts[key] = unquote(value)
    return opts


def _parse_inet(text: str, scheme: Literal["tcp", "udp"], body: str, opts: dict[str, str]) -> SocketURL:
    if not body.startswith("//"):
        raise UsageError(f"{text!r}: expected {scheme}://HOST:PORT, {scheme}://[IPV6]:PORT or {scheme}://:PORT")
    hostport = body[2:]
    if hostport.endswith("/"):
        hostport = hostport[:-1]
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise UsageError(f"{text!r}: missing ']' after the IPv6 address")
        host_text, after = hostport[1:close], hostport[close + 1 :]
        if not after.startswith(":"):
            raise UsageError(f"{text!r}: expected ':PORT' after ']', found {after!r}")
        port_text, bracketed = after[1:], True
    else:
        host_text, sep, port_text = hostport.rpartition(":")
        if not sep:
            raise UsageError(f"{text!r}: missing port; expected {scheme}://HOST:PORT")
        bracketed = False
    port = _port(text, port_text)
    host, address, zone = _host(text, host_text, bracketed)
    return SocketURL(
        scheme=scheme,
        text=text,
        host=host,
        address=address,
        zone=zone,
        port=port,
        name=_fd_name(text, opts),
        backlog=_int_opt(text, opts, "backlog", DEFAULT_BACKLOG, 1, 1 << 20),
        reuseport=_bool_opt(text, opts, "reuseport", False) or False,
        v6only=_bool_opt(text, opts, "v6only", None),
    )


def _port(text: str, port_text: str) -> int:
    if not is_number(port_text):
        raise UsageError(f"{text[:80]!r}: expected a port number 0-65535, found {port_text[:20]!r}")
    port = number(port_text, 0, 65535)
    if port is None:
        raise UsageError(f"{text[:80]!r}: port {port_text[:20]} out of range 0-65535")
    return port


def _host(
    text: str, host_text: str, bracketed: bool
) -> tuple[str | None, ipaddress.IPv4Address | ipaddress.IPv6Address | None, str | None]:
    if host_text in ("", "*") and not bracketed:
        return None, None, None
    if bracketed:
        addr_text, _, zone = host_text.partition("%")
        try:
            addr = ipaddress.IPv6Address(addr_text)
        except ValueError:
            raise UsageError(f"{text!r}: not an IPv6 address inside [...]: {host_text!r}") from None
        return str(addr), addr, (zone or None)
    try:
        v4 = ipaddress.IPv4Address(host_text)
    except ValueError:
        pass
    else:
        return str(v4), v4, None
    if ":" in host_text:
        raise UsageError(f"{text!r}: an IPv6 address must be in brackets: [{host_text}]:PORT")
    if not _HOSTNAME.match(host_text) or host_text.replace(".", "").isdigit():
        raise UsageError(f"{text!r}: not an IPv4 address or host name: {host_text!r}")
    return host_text.lower(), None, None


def _parse_unix(text: str, scheme: Literal["unix", "unix+dgram"], body: str, opts: dict[str, str]) -> SocketURL:
    path = unquote(body)
    if path.startswith("//"):  # unix:///abs/path, as some tools write it
        path = path[2:]
    abstract = path.startswith("@")
    if abstract:
        path = path[1:]
        if not path:
            raise UsageError(f"{text!r}: an abstract socket needs a name after '@'")
        if len(path.encode()) > 107:
            raise UsageError(f"{text!r}: an abstract name is at most 107 bytes, this one is {len(path.encode())}")
        if any(k in opts for k in ("mode", "owner", "group")):
            raise UsageError(f"{text!r}: mode/owner/group apply to socket files, not abstract sockets")
    elif not path:
        raise UsageError(f"{text!r}: missing path; expected {scheme}:PATH or {scheme}:@NAME")
    if "\0" in path:
        raise UsageError(f"{text!r}: a NUL byte in the path")
    return SocketURL(
        scheme=scheme,
        text=text,
        path=path,
        abstract=abstract,
        name=_fd_name(text, opts),
        backlog=_int_opt(text, opts, "backlog", DEFAULT_BACKLOG, 1, 1 << 20),
        mode=_mode_opt(text, opts),
        owner=_account_opt(text, opts, "owner"),
        group=_account_opt(text, opts, "group"),
    )


def _fd_name(text: str, opts: dict[str, str]) -> str | None:
    name = opts.get("name")
    if name is not None and not _NAME.match(name):
        raise UsageError(f"{text!r}: name {name!r} must be 1-255 letters, digits or _.@+- (no ':')")
    return name


def _int_opt(text: str, opts: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    v = opts.get(key)
    if v is None:
        return default
    n = number(v, lo, hi)
    if n is None:
        raise UsageError(f"{text[:80]!r}: {key} must be a number {lo}-{hi}, found {v[:20]!r}")
    return n


def _bool_opt(text: str, opts: dict[str, str], key: str, default: bool | None) -> bool | None:
    v = opts.get(key)
    if v is None:
        return default
    low = v.lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off"):
        return False
    raise UsageError(f"{text!r}: {key} must be 0 or 1, found {v!r}")


def _mode_opt(text: str, opts: dict[str, str]) -> int | None:
    v = opts.get("mode")
    if v is None:
        return None
    if not re.fullmatch(r"0?[0-7]{3,4}", v):
        raise UsageError(f"{text!r}: mode must be octal like 0660, found {v!r}")
    mode = int(v, 8)
    if mode > 0o7777:
        raise UsageError(f"{text!r}: mode {v} out of range")
    return mode


def _account_opt(text: str, opts: dict[str, str], key: str) -> str | None:
    v = opts.get(key)
    if v is None:
        return None
    if not _ACCOUNT.match(v):
        raise UsageError(f"{text!r}: {key} must be a user/group name or number, found {v!r}")
    return v
