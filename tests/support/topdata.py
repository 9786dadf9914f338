"""Snapshots for ``sockgate top``'s tests and its documented screenshots: a host with an ssh
service guarded by the agent (classic BPF), a web service guarded by eBPF, an unguarded
database, refusals from a few sources, and bans of every origin. ``FakeActions`` stands in for
the host and the agent: it serves the snapshots in turn and records bans and unbans.

``python tests/support/topdata.py DIR`` writes the SVG screenshots docs/top.md shows.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sockgate.agent import statusdoc
from sockgate.agent.protocol import UnbanOrigin
from sockgate.ebpf.layout import Ban, Count
from sockgate.bans import Origin
from sockgate.ebpf.refusals import BanRow, CountRow
from sockgate.inventory import Holder
from sockgate.kernel.reading import GuardInfo
from sockgate.linux.sockdiag import TCP_CLOSE, TCP_LISTEN, Sock
from sockgate.refused import Listing
from sockgate.socktable import Exposure, Row
from sockgate.top.model import Snapshot, clock_at

T0 = 1_790_000_000.0  # wall clock of the first snapshot (2026-09-21)
MONO = 5_000.0
T = "2026-09-21T14:13:20Z"
POLICY = """\
set office = { 192.0.2.0/24 }
service ssh tcp/22 {
    deny 203.0.113.0/24
    allow @office
    default deny
}
service web tcp/443 {
    allow 0.0.0.0/0
    default deny
}
"""


def row(port: int, proc: str, pid: int, user: str, guard: GuardInfo, cookie: int, addr: str = "0.0.0.0",
        proto: str = "tcp", kind: str = "any", text: str = "every interface") -> Row:
    s = Sock(proto, "ipv4", "stream" if proto == "tcp" else "dgram", TCP_LISTEN if proto == "tcp" else TCP_CLOSE,
             inode=1000 + port, uid=0, local_addr=addr, local_port=port, cookie=cookie)
    return Row(s, (Holder(pid, proc, user, (3,)),), user, Exposure(kind, text), guard)


SOCKETS = (
    row(22, "sshd", 812, "root", GuardInfo("sockgate", 40, "ssh", "a1b2c3d4", backend="cbpf"), cookie=11),
    row(443, "nginx", 901, "www-data", GuardInfo("sockgate", 0, "web", "e5f6a7b8", backend="ebpf"), cookie=12),
    row(5432, "postgres", 1203, "postgres", GuardInfo("none"), cookie=13, addr="127.0.0.1", kind="loopback",
        text="loopback only"),
    row(53, "dnsmasq", 640, "nobody", GuardInfo("none"), cookie=14, proto="udp"),
)


def _socket(cookie: int, port: int, state: str, service: str) -> dict[str, Any]:
    return {"cookie": cookie, "proto": "tcp", "family": 4, "local": f"0.0.0.0:{port}", "netns": "net:[4026531840]",
            "holders": [{"pid": 812, "comm": "sshd", "argv0": "sshd", "fd": 3}], "state": state,
            "guard": {"state": "sockgate", "service": service, "digest": "a1b2c3d4", "backend": "cbpf", "locked": False},
            "since": T, "error": None, "attempts": 0, "retry_at": None}


def _service(name: str, port: int, cookie: int, backend: str, top: list[tuple[str, int]], total: int) -> dict[str, Any]:
    return {"name": name, "origin": "native", "daemon": None, "endpoints": [f"tcp/{port}"], "backend": backend,
            "digest": "a1b2c3d4", "loaded": T, "instructions": 40, "kernel_refusal": None, "names": [],
            "sockets": [_socket(cookie, port, "guarded", name)],
            "refusals": {"counted": True, "total": total, "sources": len(top),
                         "top": [{"source": s, "count": n, "first": T, "last": T} for s, n in top]},
            "bans": 2, "bans_in": "maps" if backend == "ebpf" else "program", "no_listener": False}


def _ban(net: str, origin: str, expires: str | None, reason: str | None, services: list[str] | None = None) -> dict[str, Any]:
    return {"net": net, "origin": origin, "services": services or ["*"], "expires": expires, "added": T, "reason": reason}


def status(scale: int = 1, bans: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A status document; ``scale`` multiplies the refusal counts (a later snapshot)."""
    items = bans if bans is not None else [
        _ban("198.51.100.7/32", "limit", "2026-09-21T14:23:20Z", "limit rate 10/s ban 10m", ["ssh"]),
        _ban("203.0.113.9/32", "manual", "2026-09-21T15:13:20Z", "sockgate top"),
        _ban("192.0.2.66/32", "fail2ban", "2026-09-21T14:33:20Z", "sshd"),
        _ban("100.64.0.0/10", "crowdsec", "2026-09-22T14:13:20Z", "crowdsecurity/ssh-bf"),
        _ban("233.252.0.5/32", "hosts_deny", None, "sshguard"),
    ]
    by: dict[str, int] = {}
    for b in items:
        by[b["origin"]] = by.get(b["origin"], 0) + 1
    doc = {
        "schema": 1,
        "agent": {"pid": 4242, "version": "0.1.0", "started": T, "backend": "auto",
                  "watch": {"mode": "cgroup-bpf", "cgroup": "/sys/fs/cgroup", "events": 117, "lost": 0, "last_resync": T},
                  "control": {"path": "/run/sockgate/agent.sock", "group": None},
                  "counters": {"adopted": 1, "attached": 3, "reloaded": 1, "replaced": 1, "detached": 0, "destroyed": 4}},
        "policy": {"digest": "9f8e7d6c", "loaded": T, "files": ["/etc/sockgate/sockgate.conf"],
                   "last_reload": {"at": T, "ok": True, "trigger": "file", "error": None}},
        "services": [
            _service("ssh", 22, 11, "cbpf", [("203.0.113.9", 120 * scale), ("198.51.100.7", 40 * scale)], 160 * scale),
            _service("web", 443, 12, "ebpf", [("203.0.113.9", 30 * scale), ("2001:db8::bad", 5 * scale)], 35 * scale),
        ],
        "bans": {"total": len(items), "by_origin": by, "items": items},
        "sources": {"crowdsec": {"state": "ok", "error": None}},
        "unguarded": 0,
        "errors": [],
        "impostors": [],
        "superserved": [],
    }
    statusdoc.check(doc)
    return doc


def with_agent(scale: int = 1, wall: float = T0, bans: list[dict[str, Any]] | None = None) -> Snapshot:
    return Snapshot(wall=wall, sockets=SOCKETS, status=status(scale, bans))


def without_agent(scale: int = 1, wall: float = T0) -> Snapshot:
    """No agent: the pinned counters of the web service (eBPF) are what is read."""
    clock = clock_at(wall, MONO + wall - T0)
    ns = clock.mono_ns
    counts = [CountRow("web", _ip("203.0.113.9"), Count(30 * scale, ns - 10**9, ns)),
              CountRow("web", _ip("198.51.100.7"), Count(4 * scale, ns - 10**9, ns))]
    bans = [BanRow("web", _net("198.51.100.7/32"), Ban(ns + 600 * 10**9, Origin.LIMIT))]
    return Snapshot(wall=wall, sockets=SOCKETS, status_error="no agent at /run/sockgate/agent.sock",
                    refused=Listing(counts, bans, clock))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


@dataclass
class FakeActions:
    """Snapshots in turn (the last one repeated); bans and unbans recorded."""

    snapshots: list[Snapshot]
    bans: list[tuple[str, int | None]] = field(default_factory=list)
    unbans: list[tuple[str, str]] = field(default_factory=list)
    taken: int = 0

    def snapshot(self) -> Snapshot:
        snap = self.snapshots[min(self.taken, len(self.snapshots) - 1)]
        self.taken += 1
        return replace(snap, wall=T0 + 10 * (self.taken - 1))

    def ban(self, source: str, duration: int | None) -> str:
        self.bans.append((source, duration))
        return f"banned {source}"

    def unban(self, source: str, origin: UnbanOrigin) -> str:
        self.unbans.append((source, origin))
        return f"unbanned {source}"


async def screenshots(out: Path) -> list[Path]:
    """One SVG per screen, as an 80×24 terminal shows them, without colour."""
    before = os.environ.get("NO_COLOR")
    os.environ["NO_COLOR"] = "1"
    try:
        return await _shoot(out)
    finally:
        if before is None:
            del os.environ["NO_COLOR"]
        else:
            os.environ["NO_COLOR"] = before


async def _shoot(out: Path) -> list[Path]:
    from sockgate.policy.parser import parse_policy
    from sockgate.top.app import TopApp

    written = []
    shots = [("sockets", "1", [with_agent()]), ("refusals", "2", [with_agent(1), with_agent(3)]),
             ("bans", "3", [with_agent()]), ("health", "4", [with_agent()]),
             ("no-agent", "2", [without_agent(1), without_agent(2)])]
    for name, key, snaps in shots:
        app = TopApp(FakeActions(snaps), parse_policy(POLICY, "/etc/sockgate/sockgate.conf"), interval=3600)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g", key)
            await pilot.pause()
            written.append(out / f"top-{name}.svg")
            written[-1].write_text(app.export_screenshot(title=f"sockgate top: {name}"))
    app = TopApp(FakeActions([with_agent(1), with_agent(3)]), parse_policy(POLICY, "/etc/sockgate/sockgate.conf"), interval=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("g", "2", "e")
        await pilot.pause()
        written.append(out / "top-follow.svg")
        written[-1].write_text(app.export_screenshot(title="sockgate top: follow and explain"))
    return written


if __name__ == "__main__":
    for p in asyncio.run(screenshots(Path(sys.argv[1]))):
        print(p)
