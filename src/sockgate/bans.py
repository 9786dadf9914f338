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

    def __post_init__(self) -> None:
        check_width(self.network)

    def active(self, now_ns: int) -> bool:
        return self.expires_ns == NEVER or now_ns < self.expires_ns


# The widest network any ban may name, whoever asks: a ban is a statement about attackers, and
# one wide enough to cover a large part of the Internet (a CrowdSec ``Range`` of /1, two /1s
# from a misfiring fail2ban action, an IPv4-mapped ::ffff:0:0/96 that folds to 0.0.0.0/0) cuts
# off everyone, the operator included. Wider bans are refused on every path (control socket,
# CrowdSec, state file), not clipped.
MIN_PREFIX = {4: 8, 6: 16}


class BanTooWide(ValueError):
    pass


def check_width(net: IPNetwork) -> None:
    """Refuse ``net`` as a ban when it is wider than ``MIN_PREFIX`` allows."""
    least = MIN_PREFIX[net.version]
    if net.prefixlen < least:
        raise BanTooWide(f"{net} is too wide to ban: at most a /{least} for IPv{net.version}"
                         " (ban narrower networks one by one if you mean it)")


LOOPBACK = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


def touches_loopback(net: IPNetwork) -> bool:
    """Whether ``net`` holds this host's own loopback address (127.0.0.1 or ::1): no remote
    source of bans may cut the host off from itself. (Other 127.x addresses cannot come from
    outside — the kernel drops them as martians — so a ban on one harms nothing.)"""
    bits = net.max_prefixlen - net.prefixlen  # on integers: 100,000 decisions pass here
    return int(LOOPBACK[net.version == 6]) >> bits == int(net.network_address) >> bits
