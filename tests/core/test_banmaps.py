"""The ban maps of a service without a kernel (tests/support/fakebpf.py): what ``apply`` plans
against what is in the maps, the expiry that every entry under a covering ban carries (an LPM
lookup reads only the longest prefix), the program's own bans left alone, sweep, the room
check, and ``update_bans`` through both backends."""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from typing import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.bans import BannedPrefix
from sockgate.bans import Origin as BanOrigin
from sockgate.ebpf import layout
from sockgate.ebpf.layout import Ban, Origin
from sockgate.errors import AdapterError
from sockgate.kernel import Kernel
from sockgate.kernel.banmaps import (BanMapError, BanMaps, Held, Key, Network, active, entries_of, key_of, network_of, newly_banned,
                                     normalise, plan)
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.ebpf import EbpfBackend, EbpfLoaded
from sockgate.policy.parser import parse_policy
from sockgate.resolve import resolve_service
from support.fakebpf import FakeBpf
from support.fakekernel import FakeOps

MOUNT = "/fake/bpf"
WEB = resolve_service(parse_policy("service web {\n allow 10.0.0.0/8\n default deny\n}\n").require_service("web"))
NOW = 1_000_000_000_000


def net(text: str) -> Network:
    return ipaddress.ip_network(text)


def H(expires_ns: int, origin: Origin) -> Held:
    return Held(expires_ns, int(origin))


def k(text: str) -> Key:
    return key_of(net(text))


@dataclass(frozen=True)
class B:  # what the agent's BannedPrefix looks like: network, expires_ns, origin
    network: Network
    expires_ns: int
    origin: int = Origin.MANUAL


def bans(*items: tuple[str, int] | tuple[str, int, int]) -> list[B]:
    return [B(net(i[0]), i[1], *(i[2:])) for i in items]


# ------------------------------------------------------------------------------ pure


def test_two_bans_of_one_network_keep_the_longer() -> None:
    e = entries_of(bans(("192.0.2.7/32", NOW + 5), ("192.0.2.7/32", 0, Origin.FAIL2BAN), ("192.0.2.7/32", NOW + 9)))
    assert e == {k("192.0.2.7/32"): H(0, Origin.FAIL2BAN)}
    with pytest.raises(ValueError, match="not a ban origin"):
        entries_of([B(net("192.0.2.7/32"), 0, 77)])


def test_an_entry_under_a_longer_lasting_ban_carries_its_expiry() -> None:
    got = normalise({k("192.0.2.0/24"): H(NOW + 100, Origin.CROWDSEC), k("192.0.2.7/32"): H(NOW + 5, Origin.FAIL2BAN),
                     k("192.0.2.0/25"): H(0, Origin.MANUAL), k("192.0.2.200/32"): H(NOW + 500, Origin.MANUAL),
                     k("2001:db8::/32"): H(0, Origin.MANUAL), k("2001:db8::1/128"): H(NOW, Origin.LIMIT)})
    assert got[k("192.0.2.7/32")] == H(0, Origin.FAIL2BAN)  # under the /25 that never ends
    assert got[k("192.0.2.200/32")] == H(NOW + 500, Origin.MANUAL)  # outside the /25, later than the /24
    assert got[k("192.0.2.0/24")] == H(NOW + 100, Origin.CROWDSEC)
    assert got[k("2001:db8::1/128")] == H(0, Origin.LIMIT)


def test_normalised_entries_refuse_exactly_while_some_covering_ban_lasts() -> None:
    """An LPM trie answers the longest stored prefix: its expiry alone decides."""
    raw = {k("10.0.0.0/8"): H(NOW + 50, Origin.MANUAL), k("10.1.0.0/16"): H(NOW + 10, Origin.MANUAL),
           k("10.1.2.3/32"): H(NOW + 30, Origin.LIMIT), k("10.9.0.0/16"): H(NOW + 90, Origin.MANUAL)}
    stored = normalise(raw)
    for addr in ("10.1.2.3", "10.1.9.9", "10.9.1.1", "10.200.0.1", "11.0.0.1"):
        a = ipaddress.ip_address(addr)
        longest = max((x for x in stored if a in network_of(x)), key=lambda x: x[2], default=None)
        for t in (NOW, NOW + 20, NOW + 40, NOW + 60, NOW + 100):
            truth = any(a in network_of(x) and active(b, t) for x, b in raw.items())
            assert (longest is not None and active(stored[longest], t)) == truth, (addr, t)


PREFIX = st.tuples(st.integers(0, 255), st.sampled_from([8, 16, 24, 28, 32]))
EXPIRY = st.sampled_from([0, NOW - 1, NOW + 10, NOW + 20, NOW + 30])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(PREFIX, st.tuples(EXPIRY, st.sampled_from(list(Origin))), max_size=12),
       st.lists(st.integers(0, 255), min_size=1, max_size=8), st.sampled_from([NOW, NOW + 15, NOW + 25, NOW + 40]))
def test_property_the_longest_match_is_active_exactly_when_a_covering_ban_is(
        raw: dict[tuple[int, int], tuple[int, Origin]], lows: list[int], t: int) -> None:
    """Prefixes of 10.x.y.z with nesting at every length: after ``normalise`` the one entry a
    trie lookup finds refuses exactly when some stored ban holding the address is active."""
    entries = {}
    for (byte, length), (expires, origin) in raw.items():
        n = ipaddress.ip_network((0x0A000000 | byte << 8 | byte, length), strict=False)
        entries[key_of(n)] = H(expires, origin)
    stored = normalise(entries)
    assert {x: b.origin for x, b in stored.items()} == {x: b.origin for x, b in entries.items()}
    for low in lows:
        a = ipaddress.ip_address(0x0A000000 | low << 8 | low)
        holding = [x for x in stored if a in network_of(x)]
        longest = max(holding, key=lambda x: x[2], default=None)
        truth = any(active(entries[x], t) for x in holding)
        assert (longest is not None and active(stored[longest], t)) == truth


def test_plan_deletes_what_is_not_wanted_but_never_the_programs_own_bans() -> None:
    current = {k("192.0.2.1/32"): H(0, Origin.MANUAL), k("192.0.2.2/32"): H(NOW + 9, Origin.LIMIT),
               k("192.0.2.3/32"): H(NOW + 9, Origin.FAIL2BAN)}
    wanted = {k("192.0.2.3/32"): H(NOW + 9, Origin.FAIL2BAN), k("198.51.100.0/24"): H(0, Origin.CROWDSEC)}
    p = plan(current, wanted)
    assert p.deletes == (k("192.0.2.1/32"),)
    assert p.puts == {k("198.51.100.0/24"): H(0, Origin.CROWDSEC)}  # the unchanged one is not rewritten


def test_a_programs_ban_under_a_longer_ban_is_dropped_not_lengthened() -> None:
    """Lengthened, it would outlive the covering ban's unban."""
    current = {k("192.0.2.2/32"): H(NOW + 9, Origin.LIMIT), k("192.0.2.3/32"): H(0, Origin.LIMIT)}
    p = plan(current, {k("192.0.2.0/24"): H(NOW + 50, Origin.MANUAL)})
    assert p.puts == {k("192.0.2.0/24"): H(NOW + 50, Origin.MANUAL)}
    assert p.deletes == (k("192.0.2.2/32"),)  # the one that never ends outlasts the /24: kept


def test_put_of_a_network_drops_the_programs_bans_it_outlasts() -> None:
    _, _, _, _, maps, _ = setup()
    maps.put(net("192.0.2.2/32"), NOW + 9, Origin.LIMIT)
    maps.put(net("192.0.2.0/24"), 0, Origin.MANUAL)
    assert maps.list() == [(net("192.0.2.0/24"), Ban(0, Origin.MANUAL))]
    assert maps.delete(net("192.0.2.0/24")) and maps.list() == []


def test_newly_banned_is_active_now_and_was_not_before() -> None:
    current = {k("192.0.2.1/32"): H(0, Origin.MANUAL), k("192.0.2.2/32"): H(NOW - 1, Origin.MANUAL)}
    puts = {k("192.0.2.1/32"): H(NOW + 5, Origin.MANUAL), k("192.0.2.2/32"): H(NOW + 5, Origin.MANUAL),
            k("192.0.2.3/32"): H(NOW - 5, Origin.MANUAL), k("2001:db8::/64"): H(0, Origin.MANUAL)}
    assert newly_banned(current, puts, NOW) == [k("192.0.2.2/32"), k("2001:db8::/64")]


# ------------------------------------------------------------------ the maps (fake bpf)


class Ends:
    def __init__(self) -> None:
        self.calls: list[tuple[list[int], list[Network]]] = []

    def __call__(self, ports: Iterable[int], prefixes: Iterable[Network]) -> int:
        self.calls.append((sorted(ports), list(prefixes)))
        return 1


def setup() -> tuple[FakeBpf, EbpfBackend, Kernel, EbpfLoaded, BanMaps, Ends]:
    ops = FakeOps()
    bpf = FakeBpf(ops)
    backend = EbpfBackend(bpf, MOUNT)
    kernel = Kernel([ClassicBackend(ops), backend], ops)
    loaded = kernel.load(kernel.compile(WEB, backend="ebpf"))
    assert isinstance(loaded, EbpfLoaded)
    ends = Ends()
    maps = BanMaps(bpf, backend.paths.service("web"), destroy=ends, clock=lambda: NOW)
    return bpf, backend, kernel, loaded, maps, ends


def test_put_list_delete_and_sweep() -> None:
    _, _, _, _, maps, ends = setup()
    maps.put(net("192.0.2.7/32"), NOW + 10, Origin.FAIL2BAN, ports=[22])
    maps.put(net("2001:db8::/64"), 0, Origin.MANUAL)
    maps.put(net("198.51.100.0/24"), NOW - 1, Origin.MANUAL, ports=[22])  # already over: nothing to end
    assert maps.list() == [(net("192.0.2.7/32"), Ban(NOW + 10, Origin.FAIL2BAN)),
                           (net("198.51.100.0/24"), Ban(NOW - 1, Origin.MANUAL)),
                           (net("2001:db8::/64"), Ban(0, Origin.MANUAL))]
    assert ends.calls == [([22], [net("192.0.2.7/32")])]
    assert maps.sweep() == 1 and maps.sweep(NOW + 10) == 1  # expires_ns == now is over (the program: expires > now)
    assert maps.list() == [(net("2001:db8::/64"), Ban(0, Origin.MANUAL))]
    assert maps.delete(net("2001:db8::/64")) and not maps.delete(net("2001:db8::/64"))


def test_apply_brings_the_maps_to_the_wanted_set_and_ends_only_the_new() -> None:
    _, _, kernel, loaded, maps, ends = setup()
    maps.put(net("192.0.2.2/32"), NOW + 9, Origin.LIMIT)
    assert kernel.update_bans(loaded, bans(("192.0.2.1/32", 0), ("2001:db8::/64", NOW + 5))) is True
    assert kernel.update_bans("web", bans(("2001:db8::/64", NOW + 5), ("192.0.2.9/32", 0))) is True
    assert [n for n, _ in maps.list()] == [net("192.0.2.2/32"), net("192.0.2.9/32"), net("2001:db8::/64")]
    r = maps.apply(bans(("192.0.2.9/32", 0), ("203.0.113.0/24", 0)), ports=[80])
    assert (r.put, r.deleted, r.ended) == (1, 1, 1) and ends.calls == [([80], [net("203.0.113.0/24")])]
    assert [n for n, _ in maps.list()] == [net("192.0.2.2/32"), net("192.0.2.9/32"), net("203.0.113.0/24")]


def test_the_shared_ban_type_goes_in_as_it_is() -> None:
    _, _, kernel, _, maps, _ = setup()
    assert kernel.update_bans("web", [BannedPrefix(net("192.0.2.0/24"), NOW + 5, BanOrigin.CROWDSEC)]) is True
    assert maps.list() == [(net("192.0.2.0/24"), Ban(NOW + 5, Origin.CROWDSEC))]


def test_classic_bpf_asks_for_a_recompile() -> None:
    _, _, kernel, _, _, _ = setup()
    assert kernel.update_bans("web", bans(("192.0.2.1/32", 0)), backend="cbpf") is False


def test_apply_refuses_a_set_larger_than_the_map_before_writing() -> None:
    bpf, _, _, _, maps, _ = setup()
    maps.put(net("192.0.2.1/32"), 0, Origin.MANUAL)
    bpf.pins[f"{maps.directory}/bans4"].spec = layout.bans_spec(4, 2)
    with pytest.raises(BanMapError, match="3 IPv4 bans wanted, the map holds 2; nothing was changed") as e:
        maps.apply(bans(("192.0.2.1/32", 0), ("192.0.2.2/32", 0), ("192.0.2.3/32", 0)))
    assert e.value.errno == errno.E2BIG and [n for n, _ in maps.list()] == [net("192.0.2.1/32")]
    maps.apply(bans(("192.0.2.2/32", 0), ("192.0.2.3/32", 0)))  # one deleted first: it fits
    assert [n for n, _ in maps.list()] == [net("192.0.2.2/32"), net("192.0.2.3/32")]


def test_missing_or_foreign_maps_are_one_line_errors() -> None:
    bpf, backend, _, _, maps, _ = setup()
    with pytest.raises(BanMapError, match="no ban map pinned .*--backend ebpf"):
        backend.bans("other").list()
    bpf.pins[f"{maps.directory}/bans6"].spec = layout.counts_spec()
    with pytest.raises(BanMapError, match="bans6: not a sockgate ban map"):
        maps.list()
    assert not [o for o in bpf.fds.values() if type(o).__name__ == "FakeMap"]  # every map fd was closed


# ------------------------------------------------------ sweeping, races, a full trie (F2)


def test_sweep_keeps_an_entry_refreshed_since_it_was_read() -> None:
    """Lookup-compare-delete: a ban the program set again between the walk and the delete
    stays."""
    bpf, _, _, _, maps, _ = setup()
    maps.put(net("192.0.2.7/32"), NOW - 5, Origin.LIMIT)
    maps.put(net("192.0.2.8/32"), NOW - 5, Origin.LIMIT)
    real_lookup = bpf.map_lookup

    def refreshing(fd: int, key: bytes, value_size: int) -> bytes | None:
        if key.endswith(ipaddress.IPv4Address("192.0.2.7").packed):  # the program bans it again meanwhile
            bpf.fds[fd].entries[key] = H(NOW + 60, Origin.LIMIT).pack()
        return real_lookup(fd, key, value_size)

    bpf.map_lookup = refreshing  # type: ignore[method-assign]
    assert maps.sweep() == 1
    assert maps.list() == [(net("192.0.2.7/32"), Ban(NOW + 60, Origin.LIMIT))]


def test_a_manual_ban_over_a_programs_longer_ban_keeps_it_across_apply() -> None:
    _, _, _, _, maps, _ = setup()
    maps.put(net("192.0.2.2/32"), NOW + 90, Origin.LIMIT)
    maps.put(net("192.0.2.2/32"), NOW + 10, Origin.MANUAL)
    assert maps.list() == [(net("192.0.2.2/32"), Ban(NOW + 90, Origin.LIMIT))]  # the later expiry
    maps.apply([])  # the manual ban no longer wanted: the program's stays
    assert maps.list() == [(net("192.0.2.2/32"), Ban(NOW + 90, Origin.LIMIT))]
    maps.apply(bans(("192.0.2.2/32", NOW + 10)))  # wanted with a shorter expiry: not shortened
    assert maps.list() == [(net("192.0.2.2/32"), Ban(NOW + 90, Origin.LIMIT))]
    maps.apply(bans(("192.0.2.2/32", 0)))  # one that outlasts it takes over
    assert maps.list() == [(net("192.0.2.2/32"), Ban(0, Origin.MANUAL))]


def test_a_put_into_a_full_trie_sweeps_and_retries_once() -> None:
    bpf, _, _, _, maps, _ = setup()
    bpf.pins[f"{maps.directory}/bans4"].spec = layout.bans_spec(4, 2)
    maps.put(net("192.0.2.1/32"), NOW - 1, Origin.LIMIT)
    maps.put(net("192.0.2.2/32"), NOW - 1, Origin.LIMIT)
    maps.put(net("192.0.2.3/32"), 0, Origin.MANUAL)  # full of expired entries: swept, then written
    assert maps.list() == [(net("192.0.2.3/32"), Ban(0, Origin.MANUAL))]
    maps.put(net("192.0.2.4/32"), 0, Origin.MANUAL)
    with pytest.raises(AdapterError) as e:  # full of active bans: the error stands
        maps.put(net("192.0.2.5/32"), 0, Origin.MANUAL)
    assert e.value.errno == errno.E2BIG


def test_loading_a_service_sweeps_its_expired_bans() -> None:
    _, backend, kernel, _, maps, _ = setup()
    maps.put(net("192.0.2.1/32"), 1, Origin.LIMIT)  # long over (CLOCK_MONOTONIC ns)
    maps.put(net("192.0.2.2/32"), 0, Origin.MANUAL)
    kernel.load(kernel.compile(WEB, backend="ebpf"))
    assert maps.list() == [(net("192.0.2.2/32"), Ban(0, Origin.MANUAL))]
    assert backend.sweep_bans("web") == 0 and backend.sweep_bans("nothing-here") == 0


def test_apply_sweeps_the_programs_expired_bans_when_they_take_the_room() -> None:
    bpf, _, _, _, maps, _ = setup()
    bpf.pins[f"{maps.directory}/bans4"].spec = layout.bans_spec(4, 2)
    maps.put(net("192.0.2.1/32"), NOW - 1, Origin.LIMIT)  # the program's, expired: apply keeps it, a sweep does not
    maps.put(net("192.0.2.2/32"), NOW - 1, Origin.LIMIT)
    maps.apply(bans(("198.51.100.1/32", 0), ("198.51.100.2/32", 0)))
    assert [n for n, _ in maps.list()] == [net("198.51.100.1/32"), net("198.51.100.2/32")]


def test_an_ipv4_mapped_ban_is_the_ipv4_clients_ban_and_never_wider_than_allowed() -> None:
    """What a dual-stack socket's ``getpeername`` gives (``::ffff:a.b.c.d``) names an IPv4
    client: written into ``bans6`` it would never be looked at (the program refuses a mapped
    IPv6 source as forged, before any ban, and looks IPv4 clients up in ``bans4``) — a ban
    that bans nothing. It is folded to IPv4, and ``::ffff:0:0/96`` (0.0.0.0/0) refused."""
    _, _, _, _, maps, ends = setup()
    maps.put(net("::ffff:192.0.2.7/128"), 0, Origin.MANUAL, ports=[22])
    maps.apply(bans(("::ffff:192.0.2.7/128", 0), ("::ffff:198.51.100.0/120", NOW + 5)), ports=[22])
    assert maps.list() == [(net("192.0.2.7/32"), Ban(0, Origin.MANUAL)), (net("198.51.100.0/24"), Ban(NOW + 5, Origin.MANUAL))]
    assert ends.calls[0] == ([22], [net("192.0.2.7/32")])
    assert entries_of(bans(("::ffff:192.0.2.7/128", 0))) == {k("192.0.2.7/32"): H(0, Origin.MANUAL)}
    for wide in ("::ffff:0:0/96", "::ffff:0:0/100"):
        with pytest.raises(ValueError, match="too wide"):
            maps.put(net(wide), 0, Origin.MANUAL)
        with pytest.raises(ValueError, match="too wide"):
            maps.apply(bans((wide, 0)))
    assert len(maps.list()) == 2
    assert maps.delete(net("::ffff:192.0.2.7/128")) and maps.list() == [(net("198.51.100.0/24"), Ban(NOW + 5, Origin.MANUAL))]
