"""``sockgate status``: what the running agent guards, as text for 80 columns or ``--json``
(the status document, schema 1: docs/agent.md).

Exit 0 when every selected socket is guarded and everything wanted is in force, 3 while any
socket is not guarded, 4 ("degraded") while none is unguarded but something wanted is not in
force (a failed reload kept the old policy, CrowdSec's decisions not applied or its LAPI down,
host names not refreshed or failed, the bans not saved), 1 when no agent answers. The work is one request (``agent.client.status``); the answer is checked
against the schema before anything of it is shown.
"""

from __future__ import annotations

import argparse
import json
import sys

from sockgate.agent import statusdoc
from sockgate.agent.client import status
from sockgate.agent.control import DEFAULT_PATH


EPILOG = ("exit status: 0 every selected socket guarded and everything in force; 3 a socket not guarded; "
          "4 degraded (failed reload, CrowdSec decisions not applied or LAPI down, host names not refreshed, "
          "bans not saved: see the error lines); 1 no agent answers")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    add_control(p)
    p.add_argument("--json", action="store_true", help="the status document as one JSON object")


def add_control(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", metavar="PATH", default=DEFAULT_PATH, help=f"the agent's control socket (default {DEFAULT_PATH})")


def run(args: argparse.Namespace) -> int:
    doc = status(args.control)
    sys.stdout.write(json.dumps(doc) + "\n" if args.json else statusdoc.render(doc))
    return statusdoc.exit_code(doc)
