"""One request to the agent and its answer: what ``sockgate status``, ``ban``, ``unban``, ``top``
(and fail2ban's action, through them) do; ``status`` is the status document, checked.

Blocking with one deadline for the whole exchange, since a command line waits for its answer
anyway; the answer is read through the same framing and checked as strictly as the agent
checks requests. A missing or silent agent is a one-line ``AgentUnreachable``; an answer that
says no is an ``AgentError`` with the agent's kind and message.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from typing import Any

from sockgate.agent import statusdoc
from sockgate.agent.protocol import (MAX_RESPONSE, Body, LineBuffer, ProtocolError, Request, Response, Status, encode,
                                     parse_response)
from sockgate.errors import SockgateError
from sockgate.linux.peercred import credentials

TIMEOUT = 5.0


class AgentUnreachable(SockgateError):
    """No agent answers at the control socket."""


class AgentError(SockgateError):
    """The agent answered with an error."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def call(path: str, body: Body, timeout: float = TIMEOUT) -> Response:
    """Send ``body`` and return the agent's successful response; raise otherwise."""
    deadline = time.monotonic() + timeout
    rid = int.from_bytes(os.urandom(4), "big")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.settimeout(timeout)
            s.connect(path)
            _served_by_root_or_us(s, path)
            try:
                s.sendall(encode(Request(rid, body)))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent refused us at accept: its one line of why is waiting
            line = _read_line(s, deadline, path)
        except socket.timeout:
            raise AgentUnreachable(f"the agent at {path} did not answer within {timeout:g} s") from None
        except OSError as e:
            raise AgentUnreachable(_unreachable(path, e)) from None
    try:
        response = parse_response(line)
    except ProtocolError as e:
        raise AgentUnreachable(f"the agent at {path} answered something else: {e.message}") from None
    if response.error is not None:
        raise AgentError(response.error.kind, response.error.message)
    if response.id != rid:
        raise AgentUnreachable(f"the agent at {path} answered another request (id {response.id}, not {rid})")
    return response


def status(path: str) -> dict[str, Any]:
    """The agent's status document, checked to be one this version reads (``statusdoc.check``)."""
    doc = dict(call(path, Status()).result or {})
    try:
        statusdoc.check(doc)
    except statusdoc.StatusError as e:
        raise SockgateError(f"the agent at {path} sent a status this version cannot read: {e}") from None
    return doc


def _served_by_root_or_us(s: socket.socket, path: str) -> None:
    """The socket at ``path`` is served by root (the agent) or by this user: anything else is an
    impostor that planted a socket where we looked (``--control`` into a writable directory),
    whose answers — statuses, "banned" — must not be believed."""
    _pid, uid, _gid, _groups = credentials(s)
    if uid not in (0, os.geteuid()):
        raise AgentUnreachable(f"the socket at {path} is served by uid {uid}, not by root: not the agent")


def _read_line(s: socket.socket, deadline: float, path: str) -> bytes:
    buf = LineBuffer(MAX_RESPONSE)
    while True:
        s.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = s.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            raise AgentUnreachable(f"the agent at {path} closed the connection without an answer")
        try:
            lines = buf.feed(data)
        except ProtocolError:
            raise AgentUnreachable(f"the agent at {path} answered more than {MAX_RESPONSE} bytes") from None
        if lines:
            return lines[0]


def _unreachable(path: str, e: OSError) -> str:
    if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
        return f"no agent at {path}"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"no access to the agent at {path}: root or the control group only"
    return f"cannot reach the agent at {path}: {e.strerror or e}"
