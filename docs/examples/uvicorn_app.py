"""A uvicorn application served from a guarded socket (uvicorn's ``--fd``).

    python uvicorn_app.py POLICY SERVICE [HOST] [PORT]

binds the socket, guards it with SERVICE of POLICY, puts it on fd 3 and execs
``uvicorn --fd 3 uvicorn_app:app``: uvicorn serves a socket it did not make, and the kernel
drops the SYNs of denied clients before uvicorn sees them. The same works with
``gunicorn --bind fd://3`` and with ``sockgate run --listen tcp://HOST:PORT -- uvicorn --fd 3
uvicorn_app:app``, which does the binding and guarding itself.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Awaitable, Callable

import sockgate

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The smallest ASGI application: says who it thinks the client is."""
    if scope["type"] != "http":
        return
    client = scope.get("client") or ("?", 0)
    body = f"hello {client[0]}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def main(policy_path: str, service: str, host: str, port: int) -> None:
    policy = sockgate.load(policy_path)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    policy.guard(sock, service)
    sock.listen(1024)
    if sock.fileno() != 3:
        os.dup2(sock.fileno(), 3)
    os.set_inheritable(3, True)  # dup2(3, 3) would leave the socket close-on-exec
    here = os.path.dirname(os.path.abspath(__file__))
    os.execvp("uvicorn", ["uvicorn", "--fd", "3", "--app-dir", here, "uvicorn_app:app"])


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) < 2:
        sys.exit(__doc__)
    try:
        main(a[0], a[1], a[2] if len(a) > 2 else "127.0.0.1", int(a[3]) if len(a) > 3 else 8000)
    except sockgate.SockgateError as e:
        sys.exit(f"uvicorn_app: {e}")
