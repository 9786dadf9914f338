"""Values for the agent's pure tests: a fake compiled program, services and observed sockets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sockgate.agent.desired import Desired, ServiceSpec
from sockgate.agent.model import Endpoint, GuardState, HolderInfo, Observed, Selector, Want


@dataclass(frozen=True)
class FakeProgram:
    backend: Literal["cbpf", "ebpf"]
    digest: str
    instructions: int = 7


def compiler(backend: Literal["cbpf", "ebpf"] = "cbpf", version: str = "1") -> "FakeCompile":
    return FakeCompile(backend, version)


@dataclass
class FakeCompile:
    backend: Literal["cbpf", "ebpf"]
    version: str
    calls: int = 0

    def __call__(self, name: str) -> FakeProgram:
        self.calls += 1
        return FakeProgram(self.backend, f"{name}-{self.version}")


def spec(name: str, selector: Selector, digest: str | None = None, origin: Literal["native", "hosts_access"] = "native") -> ServiceSpec:
    program = FakeProgram("cbpf", digest or f"{name}-1")
    return ServiceSpec(name, origin, selector, Want(name, "cbpf", program.digest), program)


def desired(*specs: ServiceSpec) -> Desired:
    return Desired("p0", specs, 0.0)


SSH = spec("ssh", Selector(endpoints=(Endpoint("tcp", 22, 22),)))
DNS = spec("dns", Selector(endpoints=(Endpoint("udp", 53, 53),)))
NGINX = spec("nginx", Selector(daemon="nginx", mapped=(Endpoint("tcp", 8080, 8080),)), origin="hosts_access")
NONE = GuardState("none")


def holder(comm: str, argv0: str | None = None, pid: int = 100, fd: int = 3, euid: int | None = 0,
           exe: str | None = None, exe_root_owned: bool = False) -> HolderInfo:
    return HolderInfo(pid, fd, comm, argv0, euid, exe, exe_root_owned)


def sock(cookie: int, port: int, proto: Literal["tcp", "udp"] = "tcp", guard: GuardState = NONE,
         holders: tuple[HolderInfo, ...] = (), unreadable: str | None = None) -> Observed:
    return Observed(cookie, proto, 4, "0.0.0.0", port, 4026531840, holders, guard, unreadable)


def ours(s: ServiceSpec, locked: bool = False) -> GuardState:
    return GuardState("sockgate", s.name, s.want.digest, s.want.backend, locked)
