"""Records of the long-running commands: one per decision, one per finished connection, one
per refused source per interval.

A record is a flat mapping (time, event, service, peer, decision, rule, reason, and for a
finished connection bytes each way, duration and how it ended). ``Log`` renders it as a text
line (``key=value``) or a JSON line, and writes it to one sink: a stream (stderr by default),
syslog (``ident`` and ``facility`` chosen by the command: the proxy's ``sockgate-proxy`` on
daemon; severity info for allowed and closed, notice for denied, warning for faults), or the
systemd journal (``linux/journal.py``, native protocol: the message plus each field as
``SOCKGATE_<KEY>``). ``message`` writes a record that has a sentence for people — the
refusal log's ``refused connect from HOST`` lines (refusallog.py) — as that sentence after
``ident[pid]:`` in text, as the fields in JSON.

Python's ``syslog.openlog`` is per process: the facility is given with each message, but the
ident is the last one opened, so two logs to syslog in one process share it.

Values are not trusted: a host name comes from the client's own PTR record, a Unix peer's
executable path from whoever named the file. A text value is written bare only when it is
printable ASCII without a space, ``"``, ``=`` or ``\\``; anything else is written as a JSON
string (``ensure_ascii``: control characters, DEL and every non-ASCII character escaped), so
each record is exactly one line of printable ASCII that parses back to the same values — no
value can end the line, forge a ``key=value`` pair, or reach a terminal as an escape
sequence. JSON lines are escaped the same way by ``json.dumps``.

Stream output is buffered and flushed at most ``flush_interval`` seconds after a record was
written (the server calls ``tick`` from its housekeeping timer) or when the buffer passes
64 KiB: a write(2) per record would cost the short-connection path a system call each.
"""

from __future__ import annotations

import json
import os
import re
import sys
import syslog
import time
from typing import Any, Literal, Mapping, TextIO

from sockgate.errors import SockgateError
from sockgate.linux.journal import Journal, field_name
from sockgate.policy.source import escape

LogFormat = Literal["text", "json"]
LogSink = Literal["stderr", "syslog", "journal"]
SINKS: tuple[LogSink, ...] = ("stderr", "syslog", "journal")
_SEVERITY = {"allow": syslog.LOG_INFO, "close": syslog.LOG_INFO, "deny": syslog.LOG_NOTICE}
_ORDER = ("event", "service", "peer", "decision", "rule", "reason")


_NEEDS_QUOTES = re.compile(r'[^!-~]|["=\\]|^$')  # outside printable ASCII (0x21-0x7e), or " = \


_QUOTED: dict[str, str] = {}  # service names, rules, reasons, ends repeat: render them once


def _quote(v: Any) -> str:
    if type(v) is int or type(v) is float:
        return str(v)
    s = str(v)
    q = _QUOTED.get(s)
    if q is None:
        q = json.dumps(s) if _NEEDS_QUOTES.search(s) else s
        if len(_QUOTED) >= 1024:
            _QUOTED.clear()
        _QUOTED[s] = q
    return q


def allowed_parts(service: str, rule: str, reason: str) -> tuple[str, str]:
    """``Log.allowed``'s text line after the stamp, around the peer's label: (head, tail)."""
    q = _QUOTED.get
    return (f" event=decision service={q(service) or _quote(service)} peer=",
            f" decision=allow rule={q(rule) or _quote(rule)} reason={q(reason) or _quote(reason)}\n")


def closed_parts(service: str, rule: str) -> tuple[str, str]:
    """``Log.closed``'s text line after the stamp and up to its byte counts, around the peer's
    label: (head, middle)."""
    q = _QUOTED.get
    return f" event=close service={q(service) or _quote(service)} peer=", f" decision=allow rule={q(rule) or _quote(rule)} bytes_up="


def ending(end: str) -> str:
    """The ``end=`` value of a close record as text."""
    return _QUOTED.get(end) or _quote(end)


class Log:
    def __init__(
        self,
        fmt: LogFormat = "text",
        stream: TextIO | None = None,
        use_syslog: bool = False,
        flush_interval: float = 0.2,
        *,
        sink: LogSink | None = None,
        ident: str = "sockgate-proxy",
        facility: int = syslog.LOG_DAEMON,
        journal: Journal | None = None,
    ) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stderr
        self.sink: LogSink = sink or ("syslog" if use_syslog else "stderr")
        self.use_syslog = self.sink != "stderr"  # a sink that stamps and frames records itself
        self.ident = ident
        self.facility = facility
        self.flush_interval = flush_interval
        self._journal = journal if journal is not None or self.sink != "journal" else Journal()
        self._buf: list[str] = []
        self._size = 0
        self._first = 0.0
        self._stamp_sec = -1
        self._stamp = ""
        self._stamp_ms = -1
        self._stamp_text = ""
        if self.sink == "syslog":
            syslog.openlog(ident, syslog.LOG_PID, facility)

    def _now(self) -> tuple[float, str]:
        """The monotonic time (for flushing: a clock step must not hold lines back), and the
        wall-clock stamp (UTC, milliseconds), rendered once per millisecond."""
        ms = time.time_ns() // 1_000_000  # (as _lane.c stamps its records)
        if ms != self._stamp_ms:
            self._stamp_ms = ms
            sec = ms // 1000
            if sec != self._stamp_sec:
                self._stamp_sec = sec
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._stamp_text = f"{self._stamp}.{ms % 1000:03d}Z"
        return time.monotonic(), self._stamp_text

    def record(self, event: str, **fields: Any) -> None:
        """Write one record; ``event`` is ``decision``, ``close``, or ``notice``/``error``."""
        t, stamp = self._now()
        if self.fmt == "text" and not self.use_syslog:
            # the hot path (two records per connection): no intermediate dict
            parts = [stamp, " event=", event]
            quoted = _QUOTED
            for k, v in fields.items():
                if v is None:
                    continue
                q = quoted.get(v) if type(v) is str else None  # inlined _quote's cache hit
                parts += (" ", k, "=", q if q is not None else _quote(v))
            line = "".join(parts)
        else:
            rec: dict[str, Any] = {"time": stamp, "event": event}
            rec.update((k, v) for k, v in fields.items() if v is not None)
            line = self.render(rec)
        if self.use_syslog:
            self._emit(self._severity(rec), line, rec)
            return
        self._buf.append(line + "\n")
        self._size += len(line) + 1
        if len(self._buf) == 1:
            self._first = t
        if self._size > 65536 or event in ("notice", "error") or t - self._first > self.flush_interval:
            self.flush()

    # The two records of every allowed connection, as ``record`` writes them, in one f-string
    # each when the output is text to a stream: the generic path costs about twice as much,
    # a visible share of a short connection's time in the proxy.

    def allowed(self, service: str, peer: str, rule: str, reason: str, plain: bool = False) -> None:
        """``plain``: the caller vouches that ``peer`` needs no quoting (an address and port
        as the kernel wrote them); it is then not rendered through the quoting cache, which
        per-connection labels would only churn."""
        if not self.lines():
            self.record("decision", service=service, peer=peer, decision="allow", rule=rule, reason=reason)
            return
        t, stamp = self._now()
        head, tail = allowed_parts(service, rule, reason)
        self.add_line(t, f"{stamp}{head}{peer if plain else _QUOTED.get(peer) or _quote(peer)}{tail}")

    def closed(self, service: str, peer: str, rule: str, up: int, down: int, duration: float, end: str,
               plain: bool = False) -> None:
        if not self.lines():
            self.record("close", service=service, peer=peer, decision="allow", rule=rule, bytes_up=up,
                        bytes_down=down, duration=duration, end=end)
            return
        t, stamp = self._now()
        head, middle = closed_parts(service, rule)
        p = peer if plain else _QUOTED.get(peer) or _quote(peer)
        self.add_line(t, f"{stamp}{head}{p}{middle}{up} bytes_down={down} duration={duration!r} end={ending(end)}\n")

    def lines(self) -> bool:
        """Records are text lines added to this log's own buffer (``add_line``): what the proxy's C
        relay may write itself (``_lane.c``, "the remembered path")."""
        return self.fmt == "text" and not self.use_syslog

    def add_line(self, t: float, line: str) -> None:
        """A rendered line (ending in a newline) at monotonic time ``t``, buffered and flushed as every record."""
        self._buf.append(line)
        self._size += len(line)
        if len(self._buf) == 1:
            self._first = t
        if self._size > 65536 or t - self._first > self.flush_interval:
            self.flush()

    def message(self, event: str, text: str, severity: int, **fields: Any) -> None:
        """A record with a sentence for people: text sinks get ``text`` (escaped to one
        printable line; on a stream after the stamp and ``ident[pid]:`` as syslog would write
        it), JSON sinks the fields; the journal gets both."""
        t, stamp = self._now()
        rec: dict[str, Any] = {"time": stamp, "event": event, **fields}  # (None kept: JSON null)
        line = escape(text) if self.fmt == "text" else self.render(rec)
        if self.use_syslog:
            self._emit(severity, line, rec)
            return
        self.add_line(t, f"{stamp} {self.ident}[{os.getpid()}]: {line}\n" if self.fmt == "text" else line + "\n")

    def _emit(self, severity: int, line: str, rec: Mapping[str, Any]) -> None:
        """One record to syslog or the journal; a journal that went away loses the record, as
        a broken stream does, rather than take the command down."""
        if self.sink == "syslog":
            syslog.syslog(self.facility | severity, line)
            return
        if self._journal is None:  # closed
            return
        entry = [("MESSAGE", line), ("PRIORITY", str(severity)), ("SYSLOG_IDENTIFIER", self.ident),
                 ("SYSLOG_FACILITY", str(self.facility >> 3)), ("SYSLOG_PID", str(os.getpid()))]
        entry += [("SOCKGATE_" + field_name(k), str(v)) for k, v in rec.items() if k != "time" and v is not None]
        try:
            self._journal.send(entry)
        except SockgateError:
            pass

    def render(self, rec: Mapping[str, Any]) -> str:
        if self.fmt == "json":
            return json.dumps(rec, separators=(",", ":"))
        head = str(rec["time"])
        keys = [k for k in _ORDER if k in rec] + [k for k in rec if k not in _ORDER and k != "time"]
        return head + " " + " ".join(f"{k}={_quote(rec[k])}" for k in keys)

    @staticmethod
    def _severity(rec: Mapping[str, Any]) -> int:
        if rec["event"] == "error":
            return syslog.LOG_WARNING
        if rec["event"] == "notice":
            return syslog.LOG_NOTICE
        return _SEVERITY.get(str(rec.get("decision", rec["event"])), syslog.LOG_INFO)

    def tick(self) -> None:
        """Called periodically: flush what has waited long enough."""
        if self._buf and time.monotonic() - self._first > self.flush_interval:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf)
        self._buf.clear()
        self._size = 0
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not take the proxy down

    def close(self) -> None:
        """Flush, and close the journal socket if there is one."""
        self.flush()
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def notice(self, message: str, **fields: Any) -> None:
        self.record("notice", message=message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.record("error", message=message, **fields)
