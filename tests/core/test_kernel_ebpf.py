"""The eBPF backend without a kernel (tests/support/fakebpf.py): loading pins, recognising a
socket by its cookie, restoring after a failed transaction, reusing or replacing service maps,
the clean-up, the choice of backend, and the pure checks of bpffs paths."""

from __future__ import annotations

import errno
import ipaddress
import os
import stat
import time
from dataclasses import replace
from typing import Any, Sequence

import pytest

from sockgate.resolve.ranges import Banned
from sockgate.ebpf import layout, registry
from sockgate.ebpf.maps import LpmKey
from sockgate.ebpf.program import EbpfProgram, compile_service
from sockgate.errors import AdapterError, CompileError, UnsupportedInKernel, UnsupportedPlatform, UsageError
from sockgate.kernel import Kernel, Slot, Step
from sockgate.kernel.cbpf import ClassicBackend
from sockgate.ebpf.program import compile_service as compile_with_options
from sockgate.kernel.ebpfopts import OPTIONS as EBPF_OPTIONS, options as ebpf_options, probe_program
from sockgate.policy.parser import parse_policy as parse_text
from sockgate.kernel.ebpf import EbpfBackend, EbpfLoaded
from sockgate.kernel.ebpfcollect import stale
from sockgate.kernel.ebpfstore import can_carry, same_shape
from sockgate.kernel.reading import BpfFilter, GuardInfo
from sockgate.linux.bpffs import components, trust_problem
from sockgate.policy.ir import Service
from sockgate.policy.parser import parse_policy
from sockgate.resolve import resolve_service
from support.fakebpf import FakeBpf, FakeProg
from support.fakekernel import FakeOps

MOUNT = "/fake/bpf"
A = parse_policy("service web {\n allow 10.0.0.0/8\n default deny\n}\n").require_service("web")
B = parse_policy("service web {\n allow 10.1.0.0/16\n default deny\n}\n").require_service("web")


def setup(**kw: Any) -> tuple[FakeOps, FakeBpf, EbpfBackend, Kernel]:
    ops = FakeOps()
    bpf = FakeBpf(ops, **kw)
    backend = EbpfBackend(bpf, MOUNT)
    return ops, bpf, backend, Kernel([ClassicBackend(ops), backend], ops)


def load(kernel: Kernel, svc: Service) -> EbpfLoaded:
    loaded = kernel.load(kernel.compile(resolve_service(svc), backend="ebpf"))
    assert isinstance(loaded, EbpfLoaded)
    return loaded


# ------------------------------------------------------------------- load and recognise


def test_load_pins_the_program_and_its_tries_under_its_digest() -> None:
    _, bpf, _, kernel = setup()
    lo = load(kernel, A)
    d = f"{MOUNT}/sockgate/services/web/prog-{lo.compiled.digest}"
    assert sorted(p for p in bpf.pins if p.startswith(d + "/")) == [f"{d}/lpm4", f"{d}/lpm6", f"{d}/prog"]
    assert lo.directory == d and bpf.progs[lo.prog_id].name == lo.compiled.name
    assert len(bpf.fds) == 1  # only the program's own fd stays open (the maps are closed)


def test_an_attached_program_is_recognised_by_its_cookie() -> None:
    ops, bpf, backend, kernel = setup()
    lo = load(kernel, A)
    kernel.apply([Step(Slot(5, "fd 5"), lo)])
    assert kernel.read(5).refused == 0  # the load pinned the service's (empty) counts map
    assert bpf.unpin(f"{MOUNT}/sockgate/services/web/counts")  # without one: nothing to say
    info = kernel.read(5)
    assert (info.state, info.service, info.digest, info.backend, info.refused) == ("sockgate", "web", lo.compiled.digest, "ebpf", None)
    assert info.text == f"sockgate web {lo.compiled.digest} (ebpf)"
    assert info.to_json()["backend"] == "ebpf" and "refused" not in info.to_json()
    # the service's counts map, when pinned, is summed
    counts = bpf.map_create(layout.counts_spec())
    bpf.map_update_many(counts, [layout.SourceKey(4, i).pack() for i in (1, 2)],
                        [layout.Count(3, 0, 0).pack(), layout.Count(4, 0, 0).pack()])
    bpf.pin(counts, f"{MOUNT}/sockgate/services/web/counts")
    info = kernel.read(5)
    assert info.refused == 7 and info.text.endswith("(ebpf, 7 refused)") and info.to_json()["refused"] == 7


def test_an_unrecorded_or_unloaded_ebpf_program_is_foreign_never_unknown() -> None:
    ops, bpf, backend, kernel = setup()
    ops.attached[6] = BpfFilter(cookie=99)  # somebody else's program
    assert kernel.read(6).describe() == "a foreign filter (eBPF program)"
    lo = load(kernel, A)
    kernel.apply([Step(Slot(5, "fd 5"), lo)])
    del bpf.progs[lo.prog_id]  # replaced since, and our program gone from the kernel
    assert kernel.read(5).state == "foreign"
    bpf.progs[lo.prog_id] = FakeProg(lo.prog_id, "sg_other", b"")
    assert kernel.read(5).state == "foreign"  # an id reused by another program's name


def test_registry_record_round_trip_and_limits() -> None:
    r = registry.Record(12, 59, "web", "0123456789abcdef", netns=4, written_ns=5)
    assert registry.Record.unpack(r.pack()) == r and len(r.pack()) == registry.RECORD.size == 256
    with pytest.raises(ValueError, match="longer than 216 bytes"):
        registry.Record(1, 1, "x" * 217, "0" * 16).pack()
    long = parse_policy(f"service {'s' * 230} {{\n allow 10.0.0.0/8\n default deny\n}}\n").require_service("s" * 230)
    _, _, _, kernel = setup()
    with pytest.raises(UsageError, match="longer than 216 bytes"):
        kernel.load(kernel.compile(resolve_service(long), backend="ebpf"))


# -------------------------------------------------------------------------- rollback


def test_a_failed_transaction_restores_every_ebpf_program_by_id() -> None:
    ops, bpf, backend, kernel = setup()
    old, new = load(kernel, A), load(kernel, B)
    kernel.apply([Step(Slot(fd, f"fd {fd}"), old) for fd in (1, 2, 3)])
    bpf.attaches.clear()
    bpf.fail_attach = {2}
    with pytest.raises(AdapterError, match="injected"):
        kernel.apply([Step(Slot(fd, f"fd {fd}"), new) for fd in (1, 2, 3)])
    assert bpf.attaches == [(1, new.prog_id), (2, new.prog_id), (3, new.prog_id), (2, old.prog_id), (1, old.prog_id)]
    assert [kernel.read(fd).digest for fd in (1, 2, 3)] == [old.compiled.digest] * 3


def test_restore_falls_back_to_the_pin_when_the_id_is_gone() -> None:
    ops, bpf, backend, kernel = setup()
    old = load(kernel, A)
    load(kernel, B)  # a second program loaded beside it
    kernel.apply([Step(Slot(1, "fd 1"), old)])
    read = backend.recognise(ops.read(1))
    assert read is not None and read.digest == old.compiled.digest
    pinned = bpf.progs.pop(old.prog_id)
    backend.restore(1, ops.read(1), "restore fd 1")
    assert bpf.on_socket[1] is pinned
    bpf.unpin(f"{old.directory}/prog")
    with pytest.raises(AdapterError, match="is gone"):
        backend.restore(1, ops.read(1), "restore fd 1")


def test_a_refused_attach_puts_the_old_record_back() -> None:
    ops, bpf, backend, kernel = setup(fail_attach={1})
    old, new = load(kernel, A), load(kernel, B)
    kernel.apply([Step(Slot(1, "fd 1"), old)])
    with pytest.raises(AdapterError):
        kernel.apply([Step(Slot(1, "fd 1"), new)])
    assert kernel.read(1).digest == old.compiled.digest


# ---------------------------------------------------------------------- service maps


def _with_service_maps(svc: Service, *specs: Any) -> EbpfProgram:
    p = compile_service(svc)  # the rules alone: no service map but those given
    return replace(p, service_maps=specs)


def test_service_maps_are_reused_or_replaced_carrying_their_entries() -> None:
    _, bpf, backend, _ = setup()
    counts_path = f"{MOUNT}/sockgate/services/web/counts"
    backend.load(_with_service_maps(A, layout.counts_spec(8)))
    first = bpf.pins[counts_path]
    first.entries[b"k" * 20] = b"v" * 32
    backend.load(_with_service_maps(B, layout.counts_spec(8)))
    assert bpf.pins[counts_path] is first  # same shape: the same map, counts kept
    backend.load(_with_service_maps(B, layout.counts_spec(16)))
    second = bpf.pins[counts_path]
    assert second is not first and second.spec.max_entries == 16 and second.entries == first.entries
    backend.load(_with_service_maps(B, layout.events_spec(8192)))
    assert f"{MOUNT}/sockgate/services/web/events" in bpf.pins


def test_shapes_and_carrying() -> None:
    c8, c16 = layout.counts_spec(8), layout.counts_spec(16)
    assert same_shape(c8, c8) and not same_shape(c8, c16)
    assert can_carry(c8, c16) and not can_carry(layout.events_spec(4096), layout.events_spec(8192))
    assert not can_carry(c8, layout.buckets_spec(8))  # value sizes differ
    assert can_carry(layout.bans_spec(4), layout.bans_spec(4, 10)) and not can_carry(layout.bans_spec(4), layout.bans_spec(6))


def _ban_key(i: int) -> bytes:
    return LpmKey.host(ipaddress.IPv4Address(f"10.0.0.{i}")).pack()


def test_a_shrinking_reload_keeps_every_active_ban_and_drops_expired_ones() -> None:
    _, bpf, backend, _ = setup()
    path = f"{MOUNT}/sockgate/services/web/bans4"
    backend.load(_with_service_maps(A, layout.bans_spec(4, 16)))
    first = bpf.pins[path]
    now = time.monotonic_ns()
    for i in range(8):  # expired, written first: a walk in insertion order meets them first
        first.entries[_ban_key(i)] = layout.Ban(now - 10**9, layout.Origin.LIMIT).pack()
    for i in range(8, 16):
        first.entries[_ban_key(i)] = layout.Ban(0, layout.Origin.FAIL2BAN).pack()
    backend.load(_with_service_maps(B, layout.bans_spec(4, 8)))
    second = bpf.pins[path]
    assert second.spec.max_entries == 8 and set(second.entries) == {_ban_key(i) for i in range(8, 16)}
    second.entries[_ban_key(20)] = layout.Ban(now + 3600 * 10**9, layout.Origin.MANUAL).pack()  # 9 active now
    with pytest.raises(UsageError, match="9 active bans do not fit the new capacity of 7"):
        backend.load(_with_service_maps(B, layout.bans_spec(4, 7)))
    assert bpf.pins[path] is second and len(second.entries) == 9  # nothing replaced, nothing lifted


# ---------------------------------------------------------------------------- clean-up


def test_collect_removes_what_no_live_socket_of_this_namespace_uses() -> None:
    ops, bpf, backend, kernel = setup()
    a, b = load(kernel, A), load(kernel, B)
    kernel.apply([Step(Slot(1, "fd 1"), a)])
    kernel.apply([Step(Slot(2, "fd 2"), b)])
    collector = EbpfBackend(bpf, MOUNT, grace=0)
    assert collector.collect() == (0, 0)  # sock_diag unavailable: nothing is judged gone
    bpf.live = {bpf.socket_cookie(1)}
    assert collector.collect() == (1, 1)
    assert not any(p.startswith(b.directory) for p in bpf.pins) and f"{a.directory}/prog" in bpf.pins
    assert kernel.read(1).digest == a.compiled.digest


def test_collect_lists_sockets_and_namespaces_only_when_an_entry_is_old_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing every socket (sock_diag) and namespace costs with the host's socket count: a load
    whose registry holds only entries younger than the grace skips it."""
    ops, bpf, backend, kernel = setup()
    kernel.apply([Step(Slot(1, "fd 1"), load(kernel, A))])
    asked: list[str] = []
    for name in ("live_cookies", "here", "live_netns"):
        monkeypatch.setattr(bpf, name, lambda name=name: asked.append(name))
    assert backend.collect() == (0, 0) and asked == []
    backend.grace = 0
    assert backend.collect() == (0, 0) and asked == ["live_cookies", "here", "live_netns"]


def test_stale_needs_this_namespace_an_absent_cookie_and_age() -> None:
    rec = registry.Record(1, 1, "web", "0" * 16, netns=7, written_ns=0)
    assert stale(rec, 5, set(), 7, 10**12, 60)
    assert not stale(rec, 5, {5}, 7, 10**12, 60)  # still there
    assert not stale(rec, 5, set(), 8, 10**12, 60)  # another namespace's socket
    assert not stale(rec, 5, None, 7, 10**12, 60)  # could not list sockets
    assert not stale(rec, 5, set(), 7, 10**9, 60)  # too young


def test_stale_collects_another_namespace_only_once_it_is_gone() -> None:
    rec = registry.Record(1, 1, "web", "0" * 16, netns=8, written_ns=0, netns_ino=4026532999)
    assert stale(rec, 5, set(), 7, 10**12, 60, {4026531840})  # its namespace no longer exists
    assert not stale(rec, 5, set(), 7, 10**12, 60, {4026531840, 4026532999})  # still exists
    assert not stale(rec, 5, set(), 7, 10**12, 60, None)  # cannot tell
    assert not stale(rec, 5, set(), 7, 10**9, 60, {4026531840})  # too young
    assert not stale(replace(rec, netns_ino=0), 5, set(), 7, 10**12, 60, set())  # recorded before inodes were


def test_a_full_registry_collects_gone_namespaces_first_then_says_what_fills_it(monkeypatch: pytest.MonkeyPatch) -> None:
    two = registry.spec(2)
    monkeypatch.setattr(registry, "spec", lambda capacity=2: two)  # a registry of two sockets
    ops, bpf, backend, kernel = setup()
    bpf.netns_ino, bpf.namespaces = 4026532999, {4026532999}
    a = load(kernel, A)
    bpf.netns = 8  # two sockets guarded from another namespace
    kernel.apply([Step(Slot(1, "fd 1"), a)])
    kernel.apply([Step(Slot(2, "fd 2"), a)])
    bpf.netns, bpf.live = 7, set()
    backend.grace = 0
    with pytest.raises(AdapterError, match=r"full \(2 of 2 entries, 0 for sockets of this network namespace still open, 2 of other"):
        kernel.apply([Step(Slot(3, "fd 3"), a)])
    bpf.namespaces = {4026531840}  # that namespace is gone: its entries make room
    kernel.apply([Step(Slot(3, "fd 3"), a)])
    assert kernel.read(3).state == "sockgate"


# ---------------------------------------------------------------------------- bpffs


@pytest.mark.parametrize("mode, uid, sticky_ok, problem", [
    (stat.S_IFDIR | 0o700, 0, False, None),
    (stat.S_IFDIR | 0o755, 0, False, None),
    (stat.S_IFDIR | 0o700, 1000, False, "owned by uid 1000, not root"),
    (stat.S_IFDIR | 0o770, 0, False, "writable by others (mode 0770)"),
    (stat.S_IFDIR | 0o1777, 0, False, "writable by others (mode 1777)"),
    (stat.S_IFDIR | 0o1777, 0, True, None),
    (stat.S_IFDIR | 0o777, 0, True, "writable by others (mode 0777)"),
    (stat.S_IFREG | 0o600, 0, False, "not a directory"),
])
def test_trust_problem(mode: int, uid: int, sticky_ok: bool, problem: str | None) -> None:
    assert trust_problem(mode, uid, sticky_ok=sticky_ok) == problem


def test_components_refuse_climbing_out() -> None:
    assert components("sockgate/services/web") == ["sockgate", "services", "web"]
    for bad in ("/abs", "a/../b", ".", "", "a/./b"):
        with pytest.raises(ValueError):
            components(bad)


def test_service_directories_never_hold_a_dot_or_escape() -> None:
    assert layout.service_dir("web", "/r") == "/r/services/web"
    for name in ("..", "a.b", "a/b", "é"):
        assert layout.service_dir(name, "/r") == "/r/services/x-" + name.encode().hex()
    long = layout.service_dir("é" * 100, "/r").rsplit("/", 1)[1]
    assert long.startswith("h-") and len(long) == 66 and layout.service_dir("a" * 128, "/r").endswith("/" + "a" * 128)


# ------------------------------------------------------------------- choice of backend


class Stub:
    def __init__(self, name: str, refuse: type[Exception] | None = None, why: str | None = None) -> None:
        self.name, self.refuse, self.why, self.compiled = name, refuse, why, 0

    def unavailable(self) -> str | None:
        return self.why

    def compile(self, service: Service, bans: Sequence[Banned] = ()) -> Any:
        self.compiled += 1
        if self.refuse is not None:
            raise self.refuse(f"{self.name} refuses")
        return self.name


def choose(classic: Stub, ebpf: Stub, backend: Any = "auto") -> Any:
    return Kernel([classic, ebpf], FakeOps()).compile(A, backend=backend)  # type: ignore[list-item]


def test_auto_is_ebpf_when_this_process_may_load_it() -> None:
    classic = Stub("cbpf")
    assert choose(classic, Stub("ebpf")) == "ebpf" and classic.compiled == 0
    k = Kernel([Stub("cbpf"), Stub("ebpf")], FakeOps())  # type: ignore[list-item]
    assert (k.choose("auto").name, k.choose("auto").why) == ("ebpf", "auto: this process may load ebpf")
    assert k.choose("cbpf").describe() == "backend cbpf (--backend cbpf)"


def test_auto_is_classic_when_ebpf_may_not_be_loaded_and_says_why() -> None:
    ebpf = Stub("ebpf", why="loading eBPF needs root or CAP_BPF")
    assert choose(Stub("cbpf"), ebpf) == "cbpf" and ebpf.compiled == 0
    chosen = Kernel([Stub("cbpf"), ebpf], FakeOps()).choose("auto")  # type: ignore[list-item]
    assert chosen.describe() == "backend cbpf (auto: ebpf unavailable: loading eBPF needs root or CAP_BPF)"
    with pytest.raises(UnsupportedPlatform, match="^ebpf unavailable: no bpf; cbpf unavailable: not Linux$"):
        Kernel([Stub("cbpf", why="not Linux"), Stub("ebpf", why="no bpf")], FakeOps()).choose("auto")  # type: ignore[list-item]


def test_auto_never_falls_back_from_its_choice() -> None:
    """What the chosen backend refuses is refused, in its words, with the other backend named
    when it would take it: never a weaker program chosen behind the caller's back."""
    with pytest.raises(UnsupportedInKernel, match=r"^ebpf refuses\ncbpf would take it \(--backend cbpf\)$"):
        choose(Stub("cbpf"), Stub("ebpf", UnsupportedInKernel))
    with pytest.raises(UnsupportedInKernel, match="^ebpf refuses$"):  # neither takes it: the chosen one's words
        choose(Stub("cbpf", UnsupportedInKernel), Stub("ebpf", UnsupportedInKernel))


def test_a_service_too_large_for_classic_says_ebpf_would_take_it() -> None:
    with pytest.raises(CompileError, match="cbpf refuses; ebpf would take it, but not here: no CAP_BPF"):
        choose(Stub("cbpf", CompileError), Stub("ebpf", why="no CAP_BPF"))
    with pytest.raises(CompileError, match=r"cbpf refuses; ebpf would take it \(--backend ebpf or auto\)"):
        choose(Stub("cbpf", CompileError), Stub("ebpf"), "cbpf")


def test_an_unusable_backend_asked_for_is_one_line_naming_why() -> None:
    with pytest.raises(UnsupportedPlatform, match="^--backend ebpf: loading eBPF needs root$"):
        choose(Stub("cbpf"), Stub("ebpf", why="loading eBPF needs root"), "ebpf")


def test_probe_names_missing_privileges() -> None:
    backend = EbpfBackend(FakeBpf(FakeOps(), refuse_create=errno.EPERM), MOUNT)
    assert backend.unavailable() == "loading eBPF needs root or CAP_BPF (bpf(2): operation not permitted)"
    assert EbpfBackend(FakeBpf(FakeOps()), MOUNT).unavailable() is None
    assert EbpfBackend(FakeBpf(FakeOps(), refuse_create=errno.ENOSYS), MOUNT).unavailable() == "this kernel has no bpf(2) system call"


def test_probe_loads_the_program_a_service_loads_once_and_closes_what_it_made() -> None:
    """The probe is the program (REVIEW3 R6): a kernel that takes a trivial filter but not
    sockgate's must send ``auto`` to classic BPF at choice time, not fail at load."""
    bpf = FakeBpf(FakeOps())
    backend = EbpfBackend(bpf, MOUNT)
    assert backend.unavailable() is None and backend.unavailable() is None
    probe = probe_program()
    assert [p.name for p in bpf.progs.values()] == ["sg_probe"] and len(probe.insns) > 100
    assert {s.name for s in probe.service_maps} >= {"sg_counts", "sg_buckets", "sg_bans4", "sg_bans6", "sg_events", "sg_stats"}
    assert bpf.fds == {}  # the map and the program closed
    refused = EbpfBackend(FakeBpf(FakeOps(), refuse_load=errno.EACCES), MOUNT).unavailable()
    assert refused is not None and refused.startswith("bpf(2) does not work here: load BPF program sg_probe: injected (EACCES)")


def test_loads_collect_at_most_once_per_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing the namespace's sockets is what a collection costs; nothing becomes collectable
    sooner than ``grace``, so loads within it collect once."""
    _, _, backend, kernel = setup()
    runs: list[int] = []
    monkeypatch.setattr(backend, "collect", lambda: runs.append(1) or (0, 0))
    for policy in (A, B, A):
        load(kernel, policy)
    assert runs == [1]
    backend.grace = 0
    load(kernel, B)
    assert runs == [1, 1]


def test_guardinfo_describes_an_ebpf_guard() -> None:
    g = GuardInfo("sockgate", 59, "web", "0" * 16, backend="ebpf")
    assert g.describe() == f"sockgate service web (digest {'0' * 16}, 59 instructions, eBPF)"


def test_a_full_registry_makes_room_from_sockets_that_are_gone_or_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    two = registry.spec(2)
    monkeypatch.setattr(registry, "spec", lambda capacity=2: two)  # a registry of two sockets
    ops, bpf, backend, kernel = setup()
    lo = load(kernel, A)
    backend.grace = 0
    kernel.apply([Step(Slot(fd, f"fd {fd}"), lo) for fd in (1, 2)])
    bpf.live = {bpf.socket_cookie(2)}  # fd 1's socket is gone
    kernel.apply([Step(Slot(3, "fd 3"), lo)])
    assert kernel.read(3).state == "sockgate"
    bpf.live = {bpf.socket_cookie(2), bpf.socket_cookie(3)}
    with pytest.raises(AdapterError, match="registry of eBPF guards is full .* nothing was attached"):
        kernel.apply([Step(Slot(4, "fd 4"), lo)])
    assert 4 not in bpf.on_socket


def test_counters_are_sized_by_configuration_and_buckets_by_the_policy() -> None:
    """REVIEW3 R10: every eBPF service pins its state, so it is sized by what it needs."""
    assert ebpf_options({}) == EBPF_OPTIONS and EBPF_OPTIONS.counters == layout.DEFAULT_COUNTERS == 16384
    assert ebpf_options({"SOCKGATE_COUNTERS": "4096"}).counters == 4096
    for bad in ("0", "-5", "1e6", "99999999999", " 64", ""):
        with pytest.raises(UsageError, match=r"^\$SOCKGATE_COUNTERS="):
            ebpf_options({"SOCKGATE_COUNTERS": bad})

    def maps(limit: str) -> dict[str, int]:
        svc = parse_text(f"service a {{\n    allow 127.0.0.1\n{limit}    default deny\n}}\n").services[0]
        return {m.name: m.max_entries for m in compile_with_options(svc, options=EBPF_OPTIONS).service_maps}

    assert "sg_buckets" not in maps("")
    assert maps("    limit rate 5/minute\n")["sg_buckets"] == layout.TOTAL_BUCKETS
    assert maps("    limit rate 5/minute per source\n")["sg_buckets"] == layout.DEFAULT_BUCKETS
    assert maps("")["sg_counts"] == 16384



class RacingBpf(FakeBpf):
    """Another loader of the same digest interleaved with this one's rename into place: it lands
    its copy first, then moves it aside again (as a second proxy worker reloading at once)."""

    def __init__(self, ops: FakeOps, script: list[str]) -> None:
        super().__init__(ops)
        self.script = script

    def rename(self, src: str, dst: str) -> None:
        step = self.script.pop(0) if self.script else ""
        if step == "other lands first":
            for p in [p for p in self.pins if p.startswith(src + "/")]:
                self.pins[dst + p[len(src):]] = self.pins[p]
        elif step == "other moved it aside":
            for p in [p for p in self.pins if p.startswith(src + "/")]:
                del self.pins[p]
            raise AdapterError(f"rename {src}: {os.strerror(errno.ENOENT)}", errno.ENOENT)
        super().rename(src, dst)


def test_concurrent_loaders_of_one_digest_both_succeed_and_leave_one_copy() -> None:
    ops = FakeOps()
    bpf = RacingBpf(ops, ["other lands first", "other moved it aside"])
    kernel = Kernel([ClassicBackend(ops), EbpfBackend(bpf, MOUNT)], ops)
    lo = load(kernel, A)
    d = f"{MOUNT}/sockgate/services/web/prog-{lo.compiled.digest}"
    assert sorted(p for p in bpf.pins if p.startswith(d + "/")) == [f"{d}/lpm4", f"{d}/lpm6", f"{d}/prog"]
    assert not [p for p in bpf.pins if "-old-" in p or "-new-" in p] and bpf.script == []
