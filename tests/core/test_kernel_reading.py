"""kernel.reading and the classic backend's ``recognise``: one record for a read-back filter,
worded as attach/detach print it (``describe``) and as ls shows it (``text``, ``to_json``)."""

from __future__ import annotations

from sockgate import bpf
from sockgate.bpf import marker
from sockgate.kernel import BpfFilter, ClassicFilter, GuardInfo, NoFilter
from sockgate.kernel.transaction import identify
from support.fakekernel import FakeOps, fake_kernel

KERNEL = fake_kernel(FakeOps())


def read(raw: bytes | None, locked: bool = False) -> GuardInfo:
    return identify(KERNEL.backends, NoFilter() if raw is None else ClassicFilter(raw), locked)[0]


def test_classify_filter() -> None:
    assert read(None).text == "none"
    foreign = read(b"\0" * 24)
    assert (foreign.state, foreign.to_json()["insns"], foreign.text) == ("foreign", 3, "foreign filter (3 insns)")
    assert GuardInfo("unknown", reason="no permission").text == "unknown (no permission)"
    assert GuardInfo("foreign", reason="eBPF program").text == "foreign filter (eBPF program)"
    allow_all = (bpf.stmt(bpf.BPF_RET | bpf.BPF_K, 0xFFFF),)
    assert read(bpf.encode(allow_all)).state == "foreign"


def test_classify_a_real_sockgate_program() -> None:
    body = (bpf.stmt(bpf.BPF_RET | bpf.BPF_K, 0),)
    digest = marker.program_digest("web", body)
    g = read(bpf.encode(marker.build("web", digest) + body))
    assert (g.state, g.service, g.digest, g.instructions, g.text) == ("sockgate", "web", digest, 7, f"sockgate web {digest}")
    assert g.backend == "cbpf"


def test_a_genuine_marker_with_other_code_is_modified_not_the_service() -> None:
    deny = (bpf.stmt(bpf.BPF_RET | bpf.BPF_K, 0),)
    genuine = marker.build("web", marker.program_digest("web", deny))
    forged = read(bpf.encode(genuine + (bpf.stmt(bpf.BPF_RET | bpf.BPF_K, 0xFFFF),)))
    assert forged.state == "modified"
    assert forged.text == f"modified (marker claims web {marker.program_digest('web', deny)}; 7 insns)"
    assert forged.to_json()["status"] == "modified"


def test_an_ebpf_program_nobody_claims_is_foreign_without_a_size() -> None:
    g = identify(KERNEL.backends, BpfFilter(), True)[0]
    assert (g.state, g.reason, g.locked, g.backend) == ("foreign", "eBPF program", True, None)
    assert g.describe() == "a foreign filter (eBPF program, locked)"
    assert g.to_json() == {"status": "foreign", "service": None, "digest": None, "insns": None,
                           "reason": "eBPF program", "text": "foreign filter (eBPF program)"}


def test_describe_wording() -> None:
    assert read(None).describe() == "no filter"
    assert read(None, locked=True).describe() == "no filter, locked"
    assert read(b"\0" * 8).describe() == "a foreign filter (1 instructions)"
    ours = GuardInfo("sockgate", 12, "web", "0" * 16, locked=True)
    assert ours.describe() == f"sockgate service web (digest {'0' * 16}, 12 instructions, locked)"
    assert GuardInfo("modified", 7, "web", "1" * 16).describe() == (
        f"a modified sockgate filter (its marker claims service web, digest {'1' * 16}, but the code differs; 7 instructions)"
    )


def test_ls_json_keys_and_sizes() -> None:
    assert read(None).to_json() == {"status": "none", "service": None, "digest": None, "insns": None, "reason": None, "text": "none"}
    assert GuardInfo("unknown", reason="no holder found").to_json()["insns"] is None
    assert GuardInfo("sockgate", 7, "web", "0" * 16).to_json()["insns"] == 7


def test_guard_info_keeps_its_positional_order() -> None:
    g = GuardInfo("sockgate", 7, "web", "0" * 16, True)
    assert (g.state, g.instructions, g.service, g.digest, g.locked) == ("sockgate", 7, "web", "0" * 16, True)


def test_ls_reads_without_the_lock() -> None:
    ops = FakeOps()
    ops.locked.add(4)
    kernel = fake_kernel(ops)
    assert kernel.read(4).locked and not kernel.read(4, lock=False).locked
    assert kernel.read(4, lock=False).state == "none"
