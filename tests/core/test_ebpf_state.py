"""The eBPF program with service state, by its listing: which maps it uses, where bans are
looked up, how a refusal is counted and reported; and the rate limits' arithmetic, against
the proxy's limiter (the kernel tests run the same program for real)."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest

from sockgate.ebpf import Options, compile_service
from sockgate.ebpf.disasm import listing
from sockgate.ebpf.layout import DEFAULT_COUNTERS, DEFAULT_EVENT_INTERVAL_NS, EVENT
from sockgate.ebpf.program import EbpfProgram
from sockgate.ebpf.rates import Gcra, limits_of
from sockgate.errors import UnsupportedInKernel
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.kernel.ebpf import EbpfBackend
from sockgate.policy.needs import Need
from sockgate.policy.ir import Action, AddrMatch, Limits, Rate, Rule, Service
from sockgate.policy.source import Span
from sockgate.proxy.limits import Limiter
from sockgate.resolve import resolve_service


def rule(action: str, *nets: str, line: int = 1, limits: Limits | None = None) -> Rule:
    return Rule(Action(action), AddrMatch(tuple(ipaddress.ip_network(n) for n in nets)), Span("t.conf", line, 1), action,
                limits=limits)


SVC = Service("svc", (rule("deny", "10.1.0.0/16", "2001:db8:1::/48"), rule("allow", "10.0.0.0/8", "2001:db8::/32", line=2)),
              Action.DENY)
LIMITED = replace(SVC, rules=(SVC.rules[0], replace(SVC.rules[1], limits=Limits(rate_per_source=Rate(3, 60), ban_seconds=600))))


def text(prog: EbpfProgram) -> str:
    return listing(prog.insns, None)


def test_service_maps_are_the_ones_the_program_loads() -> None:
    plain, limited = compile_service(SVC, options=Options()), compile_service(LIMITED, options=Options())
    assert [s.name for s in plain.service_maps] == ["sg_bans4", "sg_bans6", "sg_counts", "sg_events", "sg_stats"]
    assert [s.name for s in limited.service_maps] == ["sg_bans4", "sg_bans6", "sg_counts", "sg_events", "sg_stats",
                                                      "sg_buckets"]
    assert {name for _, name in limited.relocations} == {"sg_lpm4", "sg_lpm6"} | {s.name for s in limited.service_maps}
    counts = next(s for s in plain.service_maps if s.name == "sg_counts")
    assert counts.max_entries == DEFAULT_COUNTERS and counts.key_size == 20 and counts.value_size == 32
    sized = compile_service(SVC, options=Options(counters=100))
    assert next(s for s in sized.service_maps if s.name == "sg_counts").max_entries == 100 and sized.digest != plain.digest
    with pytest.raises(ValueError, match="no file descriptor for map 'sg_bans4'"):
        plain.link({"sg_lpm4": 3, "sg_lpm6": 4})
    assert compile_service(SVC).service_maps == ()  # without options: the rules alone


def test_bans_come_after_the_forged_check_and_before_the_rules() -> None:
    prog = compile_service(SVC, options=Options())
    labels = dict(prog.relocations)
    order = sorted(labels)  # slots of the map loads, in program order
    assert [labels[s] for s in order[:4]] == ["sg_bans4", "sg_lpm4", "sg_bans6", "sg_lpm6"]
    t = listing(prog.insns)
    assert t.index("if r1 == 0xffff goto") < t.index(f"{order[2]:5d}: r1 = map[fd 0]")  # forged, then bans6
    # a ban that never expires (0) or expires later than now denies
    assert "if r9 == 0x0 goto" in t and "call bpf_ktime_get_ns#5" in t and "if r9 > r0 goto" in t


def test_a_refusal_is_counted_atomically_and_its_event_claimed_once() -> None:
    t = text(compile_service(SVC, options=Options()))
    assert "lock *(u64 *)(r0 +0) += r1" in t  # refused++
    assert "*(u64 *)(r0 +16) = r9" in t  # last_ns
    assert "r0 = cmpxchg_64(r3 +24, r0, r2)" in t  # event_ns: one CPU wins the interval
    assert "r4 = 1" in t  # the insert is BPF_NOEXIST: first_ns set once
    assert f"r3 = {DEFAULT_EVENT_INTERVAL_NS:#x} ll" in t and f"r3 = {EVENT.size}" in t
    assert "call bpf_ringbuf_output#130" in t


def test_only_tcp_reads_the_tcp_flags() -> None:
    tcp, udp = compile_service(SVC, options=Options()), compile_service(SVC, options=Options(protocol="udp"))
    assert "r1 &= 18" in text(tcp) and "r1 &= 18" not in text(udp)  # SYN|ACK == SYN
    assert "r2 = 53" in text(tcp)  # IPv6: 40 + 13
    assert tcp.digest != udp.digest and len(udp) < len(tcp)


def test_rate_limits_are_enforced_in_the_kernel_concurrent_ones_are_not() -> None:
    with pytest.raises(UnsupportedInKernel, match="has connection limits"):
        compile_service(LIMITED)  # the stateless program cannot
    prog = compile_service(LIMITED, options=Options())
    t = text(prog)
    assert f"r1 = {600 * 10**9:#x} ll" in t  # the ban's duration
    assert "if r7 != 0x1 goto" in t  # rule 1's limits apply to rule 1's matches
    assert "r0 = cmpxchg_64(r3 +0, r0, r2)" in t  # a bucket is taken atomically
    conc = replace(SVC, limits=Limits(concurrent_total=10))
    with pytest.raises(UnsupportedInKernel, match=r"concurrent connection limits \(the service\).*sockgate proxy"):
        compile_service(conc, options=Options())


def test_limits_of_scopes_and_rates() -> None:
    svc = replace(LIMITED, limits=Limits(rate_total=Rate(100, 1)))
    service_limit, rule_limit = limits_of(resolve_service(svc))
    assert (service_limit.scope, service_limit.rule, service_limit.per_source) == (0, None, None)
    assert service_limit.total == Gcra(10_000_000, 990_000_000)
    assert (rule_limit.scope, rule_limit.rule, rule_limit.ban_ns) == (2, 1, 600 * 10**9)
    assert rule_limit.per_source == Gcra(20 * 10**9, 40 * 10**9)


# ------------------------------------------------- the kernel's rate against the proxy's


def kernel_admits(rate: Rate, times: list[float]) -> list[bool]:
    g, tat, out = Gcra.of(rate), 0, []
    for t in times:
        ok, tat = g.admit(tat, round(t * 10**9))
        out.append(ok)
    return out


def proxy_admits(rate: Rate, times: list[float]) -> list[bool]:
    lim: Limiter[str] = Limiter(Limits(rate_per_source=rate))
    out = []
    for t in times:
        v = lim.admit("a", t)
        out.append(v.ok)
        if v.ok:
            lim.release("a")  # rates count connections made, not open
    return out


@pytest.mark.parametrize("rate", [Rate(1, 1), Rate(3, 60), Rate(10, 1), Rate(100, 3600)])
def test_a_burst_and_a_steady_pace_are_admitted_alike(rate: Rate) -> None:
    burst = [1000.0] * (rate.count + 3)
    assert kernel_admits(rate, burst) == proxy_admits(rate, burst) == [True] * rate.count + [False] * 3
    pace = [1000.0 + i * rate.seconds / rate.count for i in range(5 * rate.count)]
    assert kernel_admits(rate, pace) == proxy_admits(rate, pace) == [True] * len(pace)


@pytest.mark.parametrize("seed", range(20))
def test_under_any_arrivals_both_keep_the_long_run_rate_the_window_is_stricter(seed: int) -> None:
    """The documented difference (rates.py): the bucket refills after a burst where the
    window waits a whole period. Over a span of P periods both admit at most N (P + 1); in
    any one period the proxy admits at most N, the kernel at most 2N - 1; the kernel never
    admits fewer in all."""
    rng = random.Random(seed)
    rate = Rate(rng.randint(1, 20), rng.choice([1.0, 10.0, 60.0]))
    span = 10 * rate.seconds
    times = sorted(1000 + rng.random() * span for _ in range(rng.randint(1, 40 * rate.count)))
    k, p = kernel_admits(rate, times), proxy_admits(rate, times)
    assert sum(p) <= sum(k) <= rate.count * 11
    for i, t in enumerate(times):  # in any window of one period: the proxy N, the kernel 2N - 1
        window = [j for j in range(i + 1) if times[j] > t - rate.seconds]
        assert sum(p[j] for j in window) <= rate.count
        assert sum(k[j] for j in window) <= 2 * rate.count - 1


# ------------------------------------------------------- limited rules keep their regions


def test_a_limited_rule_is_not_merged_into_a_neighbour_of_the_same_action() -> None:
    limited = Limits(rate_per_source=Rate(3, 60))
    svc = Service("svc", (rule("allow", "10.1.0.0/16"), rule("allow", "10.0.0.0/8", line=2, limits=limited),
                          rule("deny", "10.2.0.0/16", line=3)), Action.ALLOW)
    prog = compile_service(svc, options=Options())
    v4 = {str(k.network): (v.action, v.rule) for k, v in prog.maps[0].entries}
    assert "10.1.0.0/16" not in v4 and v4["10.2.0.0/15"] == (Action.ALLOW, 1)  # rule 0: like the default
    assert v4["10.0.0.0/16"] == (Action.ALLOW, 1) and "0.0.0.0/5" not in v4  # the default is not stored
    assert sum(1 for a, r in v4.values() if r == 1) == 8  # 10/8 minus 10.1/16, as prefixes
    plain = replace(svc, rules=tuple(replace(r, limits=None) for r in svc.rules))
    assert compile_service(plain, options=Options()).maps[0].entries == ()  # no limits: all like the default


def test_options_are_checked_before_anything_is_made() -> None:
    with pytest.raises(ValueError, match="tcp or udp"):
        Options(protocol="sctp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="power of two"):
        Options(ring_bytes=5000)
    with pytest.raises(ValueError, match="not negative"):
        Options(event_interval_ns=-1)
    with pytest.raises(ValueError, match="at least one entry"):
        compile_service(SVC, options=Options(counters=0))


def test_protocol_any_reads_it_from_the_packet() -> None:
    """One program for a service's TCP and UDP sockets: the IPv4 protocol byte (offset 9) and
    the IPv6 next header decide whether the TCP flags are read at all."""
    anyp = compile_service(LIMITED, options=Options(protocol="any"))
    t = text(anyp)
    assert "r2 = 9" in t and "if r1 == 0x11 goto" in t  # IPv4 protocol; IPv6 next header UDP: new
    assert "r1 &= 18" in t and "r2 = 53" in t  # TCP: SYN without ACK
    tcp = compile_service(LIMITED, options=Options())
    assert anyp.digest != tcp.digest and "r2 = 9" not in text(tcp)


def test_backend_compiles_with_state_and_enforces_rate_limits() -> None:
    assert ClassicBackend(None).enforces == frozenset()  # type: ignore[arg-type]
    backend = EbpfBackend(None)  # type: ignore[arg-type]
    assert backend.enforces == {Need.SOURCE_RATE_LIMIT, Need.TOTAL_RATE_LIMIT}
    prog = backend.compile(resolve_service(LIMITED))
    assert [s.name for s in prog.service_maps] == ["sg_bans4", "sg_bans6", "sg_counts", "sg_events", "sg_stats",
                                                    "sg_buckets"]
    assert prog.digest == compile_service(LIMITED, options=Options(protocol="any")).digest
    with pytest.raises(UnsupportedInKernel, match="concurrent connection limits"):
        backend.compile(resolve_service(replace(SVC, limits=Limits(concurrent_per_source=2))))
