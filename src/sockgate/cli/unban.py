"""``sockgate unban ADDR[/LEN]``: lift a ban set by ``sockgate ban`` (or by fail2ban:
``--origin fail2ban``; ``--origin any`` lifts every origin the agent lets a client lift). A
CrowdSec ban is lifted in CrowdSec (``cscli decisions delete``): the agent says so."""

from __future__ import annotations

import argparse
from typing import get_args

from sockgate.agent import protocol
from sockgate.agent.protocol import ProtocolError, Unban, parse_network
from sockgate.cli.ban import send
from sockgate.cli.status import add_control
from sockgate.errors import UsageError


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("addr", metavar="ADDR[/LEN]", help="the address or network banned")
    p.add_argument("--service", metavar="S", help="only service S's ban")
    p.add_argument("--origin", choices=get_args(protocol.UnbanOrigin), default="manual", help="whose ban (default manual)")
    add_control(p)


def run(args: argparse.Namespace) -> int:
    try:
        body = Unban(parse_network(args.addr), args.service, args.origin)
    except ProtocolError as e:
        raise UsageError(e.message) from None
    return send(args.control, body, f"unbanned {body.net}")
