"""Forged packets for kernel tests: whole IPv6 packets with any source, sent from a namespace.

scapy builds the packets (UDP datagrams, TCP SYNs, with their checksums); a raw socket
(``AF_INET6, SOCK_RAW, IPPROTO_RAW``: the caller writes the whole packet, IPV6_HDRINCL, and
the kernel checks no source address) sends them from the client namespace of a
``netlab.Lab``, so the server namespace receives them from the wire, as from another host.

``Wire.ready()`` waits until the veth path carries IPv6 (a fresh lab loses the first packets
while the link comes up and neighbour discovery runs): it sends genuine datagrams to a probe
socket until one arrives. ``syn_received`` lists the half-open connections of the server
namespace (``ss``), which is how a test sees whether a listener answered a SYN whose
SYN-ACK goes nowhere.
"""

from __future__ import annotations

import select
import socket
from typing import Iterable, Iterator

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6

from support import netlab


def udp6(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def syn6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=1000))


class Wire:
    """A raw IPv6 sender in ``lab``'s client namespace."""

    def __init__(self, lab: netlab.Lab) -> None:
        self.lab = lab
        self.raw = lab.client.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, packets: Iterable[bytes]) -> None:
        for p in packets:
            dst = socket.inet_ntop(socket.AF_INET6, p[24:40])
            self.raw.sendto(p, (dst, 0))

    def ready(self, attempts: int = 50) -> None:
        """Wait until a datagram sent on the wire reaches the server namespace."""
        probe = self.lab.server.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            probe.bind((self.lab.server_v6, 0))
            port = probe.getsockname()[1]
            for _ in range(attempts):
                self.send([udp6(self.lab.client_v6, self.lab.server_v6, 9, port, b"probe")])
                if select.select([probe], [], [], 0.1)[0]:
                    return
            raise AssertionError(f"no IPv6 datagram crossed the lab's veth in {attempts} tries")
        finally:
            probe.close()

    def close(self) -> None:
        self.raw.close()


def syn_received(ns: netlab.Netns, port: int) -> set[str]:
    """The peers (address as ``ss`` prints it) of connections half-open on ``port`` in ``ns``."""
    out = ns.run("ss", "-Htn", "state", "syn-recv", f"( sport = :{port} )").stdout
    peers = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            peers.add(fields[-1].rsplit(":", 1)[0].strip("[]"))
    return peers


@pytest.fixture
def wire(lab: netlab.Lab) -> Iterator[Wire]:
    w = Wire(lab)
    try:
        w.ready()
        yield w
    finally:
        w.close()


def ip6_in_hdr_errors(ns: netlab.Netns) -> int:
    for line in ns.run("cat", "/proc/net/snmp6").stdout.splitlines():
        name, _, value = line.partition(" ")
        if name == "Ip6InHdrErrors":
            return int(value)
    raise AssertionError("no Ip6InHdrErrors in /proc/net/snmp6")
