"""``sockgate probe HOST PORT`` / ``sockgate probe --icmp HOST``: what a source sees of a port.

Exit status: 0 open (ICMP: at least one reply), 3 closed, 4 filtered or open|filtered (ICMP:
no reply), 1 the probe could not be made (bad source address, no permission), 2 usage.
"""

from __future__ import annotations

import argparse

from sockgate import probe
from sockgate.cli.common import print_json
from sockgate.errors import UsageError

EXIT_OPEN, EXIT_CLOSED, EXIT_FILTERED = 0, 3, 4
_EXIT = {probe.OPEN: EXIT_OPEN, probe.CLOSED: EXIT_CLOSED, probe.FILTERED: EXIT_FILTERED, probe.OPEN_FILTERED: EXIT_FILTERED}


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", metavar="HOST", help="address or name to probe")
    p.add_argument("port", metavar="PORT", nargs="?", type=_port, help="port (not with --icmp)")
    p.add_argument("--proto", choices=("tcp", "udp"), default="tcp", help="transport (default tcp)")
    p.add_argument("--icmp", action="store_true", help="ICMP echo instead of a port probe")
    p.add_argument("--from", dest="source", metavar="ADDR", help="source address to send from (bind)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds to wait (default 2; ICMP: per echo, 1)")
    p.add_argument("--payload", metavar="HEX", help="UDP payload as hex (default empty)")
    p.add_argument("--count", type=int, metavar="N", help="ICMP echo requests to send (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.epilog = "exit status: 0 open/reply, 3 closed, 4 filtered or open|filtered/no reply, 1 error, 2 usage"


def _port(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, found {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, found {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    if args.icmp:
        return _run_icmp(args)
    if args.port is None:
        raise UsageError("probe: give HOST PORT, or --icmp HOST")
    if args.count is not None:
        raise UsageError("probe: --count is for --icmp (a port probe sends one connect or datagram exchange)")
    timeout = probe.DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    if args.proto == "udp":
        result = probe.probe_udp(args.host, args.port, source=args.source, timeout=timeout, payload=_payload(args.payload))
    else:
        if args.payload is not None:
            raise UsageError("probe: --payload is for --proto udp")
        result = probe.probe_tcp(args.host, args.port, source=args.source, timeout=timeout)
    if args.json:
        print_json(result.to_json())
    else:
        rtt = "" if result.rtt is None else f" in {result.rtt * 1000:.3f} ms"
        src = f" from {result.source}" if result.source else ""
        target = f"[{result.address}]" if ":" in result.address else result.address
        print(f"{result.proto} {target}:{result.port}{src}: {result.state} ({result.reason}{rtt})")
    return _EXIT[result.state]


def _payload(text: str | None) -> bytes:
    if text is None:
        return b""
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"probe: --payload expects hex digits, found {text!r}") from None


def _run_icmp(args: argparse.Namespace) -> int:
    if args.port is not None:
        raise UsageError("probe --icmp takes a HOST only, not a port")
    if args.payload is not None or args.proto != "tcp":
        raise UsageError("probe --icmp takes no --payload or --proto")
    timeout = 1.0 if args.timeout is None else args.timeout
    count = 3 if args.count is None else args.count
    result = probe.probe_icmp(args.host, source=args.source, count=count, timeout=timeout)
    if args.json:
        print_json(result.to_json())
    else:
        p = result.ping
        src = f" from {p.source}" if p.source else ""
        print(f"icmp echo {p.address}{src} via {p.method}: {p.received}/{p.sent} replies")
        for r in p.replies:
            print(f"  seq={r.seq} from {r.source} time={r.rtt * 1000:.3f} ms")
        if p.replies:
            rtts = [r.rtt * 1000 for r in p.replies]
            print(f"  rtt min/avg/max = {min(rtts):.3f}/{sum(rtts) / len(rtts):.3f}/{max(rtts):.3f} ms")
    return EXIT_OPEN if result.ping.replies else EXIT_FILTERED
