"""A ban as every backend and every source of bans shares it: a network, when it ends, and who
set it.

Backend-neutral on purpose. The sources — the policy's own ``ban DURATION`` after a rate limit,
``sockgate ban``, fail2ban, CrowdSec, a hosts.deny that sshguard writes — decide *who*; the
enforcement points carry it out differently: the eBPF backend writes one map entry per ban
(``ebpf/layout.Ban``, which packs this ``Origin`` into the map value), the classic backend
compiles the networks into the program (``resolve/ranges.Banned``), the proxy refuses in user
space. So the bouncer and the agent speak this type, not one backend's record, and the type sits
below every backend (resolve layer): a backend may import it, it imports no backend.

``expires_ns`` is on CLOCK_MONOTONIC in nanoseconds (``time.monotonic_ns()``), the clock the
eBPF program compares with ``bpf_ktime_get_ns()``; the caller's clock is passed in wherever a
ban is made, so this module and its users stay pure. 0 means never.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

NEVER = 0


class Origin(IntEnum):
    """Who banned a source (status, ``top``, the log). The numbers are the eBPF map ABI
    (``struct sg_ban.origin``): never renumber, only add."""

    LIMIT = 0  # the policy's ``ban DURATION`` after a per-source rate was exceeded (set by the program)
    MANUAL = 1  # sockgate ban
    FAIL2BAN = 2
    CROWDSEC = 3
    HOSTS_DENY = 4  # sshguard, DenyHosts: a line they wrote in hosts.deny


@dataclass(frozen=True, order=True)
class BannedPrefix:
    """``network`` is refused until ``expires_ns`` (``NEVER``: until lifted), on ``origin``'s word."""

    network: IPNetwork
    expires_ns: int
    origin: Origin

    def active(self, now_ns: int) -> bool:
        return self.expires_ns == NEVER or now_ns < self.expires_ns
