"""inet_diag bytecode (<linux/inet_diag.h>): ask the kernel for the sockets of some local
ports only.

Why. Finding the connections of one service by dumping every TCP connection costs the whole
table: on a busy host, 100,000 connections are ~10 MB of netlink messages decoded in Python,
for every ban that lands and every reload that ends denied connections. The kernel runs a
filter over each socket before it writes the socket's message (``inet_diag_bc_run``, what
``ss state established sport = :22`` sends), so with one only the service's ports come back.

The program, one clause per port P: ``sport >= P`` (else: the next clause), ``sport <= P``
(else: the next clause), then a jump to the end, which accepts; the last clause's failures
jump to the end + 4, which rejects. The kernel audits it (``inet_diag_bc_audit``: every jump
lands on an op boundary, at the end, or at the end + 4). ``S_GE``/``S_LE`` exist since Linux
2.6; the newer ``S_EQ`` would save an op per port.

Hand-written: a few bytes per port in one fixed layout; no library builds it. Pure: no
system call here (``linux/sockdiag.py`` sends it).
"""

from __future__ import annotations

import struct
from typing import Iterable

OP = struct.Struct("=BBH")  # struct inet_diag_bc_op {u8 code; u8 yes; u16 no}
NLATTR = struct.Struct("=HH")  # struct nlattr {u16 nla_len; u16 nla_type}
INET_DIAG_BC_JMP, INET_DIAG_BC_S_GE, INET_DIAG_BC_S_LE = 1, 2, 3
INET_DIAG_REQ_BYTECODE = 1
MAX_PORTS = 1024  # 20 bytes a port: the program stays far below the u16 jump offsets
_CLAUSE = 2 * 2 * OP.size + OP.size  # S_GE + its port, S_LE + its port, JMP


def sport_program(ports: Iterable[int]) -> bytes | None:
    """The program accepting a socket whose local port is one of ``ports``; None when there is
    no port or more than ``MAX_PORTS`` (then the caller dumps all and filters itself)."""
    wanted = sorted(set(ports))
    if not wanted or len(wanted) > MAX_PORTS:
        return None
    if not all(0 <= p <= 0xFFFF for p in wanted):
        raise ValueError(f"not a port: {[p for p in wanted if not 0 <= p <= 0xFFFF][0]}")
    end = _CLAUSE * len(wanted)
    out = bytearray()
    for i, port in enumerate(wanted):
        here = _CLAUSE * i
        miss = end + 4 if i == len(wanted) - 1 else here + _CLAUSE  # where a failed comparison goes
        out += OP.pack(INET_DIAG_BC_S_GE, 2 * OP.size, miss - here) + OP.pack(0, 0, port)
        out += OP.pack(INET_DIAG_BC_S_LE, 2 * OP.size, miss - here - 2 * OP.size) + OP.pack(0, 0, port)
        out += OP.pack(INET_DIAG_BC_JMP, OP.size, end - here - 4 * OP.size)
    return bytes(out)


def sport_attribute(ports: Iterable[int]) -> bytes:
    """The ``INET_DIAG_REQ_BYTECODE`` attribute to append to an ``inet_diag_req_v2`` (empty:
    no filter, see ``sport_program``)."""
    program = sport_program(ports)
    if program is None:
        return b""
    return NLATTR.pack(NLATTR.size + len(program), INET_DIAG_REQ_BYTECODE) + program
