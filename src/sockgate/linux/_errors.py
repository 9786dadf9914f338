"""One place where adapters turn ``OSError`` into ``AdapterError`` (errno and target kept)."""

from __future__ import annotations

import contextlib
import errno as _errno
import os
from typing import Iterator

from sockgate.errors import AdapterError

_HINTS = {
    _errno.EPERM: "operation not permitted",
    _errno.EACCES: "permission denied",
    _errno.ESRCH: "no such process",
    _errno.EBADF: "no such file descriptor",
    _errno.ENOTSOCK: "not a socket",
    _errno.ENOMEM: "out of socket option memory (net.core.optmem_max)",
    _errno.ENOSYS: "not supported by this kernel",
}


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """``with translated("attach filter to pid 42 fd 3"): ...`` — OSError → AdapterError."""
    try:
        yield
    except OSError as e:
        code = e.errno
        reason = _HINTS.get(code, os.strerror(code) if code else str(e)) if code else str(e)
        raise AdapterError(f"{what}: {reason}", errno=code, target=what) from e
