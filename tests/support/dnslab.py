"""A real resolver on loopback for host-name tests: dnsmasq (Debian ``dnsmasq-base``) on a
127.0.0.0/8 address of the test's own, answering from a hosts directory it re-reads when a
file changes, with a short TTL, and NXDOMAIN for everything else under ``sg.test`` and the
loopback reverse zone. Stopped and reaped even when the test fails."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.resolver

ZONE = "sg.test"


def loopback_address() -> str:
    """A 127.x.y.z address no other test picks (port 53 is shared by every resolver)."""
    return f"127.{random.randrange(100, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}"


class Dnsmasq:
    def __init__(self, tmp: Path, ttl: int = 2, extra: tuple[str, ...] = ()) -> None:
        exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.address = loopback_address()
        self.hostsdir = tmp / "hostsdir"
        self.hostsdir.mkdir()
        self.resolv_conf = tmp / "resolv.conf"
        self.resolv_conf.write_text(f"nameserver {self.address}\noptions timeout:1 attempts:1\n")
        self.ttl = ttl
        self.proc = subprocess.Popen(
            [exe, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
             "--bind-interfaces", f"--listen-address={self.address}", "--port=53", "--user=root",
             f"--hostsdir={self.hostsdir}", f"--local-ttl={ttl}", f"--local=/{ZONE}/",
             "--local=/127.in-addr.arpa/", "--pid-file=", "--log-facility=-", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            self._ready()
        except BaseException:
            self.close()
            raise

    def _ready(self, timeout: float = 5.0) -> None:
        """A bounded loop of queries until one is answered (NXDOMAIN counts)."""
        res = dns.resolver.Resolver(filename=str(self.resolv_conf))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"dnsmasq exited {self.proc.returncode}: {out}")
            try:
                res.resolve(f"ready.{ZONE}", "A", lifetime=0.2)
                return
            except dns.resolver.NXDOMAIN:
                return
            except dns.exception.DNSException:
                continue
        raise RuntimeError(f"dnsmasq on {self.address} did not answer within {timeout}s")

    def hosts(self, text: str, file: str = "hosts") -> None:
        """Replace a hosts file of the directory (written whole, then renamed into place)."""
        tmp = self.hostsdir / f".{file}.tmp"
        tmp.write_text(text)
        os.rename(tmp, self.hostsdir / file)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Silent:
    """A 'resolver' that receives queries and never answers (a slow or dead server)."""

    def __init__(self, tmp: Path) -> None:
        self.address = loopback_address()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.address, 53))
        self.resolv_conf = tmp / "resolv-silent.conf"
        self.resolv_conf.write_text(f"nameserver {self.address}\n")

    def close(self) -> None:
        self.sock.close()
