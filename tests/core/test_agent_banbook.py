"""agent/banbook: origins kept apart, expiry, replace_origin, effective per service with
exemptions, diff for map updates, the state file's wall-clock round trip (hypothesis) and its
refusal of anything else."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.agent.banbook import BanBook, BanEntry, BanStateError
from sockgate.policy.ir import IPNetwork


class Origin(IntEnum):  # the shape of sockgate.bans.Origin
    LIMIT = 0
    MANUAL = 1
    FAIL2BAN = 2
    CROWDSEC = 3
    HOSTS_DENY = 4


@dataclass(frozen=True, order=True)
class Banned:  # the shape of sockgate.bans.BannedPrefix
    network: IPNetwork
    expires_ns: int
    origin: Origin


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def entry(text: str, origin: Origin, expires: int = 0, services: frozenset[str] | None = None, added: int = 1) -> BanEntry[Banned]:
    return BanEntry(Banned(net(text), expires, origin), services, added)


def make(n: IPNetwork, expires_ns: int, origin: str) -> Banned:
    return Banned(n, expires_ns, Origin[origin.upper()])


A = "192.0.2.7/32"


def test_origins_are_kept_apart_and_unban_lifts_one() -> None:
    book = BanBook[Banned]().add(entry(A, Origin.FAIL2BAN, 100)).add(entry(A, Origin.CROWDSEC, 50))
    assert len(book.entries) == 2
    after = book.remove(net(A), Origin.FAIL2BAN)
    assert [b.origin for b in after.effective("ssh", 0)] == [Origin.CROWDSEC]
    assert book.remove(net(A)).entries == ()


def test_effective_is_one_ban_per_network_the_longest() -> None:
    book = BanBook[Banned]().add(entry(A, Origin.FAIL2BAN, 100)).add(entry(A, Origin.MANUAL, 0)).add(entry("2001:db8::/64", Origin.MANUAL, 9))
    assert [(str(b.network), b.expires_ns) for b in book.effective("ssh", 0)] == [(A, 0), ("2001:db8::/64", 9)]


def test_a_renewed_ban_replaces_its_entry() -> None:
    book = BanBook[Banned]().add(entry(A, Origin.MANUAL, 10)).add(entry(A, Origin.MANUAL, 20))
    assert [e.ban.expires_ns for e in book.entries] == [20]


def test_services_and_exemptions() -> None:
    book = BanBook[Banned]().add(entry(A, Origin.MANUAL, services=frozenset({"ssh", "web"}))).add(entry("198.51.100.0/24", Origin.CROWDSEC))
    assert [str(b.network) for b in book.effective("dns", 0)] == ["198.51.100.0/24"]
    assert [str(b.network) for b in book.effective("ssh", 0, exempt={Origin.CROWDSEC})] == [A]
    narrowed = book.remove(net(A), Origin.MANUAL, "ssh")
    assert narrowed.entries[0].services == {"web"} and narrowed.effective("ssh", 0, exempt={Origin.CROWDSEC}) == ()
    assert len(book.remove(net("198.51.100.0/24"), None, "ssh").entries) == 2  # a ban for all stays


def test_expiry_and_the_next_expiry() -> None:
    book = BanBook[Banned]().add(entry(A, Origin.MANUAL, 100)).add(entry("192.0.2.8/32", Origin.MANUAL, 0)).add(entry("192.0.2.9/32", Origin.FAIL2BAN, 50))
    assert book.next_expiry() == 50
    assert [str(b.network) for b in book.effective("s", 60)] == [A, "192.0.2.8/32"]
    assert len(book.expire(100).entries) == 1 and book.expire(100).next_expiry() is None


def test_replace_origin_touches_only_that_origin() -> None:
    book = BanBook[Banned]().add(entry(A, Origin.CROWDSEC)).add(entry(A, Origin.MANUAL))
    snap = book.replace_origin(Origin.CROWDSEC, [entry("192.0.2.9/32", Origin.CROWDSEC)])
    assert sorted((str(e.ban.network), e.ban.origin.name) for e in snap.entries) == [("192.0.2.7/32", "MANUAL"), ("192.0.2.9/32", "CROWDSEC")]
    with pytest.raises(ValueError, match="an entry of origin MANUAL in a snapshot of crowdsec"):
        book.replace_origin(Origin.CROWDSEC, [entry(A, Origin.MANUAL)])


def test_diff_gives_the_map_writes_and_deletes() -> None:
    old = BanBook[Banned]().add(entry(A, Origin.MANUAL, 10)).add(entry("192.0.2.8/32", Origin.MANUAL))
    new = old.remove(net("192.0.2.8/32")).add(entry(A, Origin.FAIL2BAN, 99)).add(entry("10.0.0.0/8", Origin.MANUAL))
    put, gone = new.diff(old, "ssh", 0)
    assert [(str(b.network), b.expires_ns) for b in put] == [("10.0.0.0/8", 0), (A, 99)]
    assert [str(n) for n in gone] == ["192.0.2.8/32"]
    assert new.diff(new, "ssh", 0) == ((), ())


NETS = st.one_of(st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(8, 32)),
                 st.builds(lambda a, p: ipaddress.IPv6Network((a, p), strict=False), st.integers(0, 2**128 - 1), st.integers(16, 128)))
ENTRIES = st.builds(lambda n, o, exp, svc, reason: BanEntry(Banned(n, exp, o), svc, 5_000_000_000, reason),
                    NETS, st.sampled_from(list(Origin)), st.sampled_from([0, 7_000_000_000, 9_000_000_000]),
                    st.one_of(st.none(), st.frozensets(st.sampled_from(["ssh", "web"]), min_size=1)),
                    st.one_of(st.none(), st.text(max_size=20)))
OFFSET = 1_700_000_000.0  # wall = mono + OFFSET, in seconds


@settings(max_examples=200, deadline=None)
@given(st.lists(ENTRIES, max_size=10))
def test_state_file_round_trip(entries: list[BanEntry[Banned]]) -> None:
    book: BanBook[Banned] = BanBook()
    for e in entries:
        book = book.add(e)
    doc = book.to_json(lambda ns: ns / 1e9 + OFFSET)
    back = BanBook.from_json(doc, lambda wall: round((wall - OFFSET) * 1e9), make)
    assert back == book


@pytest.mark.parametrize("doc, message", [
    ([], "not a version 1 ban state"),
    ({"version": 2, "bans": []}, "not a version 1 ban state"),
    ({"version": 1, "bans": [7]}, "ban 0: not an object"),
    ({"version": 1, "bans": [{"net": "192.0.2.1/24", "origin": "manual", "added": 1}]}, "ban 0: 192.0.2.1/24 has host bits set"),
    ({"version": 1, "bans": [{"net": 5, "origin": "manual", "added": 1}]}, "ban 0: net: expected a string"),
    ({"version": 1, "bans": [{"net": A, "origin": "nobody", "added": 1}]}, "ban 0: 'NOBODY'"),
    ({"version": 1, "bans": [{"net": A, "origin": "manual", "added": 1, "expires": "soon"}]}, "ban 0: expires: not a time"),
    ({"version": 1, "bans": [{"net": A, "origin": "manual", "added": 1, "expires": float("nan")}]}, "ban 0: expires: not a time"),
    ({"version": 1, "bans": [{"net": A, "origin": "manual", "added": True}]}, "ban 0: added: not a time"),
    ({"version": 1, "bans": [{"net": A, "origin": "manual", "added": 1, "services": [""]}]}, "ban 0: services: not a list of names"),
    ({"version": 1, "bans": [{"net": A, "origin": "manual", "added": 1, "reason": "x" * 201}]}, "ban 0: reason: not a text of at most 200"),
])
def test_a_state_file_not_as_written_is_refused(doc: object, message: str) -> None:
    with pytest.raises(BanStateError, match=message):
        BanBook.from_json(doc, lambda wall: int(wall * 1e9), make)


def test_a_ban_whose_wall_time_passed_is_expired_on_load() -> None:
    doc = {"version": 1, "bans": [{"net": A, "origin": "manual", "added": 1.0, "expires": 10.0}]}
    book = BanBook.from_json(doc, lambda wall: int((wall - 100.0) * 1e9), make)
    assert book.entries[0].ban.expires_ns == 1 and book.expire(2).entries == ()


@settings(max_examples=200, deadline=None)
@given(st.lists(ENTRIES, max_size=12), st.sampled_from(["ssh", "web", "dns"]), st.sampled_from([0, 6_000_000_000, 8_000_000_000]),
       st.frozensets(st.sampled_from(list(Origin)), max_size=2))
def test_effective_is_the_longest_applicable_ban_of_each_network(entries: list[BanEntry[Banned]], service: str, now: int,
                                                               exempt: frozenset[Origin]) -> None:
    book: BanBook[Banned] = BanBook()
    for e in entries:
        book = book.add(e)
    got = book.effective(service, now, exempt)
    assert len({b.network for b in got}) == len(got)
    applicable = [e.ban for e in book.entries if e.applies_to(service) and e.active(now) and e.ban.origin not in exempt]
    assert {b.network for b in got} == {b.network for b in applicable}
    for b in got:
        ends = [x.expires_ns for x in applicable if x.network == b.network]
        assert b.expires_ns == (0 if 0 in ends else max(ends))
    put, gone = book.diff(BanBook(), service, now, exempt)
    assert put == got and gone == ()
    assert book.diff(book, service, now, exempt) == ((), ())
