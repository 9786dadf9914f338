"""The exceptions sockgate raises, split by who is at fault.

* ``PolicyError``  — the operator wrote something wrong; carries one or more ``Diagnostic``
  with a ``Span`` so it renders as ``file:line:col: message`` plus the source line and a caret.
* ``UnsupportedInKernel`` — a valid rule that a kernel filter cannot enforce (host names,
  Unix principals, limits); names the rule and the mode that can enforce it.
* ``CompileError`` — a policy too large for one classic BPF program (says what fits).
* ``PeerError`` — the remote side sent something unusable (bad address, bad packet).
* ``AdapterError`` — a system call failed; keeps ``errno`` and what it was applied to.

Anything else escaping the core is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sockgate.policy.source import Span, render_diagnostic


class SockgateError(Exception):
    """Base of every error sockgate means to raise."""


@dataclass(frozen=True)
class Diagnostic:
    """One message tied to a place in a policy source."""

    span: Span | None
    message: str
    severity: str = "error"  # "error" | "warning"
    related: tuple[tuple[Span, str], ...] = ()  # e.g. the earlier rule that shadows this one
    # Show the source after the culprit under the message. A parse error may sit in a file
    # that is no policy at all (named by mistake): the parsers show the culprit only.
    context: bool = True

    def render(self, source_text: str | None = None, caret: bool = True) -> str:
        return render_diagnostic(
            self.span, self.message, severity=self.severity, related=self.related,
            context=self.context, source_text=source_text, caret=caret,
        )

    def __str__(self) -> str:
        return self.render(caret=False)


class PolicyError(SockgateError):
    """A policy (native or hosts_access) has one or more errors; nothing is applied."""

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: "dict[str, str] | None" = None):
        self.diagnostics = tuple(diagnostics)
        self.sources = dict(sources or {})
        super().__init__(self.render(caret=False))

    def render(self, caret: bool = True) -> str:
        return "\n".join(
            d.render(self.sources.get(d.span.file) if d.span else None, caret=caret)
            for d in self.diagnostics
        )


class UnsupportedInKernel(SockgateError):
    """A rule needs user space (host name, Unix principal, limit) and cannot go in a filter."""


class CompileError(SockgateError):
    """The policy does not fit in one classic BPF program, or is otherwise uncompilable."""


class PeerError(SockgateError):
    """The peer (client address, packet, credentials) is malformed or unusable."""


class UsageError(SockgateError):
    """The command line or API call is wrong (bad URL, unknown service, conflicting options)."""


class AdapterError(SockgateError):
    """A system call failed. ``errno`` is kept; ``target`` says what it was applied to."""

    def __init__(self, message: str, errno: int | None = None, target: str | None = None):
        self.errno = errno
        self.target = target
        super().__init__(message)


class UnsupportedPlatform(AdapterError):
    """Kernel enforcement is Linux-only; elsewhere sockgate decides in user space only."""
