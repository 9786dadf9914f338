"""The layers of sockgate, and every import read from the sources (tests/core/test_layers.py).

Imports point down: a module may import its own layer or a lower one. The table maps module
prefixes to layers, the longest prefix winning. Every import counts — top level, inside a
function, under ``if TYPE_CHECKING`` — since an import moved into a function to dodge a cycle
still is the dependency. ``KNOWN_CYCLES`` and ``KNOWN_UPWARD`` list what the code still does
wrong while the layout moves to this table; they may only shrink (the test fails on an entry
that no longer occurs), and each says what removes it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

BASE, POLICY, RESOLVE, CORE, EDGE, SEAM, ENFORCE, ENTRY = range(8)
LAYER_NAMES = ("base", "policy", "resolve", "engine/compilers/exporters", "adapters/edge", "kernel seam", "enforcement", "API/CLI")

LAYERS: dict[str, int] = {
    "sockgate.errors": BASE,
    "sockgate.policy.source": BASE,
    "sockgate.urls": BASE,
    "sockgate.intlist": BASE,  # numbers from outside, bounded; "0,2-3" lists (pure)
    "sockgate.bulk": BASE,  # a pause of the cycle collector for passes over a million values
    "sockgate.policy": POLICY,
    "sockgate.peers": POLICY,
    "sockgate.policy.forward": POLICY,  # exact host names → their confirmed address sets (pure)
    "sockgate.policy.netlist": POLICY,  # a set file's networks kept as integers (pure)
    "sockgate.policy.setfile": POLICY,  # set files parsed straight into integers (pure)
    "sockgate.resolve": RESOLVE,  # the resolve pass: model, kernelpart, ranges
    "sockgate.bans": RESOLVE,  # the backend-neutral ban every source and backend shares
    "sockgate.decide": CORE,
    "sockgate.explain": CORE,  # `explain` as a value: the program, a client's path, the deciding rule
    "sockgate.bpf": CORE,
    "sockgate.export": CORE,
    "sockgate.ebpf": CORE,
    "sockgate.ebpf.registry": CORE,  # the cookie registry's record layout (pure)
    "sockgate.proxy.limits": CORE,
    "sockgate.proxy.admission": CORE,
    "sockgate.proxy.affinity": CORE,  # which CPU each worker runs on (pure)
    "sockgate.crowdsec": CORE,  # the decision stream, sans I/O
    "sockgate.linux": EDGE,
    "sockgate.linux.bpffs": EDGE,  # the bpf filesystem: mount, trusted directories, pins
    "sockgate.linux.inotify": EDGE,  # inotify on directories: the agent's file watch
    "sockgate.loading": EDGE,
    "sockgate.lookup": EDGE,  # host-name lookups at the edge
    "sockgate.log": EDGE,
    "sockgate.crowdsec.lapi": EDGE,  # the bouncer's HTTP client
    "sockgate.services_db": EDGE,
    "sockgate.inventory": EDGE,
    "sockgate.kernel": SEAM,
    "sockgate.kernel.ebpf": SEAM,  # the eBPF backend (loads, pins, recognises by cookie)
    "sockgate.kernel.ebpfstore": SEAM,  # what a load pins in bpffs (maps carried over, programs renamed in)
    "sockgate.kernel.ebpfcollect": SEAM,  # its clean-up: stale registry entries, unnamed directories
    "sockgate.kernel.ebpfopts": SEAM,  # what it compiles with ($SOCKGATE_COUNTERS) and the program auto probes
    "sockgate.kernel.bpfops": SEAM,  # its port to bpffs/bpf(2)/sock_diag (a fake in tests/core)
    "sockgate.kernel.banmaps": SEAM,  # a service's pinned ban tries: put, sweep, apply a wanted set
    "sockgate.guard": ENFORCE,
    "sockgate.attach": ENFORCE,
    "sockgate.launcher": ENFORCE,
    "sockgate.inetd": ENFORCE,
    "sockgate.supervisor": ENFORCE,
    "sockgate.socktable": ENFORCE,
    "sockgate.cutoff": ENFORCE,  # ending the established connections a reload newly denies
    "sockgate.refused": ENFORCE,  # `sockgate refused`: the pinned counters and bans
    "sockgate.refusallog": ENFORCE,  # the refusal log a long-running command hosts
    "sockgate.probe": ENFORCE,
    "sockgate.agent": ENFORCE,  # `sockgate agent`: pure planners (model …) and edges (watcher …)
    "sockgate.agent.unitsyntax": ENFORCE,  # systemd's unit file syntax and names, as systemd reads them (pure)
    "sockgate.agent.systemdunits": ENFORCE,  # systemd's unit loader: names, masks, aliases, drop-ins (through the reader)
    "sockgate.demo": ENFORCE,
    "sockgate.top": ENFORCE,  # `sockgate top`: pure model and select (snapshots in, rows out), feed (I/O)
    "sockgate.top.app": ENTRY,  # the textual application over them (the optional `top` extra)
    "sockgate.proxy": ENFORCE,
    "sockgate.proxy.kernelbans": ENFORCE,  # the proxy's bans as eBPF map updates
    "sockgate.proxy._lane": ENFORCE,  # the C relay: accept, connect, relay (syscalls, as sockgate.proxy)
    "sockgate.proxy.lane": ENFORCE,  # its attachment to the proxy's loop
    "sockgate": ENTRY,
    "sockgate.__main__": ENTRY,
    "sockgate.cli": ENTRY,
}

# The agent's modules that talk to the system; every other sockgate.agent module is pure
# (tests/core/test_agent_pure.py: no socket, ctypes, selectors, sockgate.linux or .kernel).
AGENT_EDGES = frozenset({
    "sockgate.agent.watcher", "sockgate.agent.observe", "sockgate.agent.applier", "sockgate.agent.control",
    "sockgate.agent.client", "sockgate.agent.names", "sockgate.agent.files", "sockgate.agent.sources",
    "sockgate.agent.runtime", "sockgate.agent.bansink", "sockgate.agent.crowdfeed", "sockgate.agent.agentstate",
    "sockgate.agent.sweeps", "sockgate.agent.transaction", "sockgate.agent.banning", "sockgate.agent.hostnames",
    "sockgate.agent.launchfiles", "sockgate.agent.auditscan", "sockgate.agent.systemdunits",
})

# Adapters are thin: one kernel facility each, no policy logic.
THIN = "sockgate.linux"
THIN_MAY_IMPORT = ("sockgate.errors", "sockgate.urls", "sockgate.peers", "sockgate.intlist", "sockgate.linux")

# One seam: only the kernel package puts filters on sockets or reads them back.
SEAM_ONLY = {"sockgate.linux.filter": "sockgate.kernel"}

# The migration ratchet (issue: one resolved policy, one kernel seam). Only shrinks.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()
KNOWN_THIN_BREACHES: frozenset[tuple[str, str]] = frozenset()
KNOWN_FILTER_USERS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int


def modules(src: Path = SRC) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted((src / "sockgate").rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise KeyError(module)
    return LAYERS[best]


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        if path.name != "__init__.py":
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def imports(src: Path = SRC) -> list[Import]:
    """Every import of a sockgate module by a sockgate module, wherever it is written."""
    known = modules(src)
    out: list[Import] = []
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for t in _targets(module, path, node, known):
                while t not in known and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in known and t != module:
                    out.append(Import(module, t, node.lineno))
    return out


def cycles(edges: list[Import]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found
