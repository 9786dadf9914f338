"""The HTTP edge of the CrowdSec bouncer: the API key from a file, one pull of the decision
stream, and the loop that paces pulls. Protocol state lives in ``session.py``/``stream.py``.

Plain ``http.client`` rather than PyPI's ``pycrowdsec``, whose stream client (read at 0.0.5):
needs ``requests``; forgets durations (a decision is kept until the LAPI deletes it, so a ban
outlives an outage that hid its expiry); deletes by value (lifting a ban that a second decision
on the same address still holds); never resyncs after a failed pull (a lost delta is lost for
good); has no retry or backoff — its thread dies on the first error after start-up; and puts no
bound on the size of an answer. What a bouncer needs of HTTP is one GET with a header, a
timeout, TLS with a CA file, and a bounded read: the standard library does all of it, and the
runtime dependencies stay as they are.

The key file is refused when others may read or write it (mode ``o+rwx``), or when it is not a
regular file (a FIFO would block the agent). The key itself must be one word of visible ASCII,
so it cannot smuggle a header. HTTP redirects are not followed (``http.client`` never does); an
answer over ``max_body`` bytes, or one that takes longer than the timeout to arrive in full, is
a failed pull. ``https`` URLs verify the LAPI's certificate against ``ca_file`` (or the system's
CAs when none is given).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from sockgate.crowdsec.session import Session
from sockgate.crowdsec.stream import Report, StreamError
from sockgate.errors import AdapterError, UsageError
from sockgate.intlist import is_number, number
from sockgate.policy.source import escape, quote

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # 100,000 decisions are about 20 MB of JSON
USER_AGENT = "sockgate-bouncer/1"
MAX_KEY_FILE = 4096
STREAM_PATH = "/v1/decisions/stream"
_CHUNK = 1 << 16


class LapiError(AdapterError):
    """One pull got no usable answer (connection, TLS, timeout, HTTP status, size)."""


def read_key(path: str) -> str:
    """The API key in ``path`` (``cscli bouncers add NAME -o raw > PATH``), refused when others
    may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise UsageError(f"cannot read the CrowdSec key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"the CrowdSec key file {path} is not a regular file")
        if st.st_mode & 0o007:
            raise UsageError(f"the CrowdSec key file {path} is open to others (mode {stat.S_IMODE(st.st_mode):04o});"
                             f" chmod o-rwx {path}")
        raw = os.read(fd, MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    key = raw.decode("ascii", "replace").strip()
    if len(raw) > MAX_KEY_FILE or not key or not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise UsageError(f"the CrowdSec key file {path} does not hold one API key (one word of visible ASCII)")
    return key


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    base: str  # a path prefix, for a LAPI behind a reverse proxy; "" normally


def endpoint(url: str) -> Endpoint:
    """``http://HOST:PORT`` or ``https://HOST:PORT[/prefix]``; ``UsageError`` otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UsageError(f"expected a LAPI URL such as http://127.0.0.1:8080, found {quote(url)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
            or parts.username is not None or not url.isprintable():
        raise UsageError(f"expected a LAPI URL such as http://127.0.0.1:8080, found {quote(url)}")
    return Endpoint(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80),
                    parts.path.rstrip("/"))


class LapiClient:
    """Pulls of one LAPI with one bouncer key."""

    def __init__(self, url: str, key: str, *, ca_file: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.endpoint = endpoint(url)
        if ca_file is not None and self.endpoint.scheme != "https":
            raise UsageError(f"a CA file is for an https LAPI URL, not {quote(url)}")
        if not key or not all(0x21 <= ord(c) <= 0x7E for c in key):
            raise UsageError("the CrowdSec API key must be one word of visible ASCII")
        self._key = key
        self.timeout_s = timeout_s
        self.max_body = max_body
        self._tls: ssl.SSLContext | None = None
        if self.endpoint.scheme == "https":
            try:
                self._tls = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as e:
                raise UsageError(f"cannot load the CA file {ca_file}: {e}") from None

    def _connection(self) -> http.client.HTTPConnection:
        e = self.endpoint
        if self._tls is not None:
            return http.client.HTTPSConnection(e.host, e.port, timeout=self.timeout_s, context=self._tls)
        return http.client.HTTPConnection(e.host, e.port, timeout=self.timeout_s)

    def pull(self, startup: bool) -> bytes:
        """One ``GET /v1/decisions/stream``: the body of a 200 answer, else ``LapiError``."""
        target = f"{self.endpoint.base}{STREAM_PATH}?startup={'true' if startup else 'false'}&scopes=ip,range"
        deadline = time.monotonic() + self.timeout_s
        conn = self._connection()
        # Each receive has the timeout, and so does the whole answer: a LAPI that dribbles its
        # headers a byte at a time would otherwise hold the pull for ever. At the deadline the
        # socket is shut down from a timer thread, which ends any receive under way.
        cut = threading.Event()
        timer = threading.Timer(self.timeout_s, _cut, args=(conn, cut))
        timer.daemon = True
        try:
            conn.connect()
            timer.start()
            conn.request("GET", target, headers={"X-Api-Key": self._key, "User-Agent": USER_AGENT,
                                                 "Accept": "application/json", "Connection": "close"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise LapiError(_status_message(resp.status, resp.reason), target=self.url)
            length = resp.getheader("Content-Length")
            if length is not None and is_number(length) and number(length, 0, self.max_body) is None:
                raise LapiError(f"the LAPI's answer is {length[:24]} bytes, over the bound of {self.max_body}", target=self.url)
            return self._read(resp, deadline, cut)
        except (OSError, http.client.HTTPException) as e:
            if cut.is_set():
                raise self._late() from None
            raise LapiError(f"cannot pull decisions from {self.url}: {escape(str(e)) or type(e).__name__}",
                            errno=getattr(e, "errno", None), target=self.url) from None
        finally:
            timer.cancel()
            conn.close()

    def _read(self, resp: http.client.HTTPResponse, deadline: float, cut: threading.Event) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise self._late()
            # read1: one receive at most, so a LAPI dribbling a byte at a time meets the
            # deadline (read(n) would wait for n bytes, each receive within the timeout)
            chunk = resp.read1(_CHUNK)
            if not chunk:
                if cut.is_set():
                    raise self._late()
                if resp.length:  # read1 returns b"" at an early end instead of raising IncompleteRead
                    raise LapiError(f"the LAPI's answer was cut short ({resp.length} bytes missing)", target=self.url)
                return b"".join(parts)
            size += len(chunk)
            if size > self.max_body:
                raise LapiError(f"the LAPI's answer is over the bound of {self.max_body} bytes", target=self.url)
            parts.append(chunk)

    def _late(self) -> LapiError:
        return LapiError(f"the LAPI's answer took longer than {self.timeout_s:g} s", target=self.url)

    @property
    def url(self) -> str:
        e = self.endpoint
        host = f"[{e.host}]" if ":" in e.host else e.host
        return f"{e.scheme}://{host}:{e.port}{e.base}"


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    cut.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _status_message(status: int, reason: str) -> str:
    if status in (401, 403):
        return f"the LAPI refused the API key (HTTP {status}): is the bouncer registered (cscli bouncers list)?"
    return f"the LAPI answered HTTP {status} {escape(reason[:80])}"


class Bouncer:
    """Pulls at the session's pace; the agent hosts it (``poll`` from its loop, or ``run`` in a
    thread). ``clock`` is CLOCK_MONOTONIC in ns, the clock of ``BannedPrefix.expires_ns``."""

    def __init__(self, client: LapiClient, session: Session | None = None, *,
                 clock: Callable[[], int] = time.monotonic_ns,
                 draw: Callable[[], float] = random.random) -> None:
        self.client = client
        self.session = session or Session()
        self.clock = clock
        self.draw = draw

    def poll(self) -> tuple[Report | None, float]:
        """One pull: its report (None when it failed) and the seconds until the next one."""
        startup = self.session.request(self.clock())
        report = None
        try:
            body = self.client.pull(startup)
            report = self.session.received(body, self.clock(), startup=startup)
        except LapiError as e:
            self.session.failed(self.clock(), str(e))
        except StreamError:
            pass  # recorded by the session as a failed pull
        return report, self.session.delay(self.draw())

    def run(self, stop: threading.Event, on_report: Callable[[Report], None] = lambda r: None) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            report, wait = self.poll()
            if report is not None:
                on_report(report)
            stop.wait(wait)
