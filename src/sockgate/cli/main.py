"""``sockgate`` command line: parse arguments, call one library function, render the result.

Each subcommand is a module of this package with ``add_parser(subparsers)`` and
``run(args) -> int``; it is imported only when used. Building the full parser (``sockgate
--help``, ``--version``) imports every command module, so a command's heavy modules (the
agent's runtime, the proxy's server, rich, textual) are imported in its ``run``. The one broad ``except SockgateError``
lives here: a one-line reason on stderr, escaped (it may quote a peer's executable, a process
name or a filter read back from someone else's socket) (a policy error shows its ``file:line:col`` lines and
carets), exit 2 for usage and policy errors (a policy this mode cannot enforce, or too large for
one filter, included), 1 for runtime failures; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from sockgate import __version__
from sockgate.errors import CompileError, PolicyError, SockgateError, UnsupportedInKernel, UsageError
from sockgate.policy.source import printable

# name -> one-line help; the module sockgate.cli.<name> implements it.
COMMANDS: dict[str, str] = {
    "check": "decide clients against a policy, like tcpdmatch",
    "lint": "report errors and warnings in policies",
    "explain": "show the BPF program for a service and a client's path through it",
    "run": "bind guarded sockets and exec a service with them (socket activation or inetd)",
    "attach": "guard the sockets of a running process in place",
    "detach": "remove a sockgate filter from a running process's sockets",
    "proxy": "guard proxy for what the kernel cannot decide (credentials, names, limits)",
    "ls": "list sockets, who owns them, their exposure and their guard",
    "refused": "list whom each eBPF-guarded service refused, and its active bans",
    "probe": "what a source sees of a port: open, closed, filtered",
    "export": "render a policy as nftables or pf rules",
    "demo": "run a guarded echo service on loopback and probe it from two sources",
    "agent": "guard every socket the policy selects, as services start and stop",
    "status": "what the running agent guards, and what it could not",
    "ban": "refuse a source on the agent's services, for a while or until unbanned",
    "unban": "lift a ban set with sockgate ban",
    "top": "a live view of sockets, refusals, bans and the agent's health",
}

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="sockgate", description="Decide who may talk to a socket; the kernel enforces it.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"sockgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        mod = _module(name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_parser(p)
    return parser


def _module(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"sockgate.cli.{name}")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    command = next((a for a in args_list if a in COMMANDS), None)
    try:
        parser = build_parser(only=command)
        args = parser.parse_args(args_list)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        result: int = _module(args.command).run(args)
        return result
    except PolicyError as e:
        print(e.render(caret=True), file=sys.stderr)
        if debug:
            raise
        return 2
    except (UsageError, CompileError, UnsupportedInKernel) as e:
        # The operator asked for something this mode cannot do: a usage/policy error (2).
        print(printable(f"sockgate: {e}"), file=sys.stderr)
        if debug:
            raise
        return 2
    except SockgateError as e:
        print(printable(f"sockgate: {e}"), file=sys.stderr)
        if debug:
            raise
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
