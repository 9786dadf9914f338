"""What ``sockgate explain`` shows, as a value: a service's classic BPF program, and a client's
path through it beside the decision engine's verdict and deciding rule.

``explain(policy, service, clients, banned)`` resolves and compiles the service once, runs each
client's packet through the cBPF interpreter (``bpf/interp.trace``) and decides the same peer
with the engine (``decide_resolved``); the two must agree, and ``agree`` says whether they do.
``render`` is the text both ``sockgate explain`` and ``sockgate top`` (its explain view) print.
A client written ``::ffff:a.b.c.d`` is traced twice: as the packet a real IPv4 client of a
dual-stack socket sends (an IPv4 header from ``a.b.c.d``), and as an IPv6 header with that
source, which only a forger sends and every program denies (decide.py says why).

Pure: a policy and texts in, a JSON-ready report out. A client that is no address is a
``UsageError`` naming the flag; a service the policy lacks is the resolver's ``PolicyError``.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Sequence

from sockgate.bpf import capacity, disasm, interp
from sockgate.bpf.interp import Packet
from sockgate.bpf.program import Program, compile_resolved, parse_banned
from sockgate.decide import decide_resolved
from sockgate.errors import PeerError, UsageError
from sockgate.peers import Peer
from sockgate.policy.ir import Action, Policy
from sockgate.resolve import resolve
from sockgate.resolve.model import ResolvedService

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def banned_networks(texts: Sequence[str]) -> list[Network]:
    """``--banned`` values as networks; a ``UsageError`` for one that is none."""
    try:
        return [ipaddress.ip_network(parse_banned(b)) for b in texts]
    except ValueError as e:
        raise UsageError(f"--banned: {e}") from None


def explain(policy: Policy, service_name: str, clients: Sequence[str], banned: Sequence[Network] = (),
            listing: bool = True) -> dict[str, Any]:
    """The report: program size and capacity, option notes, the listing, one trace per packet."""
    service = resolve(policy, service_name)
    program = compile_resolved(service, banned=list(banned))
    traces = [t for c in clients for t in traces_of(program, service, c, banned)]
    out = report(program, traces, listing)
    out["notes"] = list(service.option_notes)
    return out


def traces_of(program: Program, service: ResolvedService, text: str, banned: Sequence[Network]) -> list[dict[str, Any]]:
    """One trace per packet a client written ``text`` can send: an IPv4-mapped address has two."""
    try:
        peer = Peer.parse(text)
    except PeerError as e:
        raise UsageError(f"--client: {e}") from None
    if peer.address is None:
        raise UsageError(f"--client: {text!r} is no address")
    genuine = Packet.from_address(peer.address)
    if peer.address.version == 4 and ":" in text:  # written ::ffff:a.b.c.d
        forged = Packet.ipv6(f"::ffff:{peer.address}")
        return [trace(program, service, text, genuine, banned), trace(program, service, text, forged, banned)]
    return [trace(program, service, text, genuine, banned)]


def trace(program: Program, service: ResolvedService, text: str, packet: Packet, banned: Sequence[Network]) -> dict[str, Any]:
    """One packet through the program, and the engine's decision for the same peer."""
    peer = packet.peer()
    assert peer is not None and peer.address is not None  # a packet made from an address has one
    t = interp.trace(program.insns, packet)
    a = peer.address
    ban = None if peer.forged else next((b for b in banned if a.version == b.version and a in b), None)
    if ban is not None:
        decision, rule, reason = Action.DENY, None, f"banned ({ban})"
    else:
        d = decide_resolved(service, peer)
        decision, reason = d.action, d.reason
        rule = f"{d.rule.span.file}:{d.rule.span.line}: {d.rule.text}" if d.rule is not None else None
    verdict = Action.ALLOW if t.result else Action.DENY
    return {
        "client": text,
        "address": peer.address_text(),
        "family": f"ipv{a.version}",
        "header": f"ipv{peer.header}",
        "forged": peer.forged,
        "path": t.path,
        "accept": t.result,
        "verdict": verdict.value,
        "decision": decision.value,
        "rule": rule,
        "reason": reason,
        "agree": verdict is decision,
    }


def report(program: Program, clients: list[dict[str, Any]], listing: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "service": program.service,
        "digest": program.digest,
        "instructions": len(program),
        "ranges": {"ipv4": program.ranges4, "ipv6": program.ranges6, "total": program.ranges},
        "bytes": program.size_bytes,
        "kernel_bytes": program.ebpf_bytes,
        "capacity": capacity(),
        "clients": clients,
    }
    if listing:
        out["listing"] = disasm.listing(program.insns).splitlines()
    return out


def render(r: dict[str, Any], capacity: bool = True) -> str:
    """The report as ``sockgate explain`` prints it (policy text inside: escape before a terminal);
    ``capacity``: with the line on how many ranges one program holds."""
    rg, cap = r["ranges"], r["capacity"]
    lines = [
        f"service {r['service']}  digest {r['digest']}",
        f"program: {r['instructions']} instructions ({r['bytes']} bytes; ~{r['kernel_bytes']} bytes "
        f"once converted by the kernel), {rg['ipv4']} IPv4 + {rg['ipv6']} IPv6 ranges",
    ]
    if capacity:
        lines.append(f"capacity: {cap['ipv4']} IPv4 ranges, or {cap['ipv6']} IPv6 ranges "
                     f"({cap['ipv6_64']} of /64 networks, {cap['ipv6_128']} of /128 hosts) in one program")
    lines += [f"note: {n}" for n in r.get("notes", ())]
    if "listing" in r:
        lines += ["", *r["listing"]]
    for c in r["clients"]:
        lines += ["", *client_lines(c)]
    return "\n".join(lines) + "\n"


def client_lines(c: dict[str, Any]) -> list[str]:
    """One client's trace: verdict, path, the engine's decision (and a disagreement, if any)."""
    how = "in an IPv6 header: forged" if c["forged"] else c["family"]
    lines = [
        f"client {c['client']} ({how}): {c['verdict']} (ret {c['accept']:#x}) after {len(c['path'])} instructions",
        "  path: " + " ".join(map(str, c["path"])),
        f"  decision engine: {c['decision']} — {c['reason']}",
    ]
    if not c["agree"]:
        lines.append("  DISAGREEMENT between the program and the decision engine: please report this")
    return lines
