"""``sockgate explain``: the BPF program for a service, and a client's path through it.

Prints the program's size (instructions, disjoint ranges per family, bytes attached and the
kernel's converted size), notes on hosts_options(5) options a kernel filter does not carry out
(``spawn``, ``banners`` ...), its listing, and for each ``--client`` the instruction indices the
interpreter executes for a packet from that address, the verdict, and the decision engine's
verdict and reason beside it. The two must agree; if they ever do not, the command says so
and exits 1 (a compiler bug worth reporting).

A client written ``::ffff:a.b.c.d`` is traced twice: as the packet a real IPv4 client of a
dual-stack socket sends (an IPv4 header from ``a.b.c.d``), and as an IPv6 header with that
source, which only a forger sends and every program denies (decide.py says why).
"""

from __future__ import annotations

import argparse
from typing import Any

from sockgate.cli.common import add_policy_args, load_from_args, print_json
from sockgate.errors import PeerError, UsageError
from sockgate.policy.source import printable


def add_parser(p: argparse.ArgumentParser) -> None:
    add_policy_args(p, positional=True)
    p.add_argument("--service", required=True, help="the service whose program to show")
    p.add_argument("--client", action="append", default=[], metavar="ADDR",
                   help="trace a packet from this address (repeatable; IPv4, IPv6, ::ffff:a.b.c.d)")
    p.add_argument("--banned", action="append", default=[], metavar="CIDR",
                   help="also deny this source before any rule, as the proxy's bans do (repeatable)")
    p.add_argument("--no-listing", action="store_true", help="omit the program listing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from sockgate.bpf import compile_resolved
    from sockgate.bpf.program import parse_banned
    from sockgate.resolve import resolve

    policy = load_from_args(args)
    service = resolve(policy, args.service)
    try:
        banned = [parse_banned(b) for b in args.banned]
    except ValueError as e:
        raise UsageError(f"--banned: {e}") from None
    program = compile_resolved(service, banned=banned)
    clients = [t for c in args.client for t in _traces(program, service, c, banned)]
    report = _report(program, clients, listing=not args.no_listing)
    report["notes"] = list(service.option_notes)
    if args.json:
        print_json(report)
    else:
        print(printable(_render(report)), end="")  # rule texts, reasons: policy text
    return 0 if all(c["agree"] for c in clients) else 1


def _traces(program: Any, service: Any, text: str, banned: list[Any]) -> list[dict[str, Any]]:
    """One trace per packet a client written ``text`` can send: an IPv4-mapped address has two."""
    from sockgate.bpf.interp import Packet
    from sockgate.peers import Peer

    try:
        peer = Peer.parse(text)
    except PeerError as e:
        raise UsageError(f"--client: {e}") from None
    assert peer.address is not None
    genuine = Packet.from_address(peer.address)
    if peer.address.version == 4 and ":" in text:  # written ::ffff:a.b.c.d
        return [_trace(program, service, text, genuine, banned), _trace(program, service, text, Packet.ipv6(f"::ffff:{peer.address}"), banned)]
    return [_trace(program, service, text, genuine, banned)]


def _trace(program: Any, service: Any, text: str, packet: Any, banned: list[Any]) -> dict[str, Any]:
    from sockgate.bpf import interp
    from sockgate.decide import decide_resolved
    from sockgate.policy.ir import Action

    peer = packet.peer()
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


def _report(program: Any, clients: list[dict[str, Any]], listing: bool) -> dict[str, Any]:
    from sockgate.bpf import capacity, disasm

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


def _render(r: dict[str, Any]) -> str:
    rg, cap = r["ranges"], r["capacity"]
    lines = [
        f"service {r['service']}  digest {r['digest']}",
        f"program: {r['instructions']} instructions ({r['bytes']} bytes; ~{r['kernel_bytes']} bytes "
        f"once converted by the kernel), {rg['ipv4']} IPv4 + {rg['ipv6']} IPv6 ranges",
        f"capacity: {cap['ipv4']} IPv4 ranges, or {cap['ipv6']} IPv6 ranges "
        f"({cap['ipv6_64']} of /64 networks, {cap['ipv6_128']} of /128 hosts) in one program",
    ]
    lines += [f"note: {n}" for n in r.get("notes", ())]
    if "listing" in r:
        lines += ["", *r["listing"]]
    for c in r["clients"]:
        how = "in an IPv6 header: forged" if c["forged"] else c["family"]
        lines += [
            "",
            f"client {c['client']} ({how}): {c['verdict']} "
            f"(ret {c['accept']:#x}) after {len(c['path'])} instructions",
            "  path: " + " ".join(map(str, c["path"])),
            f"  decision engine: {c['decision']} — {c['reason']}",
        ]
        if not c["agree"]:
            lines.append("  DISAGREEMENT between the program and the decision engine: please report this")
    return "\n".join(lines) + "\n"
