"""``sockgate status``: what the running agent guards, as text for 80 columns or ``--json``
(the status document, schema 1: docs/agent.md).

Exit 0 when every selected socket is guarded, 3 while any is not (for monitoring), 1 when no
agent answers. The work is one request (``agent.client.call``); the answer is checked against
the schema before anything of it is shown.
"""

from __future__ import annotations

import argparse
import json
import sys

from sockgate.agent import statusdoc
from sockgate.agent.client import call
from sockgate.agent.control import DEFAULT_PATH
from sockgate.agent.protocol import Status
from sockgate.errors import SockgateError


def add_parser(p: argparse.ArgumentParser) -> None:
    add_control(p)
    p.add_argument("--json", action="store_true", help="the status document as one JSON object")


def add_control(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", metavar="PATH", default=DEFAULT_PATH, help=f"the agent's control socket (default {DEFAULT_PATH})")


def run(args: argparse.Namespace) -> int:
    doc = dict(call(args.control, Status()).result or {})
    try:
        statusdoc.check(doc)
    except statusdoc.StatusError as e:
        raise SockgateError(f"the agent at {args.control} sent a status this version cannot read: {e}") from None
    sys.stdout.write(json.dumps(doc) + "\n" if args.json else statusdoc.render(doc))
    return statusdoc.exit_code(doc)
