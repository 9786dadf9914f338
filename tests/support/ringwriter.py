"""A real eBPF program that writes ring buffer records, for the readers' kernel tests.

The program copies ``length`` bytes from the packet's network header onto its stack and
hands them to ``bpf_ringbuf_output`` (a helper every program type may call, Linux 5.8);
``BPF_PROG_TEST_RUN`` runs it on an Ethernet frame carrying the record, so a test writes any
record it likes through the kernel's own producer side, without attaching anything.
"""

from __future__ import annotations

import os

from sockgate.ebpf.asm import Assembler
from sockgate.ebpf.insn import (
    BPF_ADD,
    BPF_HDR_START_NET,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_3,
    BPF_REG_4,
    BPF_REG_5,
    BPF_REG_6,
    BPF_REG_10,
    Helper,
    ProgType,
    alu64,
    call,
    encode,
    exit_,
    ld_map_fd,
    mov64,
)
from sockgate.linux import bpfsys

ETHERNET = b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + b"\x08\x00"


class RingWriter:
    """Writes ``length``-byte records (a multiple of 8, at most 256) into the ring ``map_fd``."""

    def __init__(self, map_fd: int, length: int) -> None:
        assert 0 < length <= 256 and length % 8 == 0
        self.length = length
        asm = Assembler()
        asm.emit(
            mov64(BPF_REG_6, BPF_REG_1),
            mov64(BPF_REG_2, imm=0), mov64(BPF_REG_3, BPF_REG_10), alu64(BPF_ADD, BPF_REG_3, imm=-length),
            mov64(BPF_REG_4, imm=length), mov64(BPF_REG_5, imm=BPF_HDR_START_NET),
            call(Helper.skb_load_bytes_relative),
        )
        asm.jump(0x50, BPF_REG_0, "out", imm=0)  # BPF_JNE: a short frame writes nothing
        asm.emit(*ld_map_fd(BPF_REG_1, map_fd), mov64(BPF_REG_2, BPF_REG_10), alu64(BPF_ADD, BPF_REG_2, imm=-length),
                 mov64(BPF_REG_3, imm=length), mov64(BPF_REG_4, imm=0), call(Helper.ringbuf_output))
        asm.label("out")
        asm.emit(mov64(BPF_REG_0, imm=0), exit_())
        self.fd = bpfsys.prog_load(ProgType.SOCKET_FILTER, encode(asm.program()), "sg_test_ring")

    def write(self, record: bytes) -> None:
        assert len(record) == self.length
        bpfsys.prog_test_run(self.fd, ETHERNET + record)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
