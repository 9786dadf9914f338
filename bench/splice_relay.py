"""A peer for bench_proxy.py: the simplest fast relay Python can make, as PEERS.md measured it.

    .venv/bin/python bench/splice_relay.py LISTEN_PORT BACKEND_PORT

Accepts on 127.0.0.1:LISTEN_PORT and relays each connection to 127.0.0.1:BACKEND_PORT with
a thread per direction, each moving bytes with blocking ``os.splice`` through its own 1 MiB
pipe (``SPLICE_F_MOVE`` only) and passing end of file on with ``shutdown``. No policy, no
limits, no timeouts, no logging: it shows what a relay costs here when it does nothing else,
next to sockgate's proxy, which does all of those in one event loop. Runs until killed;
loopback only.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading

F_SETPIPE_SZ = 1031
SPLICE_F_MOVE = 1


def pump(src: socket.socket, dst: socket.socket) -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    try:
        while n := os.splice(src.fileno(), w, 1 << 20, flags=SPLICE_F_MOVE):
            while n:
                n -= os.splice(r, dst.fileno(), n, flags=SPLICE_F_MOVE)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    finally:
        os.close(r)
        os.close(w)


def serve(port: int, backend: int) -> None:
    with socket.create_server(("127.0.0.1", port), backlog=4096) as ls:
        while True:
            client, _ = ls.accept()
            try:
                server = socket.create_connection(("127.0.0.1", backend))
            except OSError:
                client.close()
                continue
            threads = [threading.Thread(target=pump, args=pair, daemon=True) for pair in ((client, server), (server, client))]
            for t in threads:
                t.start()
            threading.Thread(target=_close_after, args=(threads, client, server), daemon=True).start()


def _close_after(threads: list[threading.Thread], *socks: socket.socket) -> None:
    for t in threads:
        t.join()
    for s in socks:
        s.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
