"""agent/reconcile: adopt, attach, reload, replace, detach; foreign/modified/locked/conflict
reported and not retried until something changes; backoff 0.1 s × 2ⁿ ≤ 30 s; properties: every
socket lands in exactly one place, an adopted socket is never touched, retry times are monotone."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.agent.enrol import select
from sockgate.agent.model import GuardState, Observed, Selector
from sockgate.agent.reconcile import Change, RetryBook, backoff, plan
from support.agentcore import DNS, NGINX, NONE, SSH, desired, holder, ours, sock, spec

D = desired(SSH, DNS, NGINX)


def test_a_socket_carrying_the_wanted_program_is_adopted_untouched() -> None:
    p = plan(D, [sock(1, 22, guard=ours(SSH)), sock(2, 53, "udp", guard=ours(DNS, locked=True))], RetryBook(), 0.0)
    assert p.adopted == (1, 2) and p.changes == () and p.unguarded == ()


def test_attach_reload_replace_and_detach() -> None:
    old = GuardState("sockgate", "ssh", "ssh-0", "cbpf")
    other = GuardState("sockgate", "dns", "dns-1", "cbpf")
    p = plan(D, [sock(1, 22), sock(2, 22, guard=old), sock(3, 22, guard=other), sock(4, 23, guard=ours(SSH))], RetryBook(), 0.0)
    assert [(c.cookie, c.kind) for c in p.changes] == [(1, "attach"), (2, "reload"), (3, "replace"), (4, "detach")]
    assert p.changes[3].want is None and p.changes[0].want == SSH.want


def test_a_backend_change_is_a_replace() -> None:
    p = plan(D, [sock(1, 22, guard=GuardState("sockgate", "ssh", "ssh-1", "ebpf"))], RetryBook(), 0.0)
    assert [c.kind for c in p.changes] == ["replace"]


def test_a_retired_service_is_detached_a_stranger_left_alone() -> None:
    gone = GuardState("sockgate", "old", "x", "cbpf")
    manual = GuardState("sockgate", "manual", "y", "cbpf")
    p = plan(D, [sock(1, 9000, guard=gone), sock(2, 9001, guard=manual)], RetryBook(), 0.0, retired=["old"])
    assert [(c.cookie, c.kind) for c in p.changes] == [(1, "detach")] and p.unguarded == () and p.adopted == ()


def test_foreign_modified_and_locked_are_reported_without_retry() -> None:
    socks = [sock(1, 22, guard=GuardState("foreign")), sock(2, 22, guard=GuardState("modified", "ssh", "zz")),
             sock(3, 22, guard=GuardState("none", locked=True)), sock(4, 22, guard=GuardState("ebpf"))]
    p = plan(D, socks, RetryBook(), 0.0)
    assert p.changes == () and [(u.cookie, u.kind, u.retry_at) for u in p.unguarded] == [
        (1, "foreign", None), (2, "modified", None), (3, "locked", None), (4, "foreign", None)]
    assert p.unguarded[0].reason == "carries a filter sockgate did not put there; left as it is"
    assert p.unguarded[2].reason == "its filter is locked (SO_LOCK_FILTER): it cannot be changed until the socket closes"
    again = plan(D, socks, p.retry, 100.0)
    assert [u.attempts for u in again.unguarded] == [1, 1, 1, 1] and again.next_wake is None


def test_a_foreign_filter_removed_is_attached_at_once() -> None:
    first = plan(D, [sock(1, 22, guard=GuardState("foreign"))], RetryBook(), 0.0)
    later = plan(D, [sock(1, 22)], first.retry, 0.0)
    assert [c.kind for c in later.changes] == ["attach"]


def test_a_failed_attach_waits_for_its_backoff() -> None:
    c = plan(D, [sock(1, 22)], RetryBook(), 0.0).changes[0]
    book = RetryBook().failed(1, "permission", "EPERM: needs CAP_SYS_PTRACE", 10.0, c)
    p = plan(D, [sock(1, 22)], book, 10.05)
    assert p.changes == () and [(u.kind, u.attempts, u.retry_at) for u in p.unguarded] == [("permission", 1, 10.1)]
    assert p.next_wake == 10.1
    assert plan(D, [sock(1, 22)], book, 10.1).changes == (c,)


def test_a_lock_met_while_attaching_waits_for_a_change() -> None:
    c = Change(1, SSH.want, NONE)
    book = RetryBook().failed(1, "locked", "locked", 0.0, c)
    assert plan(D, [sock(1, 22)], book, 1e9).changes == ()
    reloaded = desired(spec("ssh", SSH.selector, "ssh-2"))
    assert [ch.want.digest for ch in plan(reloaded, [sock(1, 22)], book, 0.0).changes if ch.want] == ["ssh-2"]


def test_backoff_doubles_to_thirty_seconds() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff(9) == 25.6 and backoff(10) == 30.0 and backoff(10_000) == 30.0


def test_gone_forgets_and_forget_keeps_the_living() -> None:
    book = RetryBook().failed(1, "permission", "x", 0.0).failed(2, "kernel", "y", 0.0)
    assert 1 not in book.failed(1, "gone", "closed", 0.0).entries
    assert set(book.forget({2, 3}).entries) == {2} and book.due(0.1) == {1, 2} and book.due(0.05) == frozenset()


def test_a_conflict_is_reported() -> None:
    other = spec("dropbear", Selector(daemon="dropbear"), origin="hosts_access")
    p = plan(desired(NGINX, other), [sock(1, 9999, holders=(holder("nginx", "nginx"), holder("dropbear", "dropbear")))], RetryBook(), 0.0)
    assert [(u.kind, u.retry_at) for u in p.unguarded] == [("conflict", None)]


def test_unreadable_sockets_are_reported_and_retried() -> None:
    p = plan(D, [sock(1, 22, unreadable="EPERM"), sock(2, 9999, unreadable="EPERM")], RetryBook(), 0.0)
    assert [(u.cookie, u.kind, u.retry_at) for u in p.unguarded] == [(1, "permission", 0.1), (2, "permission", 0.1)]
    assert p.unguarded[1].reason == "its holders cannot be read (EPERM): it may belong to an enrolled daemon"
    assert plan(D, [sock(1, 22, unreadable="EPERM")], p.retry, 0.2).unguarded[0].attempts == 2
    assert plan(desired(SSH), [sock(2, 9999, unreadable="EPERM")], RetryBook(), 0.0).unguarded == ()


# -- properties ------------------------------------------------------------------------------------

GUARDS = st.sampled_from([NONE, ours(SSH), ours(DNS), ours(NGINX), GuardState("foreign"), GuardState("modified", "ssh", "q"),
                          GuardState("none", locked=True), ours(SSH, locked=True), GuardState("sockgate", "ssh", "old", "cbpf"),
                          GuardState("sockgate", "dns", "dns-1", "cbpf", True), GuardState("sockgate", "x", "y", "cbpf")])
HOLDERS = st.lists(st.sampled_from([holder("nginx", "nginx"), holder("sshd", "sshd"), holder("nginx", None)]), max_size=2)


@st.composite
def observed(draw: st.DrawFn) -> list[Observed]:
    n = draw(st.integers(0, 12))
    out = []
    for cookie in range(1, n + 1):
        port = draw(st.sampled_from([22, 53, 8080, 9999]))
        proto = draw(st.sampled_from(["tcp", "udp"]))
        unreadable = draw(st.sampled_from([None, None, "EPERM"]))
        out.append(sock(cookie, port, proto, draw(GUARDS), tuple(draw(HOLDERS)), unreadable))
    return out


@st.composite
def books(draw: st.DrawFn) -> RetryBook:
    book = RetryBook()
    for cookie in draw(st.lists(st.integers(1, 12), max_size=6)):
        book = book.failed(cookie, draw(st.sampled_from(["permission", "kernel", "locked"])), "x",
                           draw(st.floats(0, 50)), Change(cookie, SSH.want, NONE))
    return book


@settings(max_examples=300, deadline=None)
@given(observed(), books(), st.floats(0, 100))
def test_every_socket_lands_in_exactly_one_place(socks: list[Observed], book: RetryBook, now: float) -> None:
    p = plan(D, socks, book, now)
    changed = [c.cookie for c in p.changes]
    reported = [u.cookie for u in p.unguarded]
    placed = changed + list(p.adopted) + reported
    assert len(placed) == len(set(placed))
    adopted = set(p.adopted)
    assert not adopted & set(changed)  # an adopted socket is never touched
    for s in socks:
        if select(D, s) is not None:  # selected: changed, adopted or reported, never skipped
            assert s.cookie in placed
        if s.cookie in adopted:
            assert s.guard.state == "sockgate"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=40))
def test_retry_times_are_monotone_and_bounded(gaps: list[float]) -> None:
    book, now, last_delay = RetryBook(), 0.0, 0.0
    for gap in gaps:
        now += gap
        book = book.failed(1, "permission", "x", now)
        a = book.entries[1]
        assert a.retry_at is not None
        delay = a.retry_at - now
        assert 0.1 - 1e-9 <= delay <= 30.0 and delay >= last_delay - 1e-9
        last_delay = delay
    assert book.entries[1].attempts == len(gaps)


def test_the_retry_book_cannot_be_changed_in_place() -> None:
    book = RetryBook().failed(1, "permission", "x", 0.0)
    with pytest.raises(TypeError):
        book.entries[2] = book.entries[1]  # type: ignore[index]
    assert RetryBook({1: book.entries[1]}) == book


def _applied(socks: list[Observed], changes: tuple[Change, ...]) -> list[Observed]:
    """The sockets as they are once every change succeeded."""
    done = {c.cookie: c for c in changes}
    out = []
    for s in socks:
        c = done.get(s.cookie)
        if c is None:
            out.append(s)
            continue
        guard = GuardState("none") if c.want is None else GuardState("sockgate", c.want.service, c.want.digest, c.want.backend)
        out.append(sock(s.cookie, s.port, s.proto, guard, s.holders, s.unreadable))
    return out


@settings(max_examples=300, deadline=None)
@given(observed())
def test_a_plan_carried_out_leaves_nothing_to_do(socks: list[Observed]) -> None:
    first = plan(D, socks, RetryBook(), 0.0)
    second = plan(D, _applied(socks, first.changes), first.retry, 1e6)
    assert second.changes == ()
    assert {u.cookie for u in second.unguarded} == {u.cookie for u in first.unguarded}
    assert set(second.adopted) == set(first.adopted) | {c.cookie for c in first.changes if c.want is not None}


def test_a_locked_socket_with_an_earlier_program_of_ours_is_a_stale_guard_with_its_digest() -> None:
    p = plan(D, [sock(1, 22, guard=GuardState("sockgate", "ssh", "ssh-0", "cbpf", locked=True))], RetryBook(), 0.0)
    assert p.changes == () and [(u.kind, u.retry_at) for u in p.unguarded] == [("locked", None)]
    assert p.unguarded[0].reason == ("stale guard: locked (SO_LOCK_FILTER) with sockgate's earlier program (ssh ssh-0), "
                                     "which stays in force until the socket closes")
