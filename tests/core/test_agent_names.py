"""The edge of host-name lookups without DNS (``agent/names.py``): /etc/hosts as the C
library's files backend reads it, the worker thread and its eventfd, and a resolver
configuration that cannot be used failing the lookup (never raising)."""

from __future__ import annotations

import ipaddress
import select
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dns.name
import dns.rdatatype
import pytest

from sockgate.agent import names
from sockgate.agent.names import HostsFile, NameResolver
from sockgate.policy.forward import admitted

A = ipaddress.ip_address
HOSTS = """\
# comment
127.0.0.1   localhost
10.0.0.5    Web.SG.test web   # trailing comment
10.0.0.6    other.sg.test web.sg.test
fe80::1%eth0 link.sg.test
not-an-address bogus.sg.test
10.0.0.7
"""


def test_hosts_file_forward_and_reverse() -> None:
    h = HostsFile.parse(HOSTS)
    assert h.forward("web.sg.test") == ("web.sg.test", (A("10.0.0.5"), A("10.0.0.6")))
    assert h.forward("web") == ("web.sg.test", (A("10.0.0.5"),))  # an alias: its canonical name differs
    assert h.forward("link.sg.test") == ("link.sg.test", (A("fe80::1"),))
    assert h.forward("bogus.sg.test") is None and h.forward("nope") is None
    assert h.reverse(A("10.0.0.6")) == ("other.sg.test",) and h.reverse(A("10.0.0.7")) is None


def test_the_worker_answers_through_its_descriptor(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    r = NameResolver(str(tmp_path / "no-resolv.conf"), hosts=str(hosts), timeout=1.0)
    try:
        r.submit(["WEB.sg.test", "nowhere.sg.test"])
        got = {}
        for _ in range(10):
            if len(got) == 2:
                break
            assert select.select([r], [], [], 5)[0]
            got.update({a.name: a for a in r.results()})
    finally:
        r.close()
    web, nowhere = got["web.sg.test"], got["nowhere.sg.test"]
    assert web.lookup is not None and [x.address for x in web.lookup.addresses] == [A("10.0.0.5"), A("10.0.0.6")]
    assert [x.names for x in web.lookup.addresses] == [("web.sg.test",), ("other.sg.test",)]
    assert nowhere.lookup is None and nowhere.error and "no-resolv.conf" in nowhere.error


def test_a_cname_in_one_answer_is_not_hidden_by_the_other_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """The A answer came through a CNAME (canonical name elsewhere), the AAAA answer, asked a
    moment later, did not (the record changed between the queries, or a resolver answers each
    type its own way): libwrap would see the other name and admit nobody, so the name's
    canonical name is the one that differs, whichever family is asked last."""
    name = dns.name.from_text("web.sg.test")
    answers = {
        dns.rdatatype.A: SimpleNamespace(canonical_name=dns.name.from_text("cdn.elsewhere.test"),
                                         chaining_result=SimpleNamespace(minimum_ttl=300),
                                         rrset=[SimpleNamespace(to_text=lambda: "203.0.113.9")]),
        dns.rdatatype.AAAA: SimpleNamespace(canonical_name=name, chaining_result=SimpleNamespace(minimum_ttl=300),
                                            rrset=None),
        dns.rdatatype.PTR: SimpleNamespace(canonical_name=name, chaining_result=SimpleNamespace(minimum_ttl=300),
                                           rrset=[SimpleNamespace(to_text=lambda: "web.sg.test.")]),
    }
    monkeypatch.setattr(names, "_ask", lambda res, qname, rdtype, deadline: answers[rdtype])
    monkeypatch.setattr(NameResolver, "_resolver", lambda self: None)
    answer = NameResolver(hosts=None).lookup("web.sg.test")
    assert answer.lookup is not None and answer.lookup.canonical == "cdn.elsewhere.test"
    assert admitted(answer.lookup) == ()


def test_an_ipv4_mapped_answer_is_reverse_looked_up_as_its_ipv4_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver answers web.sg.test's AAAA with ::ffff:127.0.0.1 and every PTR with
    web.sg.test. The peer that address stands for is 127.0.0.1, whose name the hosts file
    gives (localhost, as libwrap's gethostbyaddr would): the mapped form's PTR must not be
    asked instead, or a lying resolver admits this host's own loopback (any local user)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    name = dns.name.from_text("web.sg.test")

    def ask(res: Any, qname: Any, rdtype: Any, deadline: float) -> Any:
        records = {dns.rdatatype.A: None, dns.rdatatype.AAAA: ["::ffff:127.0.0.1"], dns.rdatatype.PTR: ["web.sg.test."]}
        rrset = records[rdtype]
        return SimpleNamespace(canonical_name=name, chaining_result=SimpleNamespace(minimum_ttl=300),
                               rrset=None if rrset is None else [SimpleNamespace(to_text=lambda t=t: t) for t in rrset])

    monkeypatch.setattr(names, "_ask", ask)
    monkeypatch.setattr(NameResolver, "_resolver", lambda self: None)
    answer = NameResolver(hosts=str(hosts)).lookup("web.sg.test")
    assert answer.lookup is not None
    assert [(x.address, x.names) for x in answer.lookup.addresses] == [(A("127.0.0.1"), ("localhost",))]
    assert admitted(answer.lookup) == ()


def test_many_new_names_are_answered_within_one_timeout_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload's new names are looked up on the agent's loop (a policy is compiled with its
    answers): with a resolver that answers each just before the timeout, 40 names must cost
    about one timeout, not one per batch of workers — meanwhile no new socket is guarded."""
    timeout = 0.5

    def slow(self: NameResolver, name: str, deadline: float) -> Any:
        time.sleep(max(0.0, min(timeout * 0.9, deadline - time.monotonic())))
        raise names.Failed("timed out")

    monkeypatch.setattr(NameResolver, "_lookup", slow)
    r = NameResolver(hosts=None, timeout=timeout)
    start = time.monotonic()
    answers = r.lookup_all([f"n{i}.sg.test" for i in range(40)])
    elapsed = time.monotonic() - start
    r.close()
    assert len(answers) == 40 and all(a.lookup is None for a in answers)
    assert elapsed < 3 * timeout, f"40 names took {elapsed:.2f} s with a {timeout} s timeout"
