"""CPU pinning and per-CPU connection steering for the proxy's workers (which CPU each gets
is ``proxy.affinity``'s, decided without I/O).

``pin``: ``sched_setaffinity`` of the calling process (its threads started later inherit
it). ``steer``: ``SO_INCOMING_CPU`` on a TCP listener of a ``SO_REUSEPORT`` group, so the group
prefers it for the connections whose handshake the kernel processed on that CPU, and hashes
over all of its sockets when none matches. Kernels from 4.6 until the fix of November 2022
("soreuseport: Fix socket selection for SO_INCOMING_CPU", carried by the stable kernels too)
ignore it inside a group and hash: the option then changes nothing, and nothing here probes
for it (tests/kernel/test_proxy_workers.py shows it on the kernel the tests run on). Not for
UDP: there the group picks a socket per datagram, and one flow's datagrams processed on two
CPUs would become two flows.
"""

from __future__ import annotations

import os
import socket

from sockgate.linux._errors import translated


def allowed() -> list[int]:
    """The CPUs this process may run on (its affinity mask: a cpuset, ``taskset``, systemd's
    ``CPUAffinity=``), lowest first."""
    return sorted(os.sched_getaffinity(0))


def pin(cpu: int) -> None:
    with translated(f"pin to CPU {cpu}"):
        os.sched_setaffinity(0, {cpu})


def steer(sock: socket.socket, cpu: int) -> None:
    with translated(f"SO_INCOMING_CPU {cpu}"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_INCOMING_CPU, cpu)

