"""The agent's refusal log: its eBPF services' refusal events, one line per source per interval
(``refusallog.py``), as ``sockgate run`` writes them — so fail2ban, sshguard or CrowdSec read
the agent's log as they read tcpd's.

A classic filter counts nothing and reports nothing; only the services whose programs are
eBPF have event rings. Which services those are changes with a reload (a backend chosen by
``auto``, a service added or dropped), so after every swap the monitor is brought to the
policy in force: the same services keep their monitor (the rings are pinned per service, not
per program, and outlive a reload) with the new rules' labels; another set closes the old
monitor (writing what is pending) and starts one over the new set. A log that cannot start is
said in the agent's log and in ``status``, and the guards stay: the log is what is lost, never
a filter.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from sockgate.errors import SockgateError
from sockgate.kernel.backend import Loaded
from sockgate.kernel.ebpf import EbpfLoaded
from sockgate.log import LogFormat, LogSink
from sockgate.refusallog import DEFAULT_INTERVAL, RefusalMonitor, rule_labels, start_refusal_log
from sockgate.resolve.model import ResolvedService
from sockgate.supervisor import Loop


class AgentRefusals:
    def __init__(self, loop: Loop, fmt: LogFormat = "text", sink: LogSink = "stderr",
                 interval: float = DEFAULT_INTERVAL, say: Callable[[str], None] = lambda text: None) -> None:
        self.loop, self.fmt, self.sink, self.interval, self.say = loop, fmt, sink, interval, say
        self.monitor: RefusalMonitor | None = None
        self.watching: tuple[str, frozenset[str]] | None = None  # (pin root, services)
        self.error: str | None = None  # why the log is not running

    def update(self, loaded: Mapping[str, Loaded], resolved: Mapping[str, ResolvedService]) -> None:
        """The log over the eBPF services of ``loaded`` (the policy in force)."""
        ebpf = {n: p for n, p in loaded.items() if isinstance(p, EbpfLoaded)}
        labels: dict[str, Sequence[str]] = {n: rule_labels(resolved[n]) for n in ebpf if n in resolved}
        roots = {p.root for p in ebpf.values()}
        want = (min(roots), frozenset(ebpf)) if ebpf else None
        if want == self.watching and self.monitor is not None:
            self.monitor.labels = labels
            return
        self.close()
        if want is None:
            return
        if len(roots) > 1:  # (one kernel, one bpffs: never so today)
            self.error = f"no refusal log: eBPF services pinned under several roots ({', '.join(sorted(roots))})"
            self.say(self.error)
            return
        try:
            self.monitor = start_refusal_log(self.loop, sorted(want[1]), self.fmt, self.sink, root=want[0],
                                             interval=self.interval, labels=labels)
        except SockgateError as e:
            self.error = f"no refusal log: {e}"
            self.say(self.error)
            return
        self.watching, self.error = want, None
        self.say(f"refusal log of {', '.join(sorted(want[1]))}: {self.fmt} to {self.sink}, "
                 f"one line per refused source per {self.interval:g} s")

    def close(self) -> None:
        """Write what is pending and stop."""
        if self.monitor is not None:
            self.monitor.close()
        self.monitor, self.watching, self.error = None, None, None
