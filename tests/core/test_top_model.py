"""``sockgate top``'s model and keys, sans I/O: snapshots in, rows out (top/model.py,
top/select.py). Properties over random counters, bans, filters and sorts; the rows of the
documented host (support/topdata.py) word for word."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from sockgate.errors import UsageError
from sockgate.policy.parser import parse_policy
from sockgate.top import model, select
from sockgate.top.model import BanView, ServiceView, Snapshot, SourceView, View, rate, view
from sockgate.top.select import COLUMNS, Filter, FilterError, apply, follow, parse_filter, sort_rows
from support import topdata

SRC = Path(__file__).parents[2] / "src" / "sockgate" / "top"


def test_the_model_and_the_keys_do_no_io() -> None:
    """model and select import nothing that reads the host, the agent or a terminal."""
    banned = ("os", "socket", "time", "asyncio", "select", "subprocess", "textual", "sockgate.linux", "sockgate.kernel",
              "sockgate.agent.client", "sockgate.top.feed", "sockgate.top.app")
    for name in ("model.py", "select.py"):
        tree = ast.parse((SRC / name).read_text())
        found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        found |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {f for f in found if any(f == b or f.startswith(b + ".") for b in banned)}, name


# -- the documented host ------------------------------------------------------------------------


def test_sockets_show_guard_backend_and_the_agents_state() -> None:
    v = view(topdata.with_agent())
    assert [select.cells(r, "sockets") for r in v.sockets] == [
        ("tcp", "0.0.0.0:22", "812/sshd", "root", "all", "ssh/cbpf", "guarded"),
        ("tcp", "0.0.0.0:443", "901/nginx", "www-data", "all", "web/ebpf", "guarded"),
        ("tcp", "127.0.0.1:5432", "1203/postgres", "postgres", "loopback", "NONE", "-"),
        ("udp", "0.0.0.0:53", "640/dnsmasq", "nobody", "all", "NONE", "-"),
    ]
    assert v.agent and v.refusals_from == "agent" and v.notes == ()


def test_refusal_rates_are_growth_over_wall_time() -> None:
    first, later = topdata.with_agent(1), topdata.with_agent(3, wall=topdata.T0 + 10)
    v = view(later, first)
    assert [(r.service, r.source, r.count, r.rate) for r in v.sources] == [
        ("ssh", "203.0.113.9", 360, 24.0), ("ssh", "198.51.100.7", 120, 8.0),
        ("web", "203.0.113.9", 90, 6.0), ("web", "2001:db8::bad", 15, 1.0)]
    assert [(r.service, r.count, r.sources, r.rate) for r in v.services] == [("ssh", 480, 2, 32.0), ("web", 105, 2, 7.0)]
    assert all(r.rate is None for r in view(first).sources)  # no snapshot before: no rate


def test_bans_show_every_origin_by_its_known_name_and_the_time_left() -> None:
    v = view(topdata.with_agent())
    assert [(b.net, b.origin, b.services, b.expires, b.unban_origin) for b in v.bans] == [
        ("198.51.100.7/32", "policy", "ssh", "10m00s", "manual"),
        ("203.0.113.9/32", "manual", "*", "1h00m", "manual"),
        ("192.0.2.66/32", "fail2ban", "*", "20m00s", "fail2ban"),
        ("100.64.0.0/10", "CrowdSec", "*", "1d00h", "manual"),
        ("233.252.0.5/32", "hosts.deny", "*", "never", "hosts_deny"),
    ]


def test_health_says_the_last_reload_the_drift_and_the_errors() -> None:
    doc = topdata.status()
    doc["policy"]["last_reload"].update(ok=False, error="agent.conf:3:5: expected an address")
    doc["unguarded"], doc["errors"] = 2, ["watching by polling: no cgroup2"]
    health = dict(view(Snapshot(topdata.T0, topdata.SOCKETS, status=doc)).health)
    assert health["last reload"] == "2026-09-21T14:13:20Z (file) FAILED, old policy kept: agent.conf:3:5: expected an address"
    assert health["drift"] == "2 selected socket(s) not guarded; 1 filter(s) put back"
    assert health["error"] == "watching by polling: no cgroup2"


def test_health_names_a_super_servers_listener_for_an_unknown_daemon() -> None:
    doc = topdata.status()
    doc["superserved"] = [{"proto": "tcp", "local": "0.0.0.0:2296", "port": 2296,
                           "holders": [{"pid": 1, "comm": "systemd", "argv0": "init", "uid": 0, "exe": "/usr/lib/systemd/systemd"}]}]
    health = dict(view(Snapshot(topdata.T0, topdata.SOCKETS, status=doc)).health)
    assert health["super-server"] == ("tcp 0.0.0.0:2296 held for an unknown daemon: NOT guarded if it starts one the policy "
                                      "names (--map DAEMON=tcp/2296)")


def test_without_the_agent_the_pinned_counters_are_read_and_what_is_missing_said() -> None:
    v = view(topdata.without_agent(2, wall=topdata.T0 + 20), topdata.without_agent(1))
    assert not v.agent and v.refusals_from == "eBPF counters" and v.health == ()
    assert [(r.source, r.count, r.rate) for r in v.sources] == [("203.0.113.9", 60, 1.5), ("198.51.100.7", 8, 0.2)]
    assert [(b.net, b.origin, b.services, b.expires) for b in v.bans] == [("198.51.100.7/32", "policy", "web", "10m00s")]
    assert v.notes == ("no agent (no agent at /run/sockgate/agent.sock): shown is what `ls` sees; agent health, "
                       "socket states and bans' reasons are missing",)
    nothing = view(Snapshot(topdata.T0, status_error="no agent at /x", refused_error="nothing pinned", sockets_error="EPERM"))
    assert nothing.refusals_from == "nothing" and nothing.notes[1:] == (
        "refusals and bans: no eBPF counters readable (nothing pinned)", "sockets: EPERM")


def test_hostile_names_are_escaped_before_they_are_cells() -> None:
    doc = topdata.status(bans=[topdata._ban("10.0.0.1/32", "manual", None, "evil\x1b[2J\nreason")])
    v = view(Snapshot(topdata.T0, status=doc))
    assert v.bans[0].reason == "evil\\x1b[2J\\x0areason"


# -- filter, sort, follow, explain ------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("port:http", "filter 'port:http': a port is a number 0-65535"),
    ("port:70000", "filter 'port:70000': a port is a number 0-65535"),
    ("host:x", "filter 'host:x': expected service:NAME, port:N, user:NAME or a word"),
    ("service:", "filter 'service:': expected service:NAME, port:N, user:NAME or a word"),
])
def test_a_filter_that_means_nothing_says_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(FilterError) as e:
        parse_filter(text)
    assert str(e.value) == message and isinstance(e.value, UsageError)


def test_port_and_user_select_the_services_of_those_sockets() -> None:
    v = view(topdata.with_agent())
    by_port = apply(v, parse_filter("port:22"))
    assert [r.local for r in by_port.sockets] == ["0.0.0.0:22"]
    assert {r.service for r in by_port.sources} == {"ssh"}
    assert [b.net for b in by_port.bans][:2] == ["198.51.100.7/32", "203.0.113.9/32"]  # ssh's and every service's
    by_user = apply(v, parse_filter("user:www-data"))
    assert {r.service for r in by_user.services} == {"web"}
    assert apply(v, parse_filter("user:nobody")).sources == ()  # dnsmasq's socket is guarded by no service
    assert [r.source for r in apply(v, parse_filter("service:web bad")).sources] == ["2001:db8::bad"]


def test_follow_gathers_a_sources_refusals_and_the_bans_that_cover_it() -> None:
    v = view(topdata.with_agent())
    f = follow(v, "100.64.1.2")
    assert f.refusals == () and [b.net for b in f.bans] == ["100.64.0.0/10"]
    f = follow(v, "203.0.113.9")
    assert [(r.service, r.count) for r in f.refusals] == [("ssh", 120), ("web", 30)]
    assert [b.origin for b in f.bans] == ["manual"] and f.services == ("ssh", "web")


def test_explain_is_sockgate_explains_trace_and_deciding_rule() -> None:
    policy = parse_policy(topdata.POLICY, "/etc/sockgate/sockgate.conf")
    v = view(topdata.with_agent(bans=[]))
    text = select.explain_source(policy, follow(v, "203.0.113.9"), ["ssh"])
    assert "client 203.0.113.9 (ipv4): deny (ret 0x0) after " in text
    assert "decision engine: deny — matched /etc/sockgate/sockgate.conf:3: deny 203.0.113.0/24" in text
    assert "capacity:" not in text
    banned = select.explain_source(policy, follow(view(topdata.with_agent()), "203.0.113.9"), ["web"])
    assert "decision engine: deny — banned (203.0.113.9/32)" in banned
    assert select.explain_source(None, f := follow(v, "203.0.113.9")).startswith("explain needs the policy")
    assert select.explain_source(policy, follow(v, "10.0.0.0/8")) == "explain needs one address, not 10.0.0.0/8\n"
    assert select.explain_source(policy, f, ["nope"]).startswith("service nope: the policy has no service 'nope'")


# -- properties ---------------------------------------------------------------------------------

ADDRS = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
NAMES = st.sampled_from(["ssh", "web", "dns", "x y", "evil\x1b"])
COUNTS = st.lists(st.tuples(NAMES, ADDRS, st.integers(0, 2**40)), max_size=20, unique_by=lambda t: (t[0], t[1]))


def _snapshot(counts: list[tuple[str, str, int]], wall: float) -> Snapshot:
    doc = topdata.status(bans=[])
    by: dict[str, list[tuple[str, str, int]]] = {}
    for c in counts:
        by.setdefault(c[0], []).append(c)
    doc["services"] = [
        {**doc["services"][0], "name": name, "sockets": [],
         "refusals": {"counted": True, "total": sum(n for *_, n in rows), "sources": len(rows),
                      "top": [{"source": a, "count": n, "first": None, "last": None} for _, a, n in rows]}}
        for name, rows in by.items()]
    return Snapshot(wall, status=doc)


@given(COUNTS, COUNTS, st.floats(0.001, 1e6))
@settings(max_examples=200, deadline=None)
def test_rates_are_never_negative_and_totals_add_up(before: list[tuple[str, str, int]], now: list[tuple[str, str, int]],
                                                    span: float) -> None:
    v = view(_snapshot(now, topdata.T0 + span), _snapshot(before, topdata.T0))
    assert all(r.rate is None or r.rate >= 0 for r in (*v.sources, *v.services))
    assert {s.service: s.count for s in v.services} == {
        s: sum(r.count for r in v.sources if r.service == s) for s in {r.service for r in v.sources}}
    old = {(model.escape(s), a): n for s, a, n in before}
    for r in v.sources:
        if (r.service, r.source) not in old or old[(r.service, r.source)] > r.count:
            assert r.rate is None


@given(st.one_of(st.none(), st.floats(-1e9, 1e9, allow_nan=False)))
def test_time_left_is_short_and_never_fails(seconds: float | None) -> None:
    text = model.left(seconds)
    assert len(text) <= 12 and text


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.floats(-5, 1e6, allow_nan=False))
def test_rate_is_none_or_the_growth_per_second(a: int, b: int, span: float) -> None:
    r = rate(a, b, span)
    assert (r is None) == (span < model.MIN_SPAN or b < a)
    assert r is None or abs(r * span - (b - a)) <= 1e-6 * max(1, b - a)


@given(st.text(max_size=40))
def test_a_typed_filter_parses_or_is_a_filter_error(text: str) -> None:
    try:
        f = parse_filter(text)
    except FilterError:
        return
    assert parse_filter(f.text()) == f


ROWS = st.lists(st.builds(SourceView, NAMES, ADDRS, st.integers(0, 100), st.one_of(st.none(), st.floats(0, 100)),
                          st.just("-")), max_size=30)


@given(ROWS, st.integers(0, 10), st.booleans())
def test_sorting_is_a_permutation_with_rows_without_a_value_last(rows: list[SourceView], column: int, reverse: bool) -> None:
    out = sort_rows(rows, "sources", column, reverse)
    assert sorted(map(repr, out)) == sorted(map(repr, rows))
    name = COLUMNS["sources"][column % len(COLUMNS["sources"])][1]
    values = [getattr(r, name) for r in out]
    first_none = next((i for i, x in enumerate(values) if x is None), len(values))
    assert all(x is None for x in values[first_none:])


BANS = st.lists(st.builds(BanView, st.one_of(ADDRS, st.ip_addresses(v=4).map(lambda a: f"{a}/8")), st.just("manual"),
                          st.sampled_from(["*", "ssh", "ssh,web"]), st.just("never"), st.just(""), st.just("manual")),
                max_size=10)
FILTERS = st.builds(Filter, st.one_of(st.none(), st.sampled_from(["ssh", "web", "dns"])), st.one_of(st.none(), st.sampled_from([22, 443, 53])),
                    st.one_of(st.none(), st.sampled_from(["root", "nobody"])),
                    st.lists(st.sampled_from(["ssh", "203", "web", "z"]), max_size=2).map(tuple))


BASE = view(topdata.with_agent())


@given(ROWS, BANS, FILTERS)
def test_a_filter_selects_a_subset_and_its_text_selects_the_same(sources: list[SourceView], bans: list[BanView],
                                                                         f: Filter) -> None:
    v = View(BASE.sockets, tuple(ServiceView(s, 1, 1, None) for s in ("ssh", "web")), tuple(sources), tuple(bans),
             (), (), "agent", True)
    once = apply(v, f)
    assert set(once.sources) <= set(v.sources) and set(once.bans) <= set(v.bans) and set(once.sockets) <= set(v.sockets)
    assert apply(v, parse_filter(f.text())) == once
    assert apply(v, Filter()) == v


@given(ROWS, BANS, ADDRS)
def test_follow_finds_every_row_of_the_source_and_only_bans_covering_it(sources: list[SourceView], bans: list[BanView],
                                                                       source: str) -> None:
    v = View((), (), tuple(sources), tuple(bans), (), (), "agent", True)
    f = follow(v, source)
    a = ipaddress.ip_address(source)
    assert set(f.refusals) == {r for r in sources if ipaddress.ip_address(r.source) == a}
    assert set(f.bans) == {b for b in bans if a.version == ipaddress.ip_network(b.net, strict=False).version
                           and a in ipaddress.ip_network(b.net, strict=False)}
