"""The control protocol of ``sockgate agent``: one JSON object per line, a request and its
response in turn.

Newline-delimited JSON rather than a length prefix, so an operator can talk to the agent with
``socat - UNIX:/run/sockgate/agent.sock``. Every byte a client sends is hostile: a request line
is at most 64 KiB (``LineBuffer`` refuses a longer one before it is buffered whole), must be
UTF-8 without NUL, one JSON object with no duplicate keys, no NaN, no nesting past what the
requests need, the version and an ``id``, a known ``op`` and exactly that op's keys with their
types. Addresses go through ``ipaddress`` and a network with host bits set is refused with the
network it probably meant; durations are ``90s``, ``10m``, ``2h``, ``3d``. Every refusal is a
``ProtocolError`` with one line of text, which the server sends back as a ``usage`` error.

Hand-written over a schema library: the requests are six small objects, and the messages are
what the operator reads. Pure: bytes in, values out.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Union, assert_never, cast, get_args

from sockgate.bans import BanTooWide, check_width
from sockgate.errors import SockgateError
from sockgate.policy.ir import IPNetwork
from sockgate.policy.literals import unmap

VERSION = 1
MAX_REQUEST = 64 * 1024  # bytes in one request line, its newline included
MAX_RESPONSE = 16 * 1024 * 1024  # a status of many thousand sockets
MAX_ID = 2**53  # what every JSON reader keeps exact
MAX_REASON = 200
MAX_LIMIT = 100_000
MAX_DURATION = 10 * 365 * 86400
MAX_DEPTH = 4  # in a request; an object of scalars is depth 1
MAX_RESPONSE_DEPTH = 16  # the status document is 6 deep
Op = Literal["ping", "status", "ban", "unban", "reload", "bans"]
ErrorKind = Literal["usage", "denied", "policy", "runtime", "unsupported"]
BanOrigin = Literal["manual", "fail2ban", "hosts_deny"]  # what a client may say it is
UnbanOrigin = Literal["manual", "fail2ban", "hosts_deny", "any"]
OPS: tuple[str, ...] = get_args(Op)
ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([1-9][0-9]{0,9})([smhd])")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


class ProtocolError(SockgateError):
    """A message that is not what the protocol allows; ``kind`` as in the error response."""

    def __init__(self, message: str, kind: ErrorKind = "usage", id: int = 0) -> None:
        self.kind: ErrorKind = kind
        self.message = message
        self.id = id
        super().__init__(message)


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Reload:
    pass


@dataclass(frozen=True)
class Ban:
    net: IPNetwork
    seconds: int | None = None  # None: until lifted
    service: str | None = None  # None: every guarded service
    origin: BanOrigin = "manual"
    reason: str | None = None


@dataclass(frozen=True)
class Unban:
    net: IPNetwork
    service: str | None = None
    origin: UnbanOrigin = "manual"


@dataclass(frozen=True)
class Bans:
    origin: BanOrigin | None = None
    limit: int = 1000


Body = Union[Ping, Status, Reload, Ban, Unban, Bans]


@dataclass(frozen=True)
class Request:
    id: int
    body: Body

    @property
    def op(self) -> Op:
        return op_of(self.body)


@dataclass(frozen=True)
class Error:
    kind: ErrorKind
    message: str


@dataclass(frozen=True)
class Response:
    id: int
    result: Mapping[str, Any] | None = None
    error: Error | None = None
    v: int = field(default=VERSION, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def ok(id: int, result: Mapping[str, Any]) -> Response:
    return Response(id, result=result)


def failure(id: int, kind: ErrorKind, message: str) -> Response:
    return Response(id, error=Error(kind, one_line(message)))


def one_line(text: str) -> str:
    """``text`` on one line of printable characters (control characters shown escaped)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.replace("\n", " ")) or "?"


def op_of(body: Body) -> Op:
    match body:
        case Ping():
            return "ping"
        case Status():
            return "status"
        case Reload():
            return "reload"
        case Ban():
            return "ban"
        case Unban():
            return "unban"
        case Bans():
            return "bans"
        case _ as unreachable:
            assert_never(unreachable)


# -- framing -------------------------------------------------------------------------------------


class LineBuffer:
    """Sans-IO framing: feed bytes, get complete lines (without their newline). A line longer
    than ``limit`` raises ``ProtocolError`` as soon as that is known; the buffer is then spent
    and the connection should close."""

    def __init__(self, limit: int = MAX_REQUEST) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        while (end := self._buf.find(b"\n", 0, self.limit)) >= 0:
            lines.append(bytes(self._buf[:end]))
            del self._buf[: end + 1]
        if len(self._buf) >= self.limit:  # no newline within the limit: the line is too long
            self._buf.clear()
            raise ProtocolError(f"a line is longer than {self.limit} bytes")
        return lines

    @property
    def pending(self) -> int:
        """Bytes of a line not yet complete."""
        return len(self._buf)


def encode(msg: Request | Response) -> bytes:
    """One line: the JSON object and its newline (ASCII only, so no byte of it is a newline)."""
    doc = _request_json(msg) if isinstance(msg, Request) else _response_json(msg)
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def _request_json(r: Request) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": VERSION, "id": r.id, "op": r.op}
    match r.body:
        case Ban(net=net, seconds=seconds, service=service, origin=origin, reason=reason):
            doc |= {"addr": str(net), "for": None if seconds is None else f"{seconds}s", "service": service,
                    "origin": origin, "reason": reason}
        case Unban(net=net, service=service, origin=origin):
            doc |= {"addr": str(net), "service": service, "origin": origin}
        case Bans(origin=origin, limit=limit):
            doc |= {"origin": origin, "limit": limit}
        case Ping() | Status() | Reload():
            pass
    return doc


def _response_json(r: Response) -> dict[str, Any]:
    if r.error is None:
        return {"v": VERSION, "id": r.id, "ok": True, "result": dict(r.result or {})}
    return {"v": VERSION, "id": r.id, "ok": False, "error": {"kind": r.error.kind, "message": r.error.message}}


# -- parsing -------------------------------------------------------------------------------------

_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {  # op -> (required, optional)
    "ping": (frozenset(), frozenset()),
    "status": (frozenset(), frozenset()),
    "reload": (frozenset(), frozenset()),
    "ban": (frozenset({"addr"}), frozenset({"for", "service", "origin", "reason"})),
    "unban": (frozenset({"addr"}), frozenset({"service", "origin"})),
    "bans": (frozenset(), frozenset({"origin", "limit"})),
}
_COMMON = frozenset({"v", "id", "op"})


def parse_request(line: bytes) -> Request:
    """One request line (its newline removed); ``ProtocolError`` for anything else."""
    if len(line) >= MAX_REQUEST:
        raise ProtocolError(f"a line is longer than {MAX_REQUEST} bytes")
    doc = _object(line, "request")
    rid = _id(doc)
    try:
        version = doc.get("v")
        if type(version) is not int or version != VERSION:
            raise ProtocolError(f"unsupported protocol version {_show(version)} (this agent speaks {VERSION})")
        op = doc.get("op")
        if not isinstance(op, str) or op not in OPS:
            raise ProtocolError(f"unknown op {_show(op)}: expected one of {', '.join(OPS)}")
        required, optional = _KEYS[op]
        unknown = sorted(set(doc) - _COMMON - required - optional)
        if unknown:
            valid = ", ".join(sorted(required | optional)) or "none"
            raise ProtocolError(f"{op}: unknown key {_show(unknown[0])} (valid: {valid})")
        missing = sorted(required - set(doc))
        if missing:
            raise ProtocolError(f"{op}: missing key {_show(missing[0])}")
        return Request(rid, _body(op, doc))
    except ProtocolError as e:
        raise ProtocolError(e.message, e.kind, rid) from None


def _body(op: str, doc: dict[str, Any]) -> Body:
    match op:
        case "ping":
            return Ping()
        case "status":
            return Status()
        case "reload":
            return Reload()
        case "ban":
            return Ban(parse_network(_str(doc, "addr")), _duration(doc.get("for")), _service(doc.get("service")),
                       _ban_origin(doc.get("origin", "manual")), _reason(doc.get("reason")))
        case "unban":
            return Unban(parse_network(_str(doc, "addr")), _service(doc.get("service")), _unban_origin(doc.get("origin", "manual")))
        case _:
            origin = doc.get("origin")
            return Bans(None if origin is None else _ban_origin(origin), _limit(doc.get("limit", 1000)))


def parse_response(line: bytes) -> Response:
    """One response line, as strictly (a client trusts no more than the agent does)."""
    if len(line) >= MAX_RESPONSE:
        raise ProtocolError(f"a response is longer than {MAX_RESPONSE} bytes", "runtime")
    doc = _object(line, "response", MAX_RESPONSE_DEPTH)
    rid = _id(doc)
    if type(doc.get("v")) is not int or doc.get("v") != VERSION:
        raise ProtocolError(f"the agent speaks protocol version {_show(doc.get('v'))}, this client {VERSION}", "runtime", rid)
    if doc.get("ok") is True and isinstance(doc.get("result"), dict) and set(doc) == {"v", "id", "ok", "result"}:
        return Response(rid, result=doc["result"])
    err = doc.get("error")
    if (doc.get("ok") is False and isinstance(err, dict) and set(doc) == {"v", "id", "ok", "error"}
            and set(err) == {"kind", "message"} and err["kind"] in ERROR_KINDS and isinstance(err["message"], str)):
        return Response(rid, error=Error(err["kind"], one_line(err["message"])))
    raise ProtocolError("not a response: expected ok with a result object, or an error with kind and message", "runtime", rid)


def _object(line: bytes, what: str, depth: int = MAX_DEPTH) -> dict[str, Any]:
    if b"\0" in line:
        raise ProtocolError(f"a {what} may not contain NUL")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"a {what} must be UTF-8") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"not JSON: {one_line(str(e))[:120]}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"a {what} is one JSON object, not {type(doc).__name__}")
    _check_values(doc, what, depth)
    return doc


def _check_values(doc: object, what: str, max_depth: int) -> None:
    """No NUL in any string or key (``"\\u0000"`` decodes to one) and no nesting deeper than
    ``max_depth`` (no request needs any; a status answer some): walked without recursion."""
    todo: list[tuple[object, int]] = [(doc, 0)]
    while todo:
        v, depth = todo.pop()
        if depth > max_depth:
            raise ProtocolError(f"a {what} nested deeper than {max_depth} levels")
        if isinstance(v, str) and "\0" in v:
            raise ProtocolError(f"a {what} may not contain NUL")
        if isinstance(v, dict):
            todo += [(k, depth + 1) for k in v] + [(x, depth + 1) for x in v.values()]
        elif isinstance(v, list):
            todo += [(x, depth + 1) for x in v]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ProtocolError(f"duplicate key {_show(k)}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"not JSON: {name}")


def _id(doc: dict[str, Any]) -> int:
    rid = doc.get("id")
    if type(rid) is not int or not 0 <= rid <= MAX_ID:
        raise ProtocolError(f"id must be an integer from 0 to {MAX_ID}, found {_show(rid)}")
    return rid


def _show(v: object) -> str:
    text = json.dumps(v, ensure_ascii=True) if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _str(doc: dict[str, Any], key: str) -> str:
    v = doc.get(key)
    if not isinstance(v, str):
        raise ProtocolError(f"{key} must be a string, found {_show(v)}")
    return v


def parse_network(text: str) -> IPNetwork:
    """An address or a network in CIDR form; host bits set are refused with a suggestion."""
    if not text or len(text) > 64 or text.strip() != text or "%" in text:
        raise ProtocolError(f"not an address or network: {_show(text)}")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ProtocolError(f"not an address or network: {_show(text)}") from None
        raise ProtocolError(f"{text} has host bits set: did you mean {loose}?") from None
    if net.prefixlen == 0:
        raise ProtocolError(f"{net} would ban every address; give a narrower network")
    net = unmap(net)  # an IPv4-mapped source is that IPv4 client, as everywhere in sockgate
    try:
        check_width(net)
    except BanTooWide as e:
        raise ProtocolError(str(e)) from None
    return net


def parse_duration(text: object) -> int:
    """``90s``, ``10m``, ``2h``, ``3d`` in seconds: at least 1 s, at most 10 years."""
    if not isinstance(text, str) or not (m := _DURATION.fullmatch(text)):
        raise ProtocolError(f"not a duration: {_show(text)} (expected a number and s, m, h or d: 30s, 10m, 2h, 1d)")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_DURATION:
        raise ProtocolError(f"{text} is longer than 10 years; leave the duration out to ban until unbanned")
    return seconds


def _duration(v: object) -> int | None:
    return None if v is None else parse_duration(v)


def _service(v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _SERVICE.fullmatch(v):
        raise ProtocolError(f"not a service name: {_show(v)}")
    return v


def _origin(v: object, valid: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in valid:
        raise ProtocolError(f"origin must be one of {', '.join(valid)}, found {_show(v)}")
    return v


def _ban_origin(v: object) -> BanOrigin:
    return cast(BanOrigin, _origin(v, get_args(BanOrigin)))


def _unban_origin(v: object) -> UnbanOrigin:
    return cast(UnbanOrigin, _origin(v, get_args(UnbanOrigin)))


def _reason(v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > MAX_REASON or not v.isprintable():
        raise ProtocolError(f"reason must be printable text of at most {MAX_REASON} characters")
    return v


def _limit(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_LIMIT:
        raise ProtocolError(f"limit must be an integer from 1 to {MAX_LIMIT}, found {_show(v)}")
    return v
