"""Host names in the kernel against a real resolver (dnsmasq on loopback): an exact name is
enforced as its forward-then-reverse-confirmed addresses, a changed record is picked up
within its TTL, a PTR that names someone else keeps an address out, NXDOMAIN admits nobody,
and a silent or absent resolver fails the lookup within its timeout — closed both ways.
The last test is the whole path: a real agent, a real service, real connections."""

from __future__ import annotations

import ipaddress
import os
import select
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sockgate.agent.forward import NameBook
from sockgate.agent.names import NameResolver
from sockgate.policy.forward import substitute
from sockgate.policy.ir import AddrMatch, HostPattern, Policy
from sockgate.policy.parser import parse_policy
from kernel.test_agent import BASE, Lab, connects, guarded_by, lab, until  # noqa: F401
from support.dnslab import Dnsmasq, Silent
from support.verdicts import local_sockets, tcp_reach

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="kernel enforcement is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="dnsmasq on port 53 of a loopback address needs root"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None and not os.path.exists("/usr/sbin/dnsmasq"),
                       reason="needs dnsmasq (Debian dnsmasq-base)"),
    pytest.mark.root,
]
A = ipaddress.ip_address
TTL = 2


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    d = Dnsmasq(tmp_path, ttl=TTL, extra=("--address=/mis.sg.test/127.0.0.8",))
    yield d
    d.close()


@pytest.fixture
def resolver(dnsmasq: Dnsmasq) -> Iterator[NameResolver]:
    r = NameResolver(str(dnsmasq.resolv_conf), hosts=None, timeout=2.0)
    yield r
    r.close()


def run_book(book: NameBook, resolver: NameResolver, done: Callable[[NameBook], bool], timeout: float) -> NameBook:
    """The agent's loop in small: ask what is due, wait for answers or the next due time, until
    ``done(book)`` or ``timeout`` (the last book in the failure)."""
    deadline = time.monotonic() + timeout
    asked: set[str] = set()
    while not done(book):
        now = time.monotonic()
        assert now < deadline, book.rows(now)
        due = [n for n in book.due(now) if n not in asked]
        resolver.submit(due)
        asked.update(due)
        wake = book.wake_at()
        wait = max(0.0, min(deadline, wake if wake is not None and not due else deadline) - now)
        if select.select([resolver], [], [], wait)[0]:
            for answer in resolver.results():
                asked.discard(answer.name)
                book, _ = book.update(answer)
    return book


def admitted(book: NameBook, name: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    return next((r.admitted for r in book.rows(time.monotonic()) if r.name == name), ())


def test_a_changed_address_is_enforced_within_the_ttl(dnsmasq: Dnsmasq, resolver: NameResolver) -> None:
    dnsmasq.hosts("127.0.0.5 web.sg.test\n")
    book = NameBook(floor=1).track(["web.sg.test"])
    book = run_book(book, resolver, lambda b: admitted(b, "web.sg.test") == (A("127.0.0.5"),), 5)
    policy = parse_policy("service web tcp/1 {\n allow host web.sg.test\n default deny\n}\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        substitute(policy, book.in_force(time.monotonic())).guard(listener, "web")
        assert reach(listener) == {"127.0.0.5": True, "127.0.0.6": False, "127.0.0.1": False}

        dnsmasq.hosts("127.0.0.6 web.sg.test\n")
        changed = time.monotonic()
        book = run_book(book, resolver, lambda b: admitted(b, "web.sg.test") == (A("127.0.0.6"),), TTL + 2)
        assert time.monotonic() - changed <= TTL + 0.5
        substitute(policy, book.in_force(time.monotonic())).guard(listener, "web")
        assert reach(listener) == {"127.0.0.5": False, "127.0.0.6": True, "127.0.0.1": False}


def reach(listener: socket.socket) -> dict[str, bool]:
    dest = {socket.AF_INET: listener.getsockname()[:2]}
    return tcp_reach(dest, ("127.0.0.5", "127.0.0.6", "127.0.0.1"), local_sockets(), wait=0.8, listener=listener)


def test_a_ptr_naming_another_host_keeps_the_address_out(dnsmasq: Dnsmasq, resolver: NameResolver) -> None:
    dnsmasq.hosts("127.0.0.7 web.sg.test\n127.0.0.8 else.sg.test\n")
    answer = resolver.lookup("mis.sg.test")  # A 127.0.0.8, whose PTR is else.sg.test
    assert answer.lookup is not None and answer.ttl == TTL
    assert [(r.address, r.names) for r in answer.lookup.addresses] == [(A("127.0.0.8"), ("else.sg.test",))]
    out = substitute(both("mis.sg.test"), {answer.name: answer.lookup})
    assert [s.rules[0].match for s in out.services] == [AddrMatch((), "mis.sg.test"), AddrMatch((), "mis.sg.test")]
    good = resolver.lookup("WEB.sg.test.")
    assert good.lookup is not None and good.name == "web.sg.test"
    assert [(r.address, r.names) for r in good.lookup.addresses] == [(A("127.0.0.7"), ("web.sg.test",))]


def both(name: str) -> Policy:
    """One service that admits by ``name``, one that refuses by it."""
    return parse_policy(f"service a tcp/1 {{\n allow host {name}\n default deny\n}}\n"
                        f"service d tcp/2 {{\n deny host {name}\n default allow\n}}\n")


def test_nxdomain_is_an_answer_that_admits_nobody(dnsmasq: Dnsmasq, resolver: NameResolver) -> None:
    answer = resolver.lookup("nope.sg.test")
    assert answer.error is None and answer.lookup is not None and answer.lookup.addresses == ()
    policy = parse_policy("service s tcp/1 {\n allow host nope.sg.test\n default deny\n}\n")
    assert substitute(policy, {answer.name: answer.lookup}).services[0].rules[0].match == AddrMatch((), "nope.sg.test")


@pytest.mark.parametrize("kind", ["silent", "absent"])
def test_a_slow_or_absent_resolver_fails_closed_within_the_timeout(tmp_path: Path, kind: str) -> None:
    server = Silent(tmp_path)
    if kind == "absent":
        server.close()  # nothing listens: the port is unreachable
    resolver = NameResolver(str(server.resolv_conf), hosts=None, timeout=1.0)
    try:
        start = time.monotonic()
        answer = resolver.lookup("web.sg.test")
        took = time.monotonic() - start
    finally:
        resolver.close()
        server.close()
    assert answer.lookup is None and answer.error and took < 1.5, (answer, took)
    book, changed = NameBook().track(["web.sg.test"]).update(answer)
    assert not changed and book.rows(answer.fetched)[0].state == "failed"
    out = substitute(both("web.sg.test"), book.in_force(answer.fetched))
    assert [s.rules[0].match for s in out.services] == [AddrMatch((), "web.sg.test"), HostPattern("web.sg.test")]


def test_etc_hosts_answers_before_dns(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.9 local.sg.test alias.sg.test\n127.0.0.7 other.sg.test\n")
    dnsmasq.hosts("127.0.0.7 web.sg.test\n")
    r = NameResolver(str(dnsmasq.resolv_conf), hosts=str(hosts), timeout=2.0)
    try:
        local, alias, web = r.lookup("local.sg.test"), r.lookup("alias.sg.test"), r.lookup("web.sg.test")
    finally:
        r.close()
    assert local.lookup is not None and [(x.address, x.names) for x in local.lookup.addresses] == [
        (A("127.0.0.9"), ("local.sg.test",))]
    assert alias.lookup is not None and alias.lookup.canonical == "local.sg.test"  # an alias: libwrap's paranoid
    # DNS gives web.sg.test 127.0.0.7, but /etc/hosts names that address other.sg.test first
    assert web.lookup is not None and [(x.address, x.names) for x in web.lookup.addresses] == [
        (A("127.0.0.7"), ("other.sg.test",))]
    assert substitute(Policy(), {}).rules == ()


def test_the_agent_enforces_a_host_name_follows_its_change_within_the_ttl_and_fails_closed(
        lab: Lab, dnsmasq: Dnsmasq) -> None:
    dnsmasq.hosts("127.0.0.5 web.sg.test\n")
    port = BASE + 3
    policy = lab.path("agent.conf", f"service web tcp/{port} {{\n    allow host web.sg.test\n    default deny\n}}\n")
    agent = lab.agent(policy, "--resolv-conf", str(dnsmasq.resolv_conf), "--hosts-file", lab.path("hosts", ""))
    s = lab.server("tcp", port)
    until("guarded", lambda: guarded_by(s.info, "web"))
    assert (connects("127.0.0.5", port), connects("127.0.0.6", port), connects("127.0.0.1", port)) == (True, False, False)
    name = agent.status()["services"][0]["names"][0]
    assert (name["name"], name["addresses"], name["error"]) == ("web.sg.test", ["127.0.0.5"], None)

    dnsmasq.hosts("127.0.0.6 web.sg.test\n")
    changed = time.monotonic()
    until("the new address admitted", lambda: connects("127.0.0.6", port, timeout=0.2), timeout=TTL + 3)
    took = time.monotonic() - changed
    assert not connects("127.0.0.5", port) and not connects("127.0.0.1", port)
    assert took <= TTL + 1.5, took  # refreshed at 90 % of the TTL; 1.5 s for the lookup, compile and attach
    assert agent.status()["policy"]["last_reload"]["trigger"] == "names"

    dnsmasq.close()  # the resolver goes away: once the answer expires, the name admits nobody
    until("the name failed closed", lambda: not connects("127.0.0.6", port, timeout=0.2), timeout=TTL + 5)
    name = until("status says so", lambda: agent.status()["services"][0]["names"][0]
                 if agent.status()["services"][0]["names"][0]["error"] else None)
    assert name["addresses"] == [] and "admits nobody" in name["error"], name
    assert guarded_by(s.info, "web")
    busy = scheduled(agent.proc.pid)
    time.sleep(1.0)  # (a measurement window, not a wait for anything)
    # its loop ran or waited to run for less than half of that second: a failing resolver is
    # retried with backoff, never in a loop (run + run-queue time, so a loaded machine cannot hide a spin)
    assert scheduled(agent.proc.pid) - busy < 0.5


def scheduled(pid: int) -> float:
    """Seconds the process's main thread has run or waited on a run queue (schedstat)."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        run, wait = f.read().split()[:2]
    return (int(run) + int(wait)) / 1e9
