"""``sockgate ban ADDR[/LEN]``: refuse a source on every guarded service (or ``--service S``),
for ``--for DURATION`` or until ``sockgate unban``; fail2ban's action says ``--origin fail2ban``.

The address and duration are checked here with the protocol's own parsers, so a typo is a
usage error before anything is sent; the agent checks them again. One line out, exit 0; 2 for
a request the agent refuses as wrong, 1 when no agent answers.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, get_args

from sockgate.agent.client import AgentError, call
from sockgate.agent import protocol
from sockgate.agent.protocol import Ban, Body, ProtocolError, parse_duration, parse_network
from sockgate.cli.status import add_control
from sockgate.errors import UsageError
from sockgate.policy.source import printable


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("addr", metavar="ADDR[/LEN]", help="an address or a network")
    p.add_argument("--for", dest="duration", metavar="DURATION", help="how long: 30s, 10m, 2h, 1d (default: until unbanned)")
    p.add_argument("--service", metavar="S", help="only service S (default: every guarded service)")
    p.add_argument("--origin", choices=get_args(protocol.BanOrigin), default="manual", help="who bans (default manual)")
    p.add_argument("--reason", metavar="TEXT", help="why, shown in status")
    add_control(p)


def run(args: argparse.Namespace) -> int:
    try:
        body = Ban(parse_network(args.addr), None if args.duration is None else parse_duration(args.duration),
                         args.service, args.origin, args.reason)
    except ProtocolError as e:
        raise UsageError(e.message) from None
    return send(args.control, body, f"banned {body.net}")


def send(path: str, body: Body, done: str) -> int:
    """One request; its one line of outcome (the agent's ``message`` when it gives one)."""
    try:
        result: Mapping[str, Any] = call(path, body).result or {}
    except AgentError as e:
        if e.kind in ("usage", "policy", "unsupported"):
            raise UsageError(str(e)) from None
        raise
    message = result.get("message")
    print(printable(message if isinstance(message, str) else done))
    return 0
