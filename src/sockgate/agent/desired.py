"""What the host should look like: each service, the sockets it selects and the program they
should carry.

``build`` turns a loaded policy into a ``Desired`` in one step: every native service with IP
endpoints, every enrolled daemon (``enrol.daemon_names``), each compiled by the ``compile``
the caller passes in (the kernel seam's, closed over the resolved policy, the effective bans
and the host-name answers — so this module stays pure and is tested with a fake). It returns a
whole ``Desired`` or raises (``PolicyError``, ``CompileError``, ``UnsupportedInKernel``,
``UsageError``): a compiler that fails on the fifth service leaves no four-service state behind
for anyone to apply. Loading the programs into the kernel (the verifier, pins) is the
applier's, still before any socket is touched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping, Protocol

from sockgate.agent.enrol import comm_name, daemon_names
from sockgate.agent.model import Endpoint, Selector, Want
from sockgate.errors import Diagnostic, PolicyError, UsageError
from sockgate.policy.hostmatch import fold
from sockgate.policy.ir import Policy, Service


class Program(Protocol):
    """A program compiled for one service (the kernel seam's ``Compiled``), opaque here but
    for what the plan and status need."""

    @property
    def backend(self) -> Literal["cbpf", "ebpf"]: ...
    @property
    def digest(self) -> str: ...
    @property
    def instructions(self) -> int: ...


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    origin: Literal["native", "hosts_access"]
    selector: Selector
    want: Want
    compiled: Program
    kernel_refusal: str | None = None  # why some rules stay in user space (the resolve pass's text)
    names: tuple[str, ...] = ()  # forward host names it uses


@dataclass(frozen=True)
class Desired:
    policy_digest: str
    services: tuple[ServiceSpec, ...]
    loaded_at: float  # wall clock, for status

    @property
    def digest(self) -> str:
        """Of everything wanted: the services, their selectors and their programs' digests."""
        parts = sorted(repr((s.name, s.selector, s.want)) for s in self.services)
        return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def service(self, name: str) -> ServiceSpec | None:
        return next((s for s in self.services if s.name == name), None)

    def watch_sets(self) -> tuple[frozenset[tuple[str, int]], frozenset[str]]:
        """The watcher's filter: (protocol, port) of every endpoint and map; every daemon's
        name as a comm (at most 15 bytes)."""
        ports = frozenset((e.proto, p) for s in self.services
                          for e in (*s.selector.endpoints, *s.selector.mapped, *s.selector.launched)
                          for p in range(e.first, e.last + 1))
        comms = frozenset(comm_name(s.selector.daemon) for s in self.services if s.selector.daemon is not None)
        return ports, comms


def native_endpoints(service: Service) -> tuple[Endpoint, ...]:
    """A native service's IP endpoints in the agent's form (Unix endpoints are the proxy's)."""
    return tuple(Endpoint(e.proto, a, b) for e in service.endpoints if e.proto != "unix" for a, b in e.ports)


def build(policy: Policy, literal_daemons: Iterable[str], maps: Mapping[str, tuple[Endpoint, ...]],
          compile: Callable[[str], Program], loaded_at: float,
          refusals: Mapping[str, str] | None = None, names: Mapping[str, tuple[str, ...]] | None = None,
          launched: Mapping[str, tuple[Endpoint, ...]] | None = None) -> Desired:
    """The desired state of ``policy``; ``literal_daemons`` are the daemon names its hosts_access
    rules name literally, ``maps`` the ``--map`` ports per daemon, ``compile(service_name)``
    the program of one service; ``names`` the host names each service uses (read only after
    that service's ``compile``, so a compile may fill it); ``launched`` the ports super-servers
    listen on for a daemon (``superserver.launches_for``). Raises rather than returning part of it."""
    specs = tuple(_spec(name, origin, sel, compile, refusals or {}, {} if names is None else names)
                  for name, origin, sel in selectors(policy, literal_daemons, maps, launched))
    return Desired(policy.digest(), specs, loaded_at)


Origin = Literal["native", "hosts_access"]


def selectors(policy: Policy, literal_daemons: Iterable[str], maps: Mapping[str, tuple[Endpoint, ...]],
              launched: Mapping[str, tuple[Endpoint, ...]] | None = None) -> list[tuple[str, Origin, Selector]]:
    """Each service ``build`` compiles, with what it selects (``build``'s arguments); the audit
    (``agent/audit.py``) enrols by the same. Raises on a map of a native service, or two
    services on one port."""
    natives = [s for s in policy.services if native_endpoints(s)]
    native_names = {fold(s.name) for s in natives}
    for daemon in maps:
        if fold(daemon) in native_names:
            raise UsageError(f"--map {daemon}=...: {daemon} is a native service; give its ports in the policy")
    _check_overlaps(natives, maps)
    out: list[tuple[str, Origin, Selector]] = [(s.name, "native", Selector(endpoints=native_endpoints(s))) for s in natives]
    for daemon in daemon_names(literal_daemons, maps):
        if fold(daemon) not in native_names:  # native over hosts_access, as policy.merge
            out.append((daemon, "hosts_access", Selector(daemon=daemon, mapped=_mapped(maps, daemon),
                                                         launched=(launched or {}).get(daemon, ()))))
    return out


def _mapped(maps: Mapping[str, tuple[Endpoint, ...]], daemon: str) -> tuple[Endpoint, ...]:
    return tuple(e for name, eps in maps.items() if fold(name) == fold(daemon) for e in eps)


def _spec(name: str, origin: Literal["native", "hosts_access"], selector: Selector, compile: Callable[[str], Program],
          refusals: Mapping[str, str], names: Mapping[str, tuple[str, ...]]) -> ServiceSpec:
    program = compile(name)
    want = Want(name, program.backend, program.digest)
    return ServiceSpec(name, origin, selector, want, program, refusals.get(name), names.get(name, ()))


def _check_overlaps(natives: list[Service], maps: Mapping[str, tuple[Endpoint, ...]]) -> None:
    """Two native services on one port, or two daemons mapped to one port: which program a
    socket there gets would be a matter of order, so the policy is refused."""
    claims: list[tuple[str, Endpoint, Service | None]] = [
        (s.name, e, s) for s in natives for e in native_endpoints(s)]
    claims += [(f"--map {d}", e, None) for d, eps in maps.items() for e in eps]
    for i, (name_a, a, svc_a) in enumerate(claims):
        for name_b, b, svc_b in claims[i + 1:]:
            if name_a == name_b or a.proto != b.proto or a.last < b.first or b.last < a.first:
                continue
            native_pair = (svc_a is None) == (svc_b is None)
            if not native_pair:
                continue  # a native endpoint wins over a map: selection's precedence
            port = max(a.first, b.first)
            message = f"{name_a} and {name_b} both select {a.proto}/{port}: a socket there would belong to either"
            related = ((svc_b.span, f"{name_b} is here"),) if svc_b is not None and svc_b.span is not None else ()
            raise PolicyError([Diagnostic(svc_a.span if svc_a is not None else None, message, related=related)])
