"""The bouncer's HTTP edge against a hostile or broken LAPI on loopback: every answer is bounded
in size and time, none is followed elsewhere, and none costs the decisions already held."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
import time
from typing import Callable, Iterator

import pytest

from sockgate.crowdsec.lapi import Bouncer, LapiClient, LapiError
from sockgate.crowdsec.session import Session

Handler = Callable[[socket.socket, threading.Event], None]
GOOD = json.dumps({"new": [{"id": 1, "type": "ban", "scope": "Ip", "value": "192.0.2.1", "duration": "1h"}],
                   "deleted": None}).encode()


@contextlib.contextmanager
def server(handler: Handler) -> Iterator[str]:
    """A loopback server running ``handler`` per connection until the test ends."""
    stop = threading.Event()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(0.1)
    threads: list[threading.Thread] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=lambda: _handle(handler, conn, stop), daemon=True)
            t.start()
            threads.append(t)

    main = threading.Thread(target=serve, daemon=True)
    main.start()
    try:
        yield f"http://127.0.0.1:{lsock.getsockname()[1]}"
    finally:
        stop.set()
        main.join(5)
        for t in threads:
            t.join(5)
        lsock.close()


def _handle(handler: Handler, conn: socket.socket, stop: threading.Event) -> None:
    with conn:
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            conn.recv(65536)  # the request
            handler(conn, stop)


def answer(status: str, body: bytes, headers: str = "") -> Handler:
    def h(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return h


def endless(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    while not stop.is_set():
        conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))


def dribble(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    while not stop.wait(0.2):
        conn.sendall(b" ")


def slow_headers(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not stop.wait(0.2):
        conn.sendall(b"x")


def short(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + GOOD[:10])


def silent(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(10)


def garbage(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")


@pytest.mark.parametrize("handler, message", [
    (answer("200 OK", b"{}", "X-Pad: 1\r\n"), None),
    (answer("500 Internal Server Error", b"{}"), "answered HTTP 500"),
    (answer("302 Found", b"", "Location: http://192.0.2.1/\r\n"), "answered HTTP 302"),
    (answer("200 OK", b"x" * 10), None),  # size fine; the session rejects the body
    (answer("200 OK", b"x" * 2_000_000), "over the bound"),
    (endless, "over the bound"),
    (dribble, "took longer than"),
    (slow_headers, "took longer than"),
    (silent, "timed out|took longer than"),
    (short, "cut short"),
    (garbage, "cannot pull decisions"),
])
def test_a_hostile_answer_is_bounded(handler: Handler, message: str | None) -> None:
    with server(handler) as url:
        client = LapiClient(url, "k" * 32, timeout_s=1.5, max_body=1_000_000)
        started = time.monotonic()
        if message is None:
            client.pull(True)
        else:
            with pytest.raises(LapiError, match=message):
                client.pull(True)
        assert time.monotonic() - started < 4


def test_a_hostile_lapi_costs_no_decision_held() -> None:
    calls = iter([answer("200 OK", GOOD), answer("200 OK", b"[1, 2"), endless, answer("503 x", b"")])
    with server(lambda conn, stop: next(calls)(conn, stop)) as url:
        b = Bouncer(LapiClient(url, "k" * 32, timeout_s=1.5, max_body=100_000), Session(interval_s=1),
                    draw=lambda: 0.0)
        report, _ = b.poll()
        assert report is not None
        for _ in range(3):
            report, wait = b.poll()
            assert report is None and wait > 0
        held = set(b.session.state.bans(time.monotonic_ns()))
        assert held == {ipaddress.ip_network("192.0.2.1/32")}
        status = b.session.status()
        assert status.failures == 3 and not status.up and b.session.request() is True
