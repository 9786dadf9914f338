"""The C relay ("the lane", ``_lane.c``) as the proxy uses it: whether it is there, how it is
attached to the proxy's loop, and the backend addresses it connects to as raw bytes.

Why a C part at all: the interpreter is the short-connection path's bottleneck (the top
comment of ``_lane.c``, docs/benchmarks.md "Issue 16: the per-connection path in C"). Python
keeps every decision: the lane calls the runner's ``admit`` once per accepted client and its
``finished`` once per ended connection (``service.Runner``), except for a client from an IPv4
source whose admission Python remembered (nothing to count, nothing to ban) and handed to the
lane's ``Book``: the lane replays it, counts it and writes its two records itself (the comment
"the remembered path" in ``_lane.c``). Without the compiled module (a
build without a C compiler), on uvloop, or with ``--relay python``, the proxy accepts,
connects and relays in Python (``relay.py``), which the tests also use as the oracle.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, Callable, Literal

from sockgate.errors import UsageError
from sockgate.proxy.loop import ProxyLoop
from sockgate.proxy.relay import PipePool

try:
    from sockgate.proxy._lane import Book, Lane
except ImportError:  # built without a C compiler: the Python relay
    LANE_BUILT = False
else:
    LANE_BUILT = True

RelayChoice = Literal["auto", "c", "python"]


def choose(choice: RelayChoice, use_uvloop: bool) -> Literal["c", "python"]:
    """Which relay runs: ``c`` where it can (built, on the proxy's own loop), else ``python``;
    asking for ``c`` where it cannot run is a usage error."""
    if choice == "python":
        return "python"
    if choice == "c" and not LANE_BUILT:
        raise UsageError("--relay c: the C relay (sockgate.proxy._lane) was not built on this machine")
    if choice == "c" and use_uvloop:
        raise UsageError("--relay c runs on the proxy's own loop, not with --uvloop")
    return "c" if LANE_BUILT and not use_uvloop else "python"


def attach(loop: ProxyLoop, pipes: PipePool) -> "Lane":
    """A lane on ``loop``'s epoll set, waiting for it from now on; callbacks that raise are
    reported through the loop's exception handler (as ``loop.py`` reports a handler)."""
    def report(message: str, exc: BaseException | None) -> None:
        loop.call_exception_handler({"message": message, "exception": exc})

    lane = Lane(loop.epoll.fileno(), report, pipes.splice, pipes.size, pipes.keep, pipes.big, pipes.cc)
    loop.attach(lane)
    return lane


def new_book(memo: dict[str, tuple[str, str, str, str]], conns: dict[int, Any], tasks: set[Any], per_source: dict[str, int],
             add: Callable[[float, str], None], ending: Callable[[str, bool], str], max_connections: int,
             max_per_source: int) -> "Book":
    """The lane's view of one service's remembered admissions and of its counts (where the
    lane runs): ``memo`` maps an IPv4 source to its records' parts (``log.allowed_parts``,
    ``log.closed_parts``); ``conns``, ``tasks`` and ``per_source`` are the service's own."""
    def bounded(n: int) -> int:  # (a C long; more than any table could hold means no limit)
        return max(0, min(n, 1 << 62))

    return Book(memo, conns, tasks, per_source, add, ending, bounded(max_connections), bounded(max_per_source))


def lane_of(loop: asyncio.AbstractEventLoop | None) -> "Lane | None":
    """The lane attached to ``loop``, if any."""
    lane = loop.lane if isinstance(loop, ProxyLoop) else None
    return lane if LANE_BUILT and isinstance(lane, Lane) else None


SUN_PATH = 108  # sizeof(sockaddr_un.sun_path) on Linux


def sockaddr(family: int, address: Any) -> bytes:
    """``address`` (as ``socket.getaddrinfo`` or a Unix path gives it) as the bytes of a C
    ``struct sockaddr``; b"" when it cannot be one (a Unix path too long: the Python path
    then reports the connect error per connection, as before)."""
    head = struct.pack("=H", family)
    if family == socket.AF_INET:
        host, port = address[:2]
        return head + struct.pack("!H", port) + socket.inet_pton(family, host) + bytes(8)
    if family == socket.AF_INET6:
        host, port, flowinfo, scope = address
        host = host.split("%", 1)[0]
        return head + struct.pack("!HI", port, flowinfo) + socket.inet_pton(family, host) + struct.pack("=I", scope)
    if family == socket.AF_UNIX:
        path = address if isinstance(address, bytes) else address.encode()
        if len(path) >= SUN_PATH + (path[:1] == b"\0"):
            return b""
        return head + path + (b"" if path[:1] == b"\0" else b"\0")
    return b""
