"""ebpf/watch: the watch record decodes from exactly what the programs write and any other
bytes decode to None, never an exception; keys are packed as the programs build them; the
programs' listings: UDP only for binds, filter maps before the record, LISTEN_CB only for
listens, the lost counter on a failed output, and every path returns 1."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockgate.ebpf import watch
from sockgate.ebpf.insn import BPF_ATOMIC, BPF_STX, Helper


def record(hook: int = 4, family: int = watch.AF_INET, type_proto: int = 2 << 16 | 17, port: int = 53,
           pid_tgid: int = 42 << 32 | 43, comm: bytes = b"named") -> bytes:
    return watch.WATCH_EVENT.pack(7, 1001, 3, pid_tgid, family, type_proto, port, hook, comm)


def test_a_bind_record_decodes() -> None:
    r = watch.decode(record())
    assert r == watch.WatchRecord(watch.Hook.BIND4, 7, 1001, 3, 42, 43, 4, "udp", 53, "named")


def test_a_listen_record_decodes_with_a_full_comm() -> None:
    r = watch.decode(record(99, watch.AF_INET6, 1 << 16 | 6, 22, comm=b"sshd-session-xy\0"))
    assert r is not None and (r.hook, r.family, r.proto, r.port, r.comm) == (watch.Hook.LISTEN, 6, "tcp", 22, "sshd-session-xy")


@pytest.mark.parametrize("raw", [
    record()[:63], record() + b"\0", record(hook=5), record(family=1), record(port=0), record(port=70000),
    record(type_proto=2 << 16 | 6), record(99, type_proto=2 << 16 | 17), record(type_proto=1 << 16 | 17),
])
def test_impossible_records_are_none(raw: bytes) -> None:
    assert watch.decode(raw) is None


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_none(raw: bytes) -> None:
    r = watch.decode(raw)
    assert r is None or (len(raw) == 64 and 0 < r.port < 65536 and r.proto in ("tcp", "udp"))


@given(st.binary(min_size=16, max_size=16), st.sampled_from([4, 6, 99, 98]), st.integers(0, 2**64 - 1))
def test_any_comm_and_pid_decode(comm: bytes, hook: int, pid_tgid: int) -> None:
    tp = 1 << 16 | 6 if hook in (99, 98) else 2 << 16 | 17
    r = watch.decode(record(hook, type_proto=tp, pid_tgid=pid_tgid, comm=comm))
    assert r is not None and r.pid == pid_tgid >> 32 and "\0" not in r.comm


def test_keys_are_packed_as_the_program_builds_them() -> None:
    assert watch.port_key("udp", 53) == struct.pack("=BBH", 17, 0, 53)
    assert watch.comm_key("a-very-long-daemon-name") == b"a-very-long-dae\0"
    for bad in (lambda: watch.port_key("udp", 0), lambda: watch.port_key("sctp", 1), lambda: watch.comm_key(""),
                lambda: watch.comm_key("a\0b")):
        with pytest.raises(ValueError):
            bad()
    ports, comms = watch.WatchSet.of([("tcp", 22)], ["sshd"]).keys()
    assert ports == {watch.port_key("tcp", 22)} and comms == {watch.comm_key("sshd")}


def _lines(text: str) -> list[str]:
    return [ln.split(": ", 1)[1] for ln in text.splitlines() if ": " in ln]


def test_bind_listing_filters_before_it_records() -> None:
    text = watch.listings()["sg_wbind4"]
    lines = _lines(text)
    assert lines[:4] == ["r6 = r1", "r0 = *(u32 *)(r6 +12)", "if r0 != 0x11 goto pc+64 <out>", "r7 = *(u32 *)(r6 +44)"]
    # ports, comms, then the report-all switch; only then the record and the output
    assert text.index("map[fd 4]") < text.index("map[fd 5]") < text.index("map[fd 6]") < text.index("emit:")
    assert text.index("emit:") < text.index("call bpf_ktime_get_ns#5") < text.index("call bpf_ringbuf_output#130")
    assert "*(u32 *)(r10 -20) = 4" in lines  # hook BIND4
    # a failed output adds 1 to sg_wlost[0] (the atomic add itself: test_every_program_returns_1…)
    assert lines[-5:-3] == ["if r0 == 0x0 goto pc+2 <out>", "r1 = 1"] and lines[-2:] == ["r0 = 1", "exit"]


def test_listen_listing_acts_on_listen_cb_only_and_can_do_without_pid() -> None:
    lines = _lines(watch.listings()["sg_wlisten"])
    assert lines[2].startswith("if r0 != 0xb goto") and "call bpf_get_current_pid_tgid#14" in lines
    bare = watch.listen_program(3, 7, with_pid=False)
    assert all(i.imm not in (Helper.get_current_pid_tgid, Helper.get_current_comm) for i in bare if i.code == 0x85)


def test_every_program_returns_1_and_counts_lost_records_atomically() -> None:
    for prog in (watch.bind_program(3, 4, 5, 6, 7, 6), watch.listen_program(3, 7), watch.release_program(3, 8, 7)):
        exits = [k for k, i in enumerate(prog) if i.code == 0x95]
        assert len(exits) == 1 and (prog[exits[0] - 1].code, prog[exits[0] - 1].imm) == (0xB7, 1)
        atomics = [i for i in prog if i.code == BPF_STX | 0x18 | BPF_ATOMIC]
        assert len(atomics) == 1 and atomics[0].imm == 0  # BPF_ADD, no fetch



def test_release_listing_reports_tracked_sockets_once() -> None:
    text = watch.listings()["sg_wrelease"]
    # the cookie is looked up first; nothing is recorded for an untracked socket
    assert text.index("call bpf_get_socket_cookie#46") < text.index("call bpf_map_lookup_elem#1") < text.index("call bpf_ktime_get_ns#5")
    # the entry is deleted before the output: a close is reported once
    assert text.index("call bpf_map_delete_elem#3") < text.index("call bpf_ringbuf_output#130")
    assert "*(u32 *)(r10 -20) = 98" in _lines(text)
    assert watch.tracked_entry(5, 53) == (struct.pack("=Q", 5), struct.pack("=I", 53))
    with pytest.raises(ValueError):
        watch.tracked_entry(0, 53)
