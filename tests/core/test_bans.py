"""The backend-neutral ban: its origins are the eBPF map's ABI, and the layout speaks the same
type."""

from __future__ import annotations

import ipaddress

from sockgate.bans import NEVER, BannedPrefix, Origin
from sockgate.ebpf import layout


def test_origins_are_the_map_abi() -> None:
    assert {o.name: o.value for o in Origin} == {"LIMIT": 0, "MANUAL": 1, "FAIL2BAN": 2, "CROWDSEC": 3, "HOSTS_DENY": 4}
    assert layout.Origin is Origin
    assert layout.Ban.unpack(layout.Ban(5, Origin.CROWDSEC).pack()) == layout.Ban(5, Origin.CROWDSEC)


def test_active() -> None:
    net = ipaddress.ip_network("192.0.2.0/24")
    assert BannedPrefix(net, 10, Origin.CROWDSEC).active(9)
    assert not BannedPrefix(net, 10, Origin.CROWDSEC).active(10)
    assert BannedPrefix(net, NEVER, Origin.MANUAL).active(10**18)
