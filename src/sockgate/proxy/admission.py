"""The proxy's admission of a client, as its log records name it.

A decision record names the client and the rule that decided. TCP connections
(``proxy.service``) and UDP flows (``proxy.udp``) write the same labels, so they live here,
beneath both, and neither listener imports the other for them. Pure: strings from a ``Peer``
and a ``Rule``.
"""

from __future__ import annotations

from sockgate.peers import Peer
from sockgate.policy.ir import Rule


def rule_label(rule: Rule | str | None) -> str:
    """Where a decision came from: a rule's place, ``default``, or a label already (``limit``)."""
    if isinstance(rule, str):
        return rule
    return "default" if rule is None else f"{rule.span.file}:{rule.span.line}"


def peer_label(peer: Peer) -> str:
    """The client as a log shows it: ``address:port`` (IPv6 in brackets), ``name[address]``
    once a name is known, or the Unix credentials."""
    if peer.address is not None:
        a = peer.address_text()  # a forged ::ffff:a.b.c.d is never shown as a.b.c.d
        a = f"[{a}]" if ":" in a else a
        a = f"{a}:{peer.port}" if peer.port is not None else a
        if peer.name:  # as libwrap prints it: name[address]; a name that did not verify is marked
            return f"{peer.name}{'' if peer.name_verified else '(unverified)'}[{a}]"
        return a
    return peer.describe()
