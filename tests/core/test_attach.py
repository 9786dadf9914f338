"""attach's own checks (the ones whose messages carry --force advice) and its JSON record."""

from __future__ import annotations

import pytest

from sockgate import attach
from sockgate.errors import AdapterError
from sockgate.kernel import GuardInfo
from sockgate.inventory import Target
from sockgate.linux.sockdiag import TCP_LISTEN, Sock


def held(before: GuardInfo) -> attach._Held:
    sock = Sock("tcp", "ipv4", "stream", TCP_LISTEN, 4242, None, "0.0.0.0", 80, reuse=True)
    return attach._Held(Target(812, 6, sock), 9, before)


def test_a_foreign_or_modified_filter_needs_force() -> None:
    foreign = held(GuardInfo("foreign", 1))
    with pytest.raises(AdapterError) as raised:
        attach._check_changeable([foreign], force=False)
    assert str(raised.value) == (
        f"{foreign.ref.describe()} already has a foreign filter (1 instructions); nothing was changed (use --force to replace it)"
    )
    modified = held(GuardInfo("modified", 7, "web", "0" * 16))
    with pytest.raises(AdapterError, match=r"a modified sockgate filter .*\(use --force"):
        attach._check_changeable([modified], force=False)
    attach._check_changeable([foreign, modified], force=True)


def test_locked_is_refused_even_with_force() -> None:
    with pytest.raises(AdapterError, match=r"the socket's filter is locked \(SO_LOCK_FILTER\)"):
        attach._check_changeable([held(GuardInfo("sockgate", 7, "web", "0" * 16, locked=True))], force=True)


def test_change_json_keeps_its_keys() -> None:
    c = attach.Change(812, 6, "tcp", "0.0.0.0:80", "reloaded", GuardInfo("sockgate", 7, "web", "0" * 16, reason=None, backend="cbpf"))
    assert c.as_dict() == {
        "pid": 812, "fd": 6, "proto": "tcp", "local": "0.0.0.0:80", "action": "reloaded",
        "before": {"state": "sockgate", "instructions": 7, "service": "web", "digest": "0" * 16, "locked": False},
    }
