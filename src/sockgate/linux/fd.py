"""What the adapters accept as a socket: a socket object or a bare descriptor (``Sockish``),
and the one place that turns either into an fd number, refusing what is neither.

An fd is what the kernel calls take; a socket object is what library users hold. Turning one
into the other in one function keeps the refusal of a closed socket (``fileno()`` -1) worded
once, instead of each adapter passing -1 on to a system call that fails with ``EBADF``.

``drain`` reads a non-blocking descriptor dry (the inotify and signalfd adapters' event reads):
EAGAIN ends it, EINTR retries, any other error is translated once.
"""

from __future__ import annotations

import os
import socket
from typing import Iterator, Union

from sockgate.errors import UsageError
from sockgate.linux._errors import translated

Sockish = Union[socket.socket, int]


def fileno(s: Sockish | object) -> int:
    """The descriptor of ``s``: an int as is, else ``s.fileno()``; UsageError for an object
    that is not a socket or descriptor, or a closed socket."""
    if isinstance(s, int):
        return s
    get = getattr(s, "fileno", None)
    if get is None:
        raise UsageError(f"not a socket or file descriptor: {s!r}")
    fd = get()
    if not isinstance(fd, int) or fd < 0:
        raise UsageError(f"socket is closed: {s!r}")
    return fd


def drain(fd: int, size: int, what: str) -> Iterator[bytes]:
    """Each chunk (at most ``size`` bytes) ``fd`` has to read now, until it has none (EAGAIN)
    or is at its end; an error other than EINTR is an ``AdapterError`` naming ``what``."""
    while True:
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            return
        except InterruptedError:
            continue
        except OSError as e:
            with translated(what):
                raise e
        if not data:
            return
        yield data
