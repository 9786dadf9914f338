"""A guarded asyncio echo server.

    python asyncio_server.py POLICY SERVICE [HOST] [PORT]

The socket is bound, guarded, and only then put in the listening state, so no connection can
arrive before the filter is there; asyncio serves it like any other socket. Clients the policy
denies never reach ``accept``: the kernel drops their SYN, and to them the port looks filtered.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import sockgate


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()
    writer.close()


def guarded_listener(policy: sockgate.Policy, service: str, host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    policy.guard(sock, service)  # compiled completely first, then one setsockopt
    sock.listen(128)
    return sock


async def main(policy_path: str, service: str, host: str, port: int) -> None:
    policy = sockgate.load(policy_path)
    sock = guarded_listener(policy, service, host, port)
    print(sockgate.guard_of(sock).describe(), flush=True)
    server = await asyncio.start_server(echo, sock=sock)
    print(f"listening on {host}:{sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    try:
        asyncio.run(main(args[0], args[1], args[2] if len(args) > 2 else "127.0.0.1", int(args[3]) if len(args) > 3 else 8007))
    except sockgate.SockgateError as e:
        sys.exit(f"asyncio_server: {e}")
    except KeyboardInterrupt:
        pass
