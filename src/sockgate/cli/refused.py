"""``sockgate refused``: the eBPF filters' refusal counters and active bans, per service.

A table for people (most refused first, then the bans), or ``--json``: one object per line,
``{"type": "refused", "service", "source", "count", "first_seen", "last_seen"}`` and
``{"type": "ban", "service", "source", "origin", "expires"}``, times in ISO 8601 UTC (the
kernel's monotonic stamps converted). The work is ``sockgate.refused.read_refused``; entries it
skipped are warnings on stderr. Fields in docs/refused.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from sockgate.cli.common import columns
from sockgate.ebpf.refusals import ban_json, count_json, origin_name
from sockgate.kernel.ebpfstore import Paths, default_mount
from sockgate.policy.source import escape, printable
from sockgate.refused import Listing, read_refused


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--service", metavar="S", help="only service S")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    # where the eBPF backend pins ($SOCKGATE_BPFFS, else /sys/fs/bpf); --root: a private bpffs (tests)
    p.add_argument("--root", default=Paths(default_mount()).root, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    listing = read_refused(args.root, args.service)
    for problem in listing.problems:
        print(printable(f"sockgate: warning: {problem}"), file=sys.stderr)
    sys.stdout.write(as_json(listing) if args.json else as_table(listing))
    return 0


def as_json(listing: Listing) -> str:
    objs = [count_json(r, listing.clock) for r in listing.counts] + [ban_json(b, listing.clock) for b in listing.bans]
    return "".join(json.dumps(o, separators=(",", ":")) + "\n" for o in objs)


def as_table(listing: Listing) -> str:
    c = listing.clock
    if listing.counts:
        out = columns([["SERVICE", "SOURCE", "REFUSED", "FIRST SEEN", "LAST SEEN"]] + [
            [escape(r.service), str(r.source), str(r.count.refused), c.iso(r.count.first_ns) or "-", c.iso(r.count.last_ns) or "-"]
            for r in listing.counts])
    else:
        out = "no refusals counted\n"
    if listing.bans:
        out += "\n" + columns([["SERVICE", "BANNED", "ORIGIN", "EXPIRES"]] + [
            [escape(b.service), str(b.network), origin_name(b.ban.origin), c.iso(b.ban.expires_ns) or "never"]
            for b in listing.bans])
    return out
