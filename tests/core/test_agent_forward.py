"""The agent's name book (``agent/forward.py``): TTL floor and refresh, retries with a
doubling delay, an answer kept only until it expires, rows for ``status``."""

from __future__ import annotations

import ipaddress

from sockgate.agent.forward import Answer, NameBook
from sockgate.policy.forward import Lookup, Reverse

A = ipaddress.ip_address


def lk(*addrs: str, name: str = "web.test") -> Lookup:
    return Lookup(name, name, tuple(Reverse(A(a), (name,)) for a in addrs))


def ok(t: float, *addrs: str, ttl: float = 10) -> Answer:
    return Answer("web.test", lk(*addrs), ttl, t)


def failed(t: float, why: str = "timed out") -> Answer:
    return Answer("web.test", None, 0, t, why)


def test_a_new_name_is_due_at_once_and_pending() -> None:
    book = NameBook().track(["web.test"])
    assert book.due(0) == ("web.test",) and book.in_force(0) == {}
    assert [(r.state, r.expires) for r in book.rows(0)] == [("pending", None)]


def test_refresh_at_nine_tenths_of_the_ttl_and_expiry_at_the_ttl() -> None:
    book, changed = NameBook().track(["web.test"]).update(ok(100, "10.0.0.1"))
    assert changed and book.due(108.9) == () and book.due(109) == ("web.test",)
    assert book.in_force(109.9) == {"web.test": lk("10.0.0.1")} and book.in_force(110) == {}
    assert book.wake_at() == 109


def test_ttls_below_the_floor_count_as_the_floor_and_long_ones_refresh_hourly() -> None:
    book, _ = NameBook(floor=2).track(["web.test"]).update(ok(0, "10.0.0.1", ttl=0))
    assert book.in_force(1.9) and not book.in_force(2) and book.due(1.8) == ("web.test",)
    book, _ = NameBook().track(["web.test"]).update(ok(0, "10.0.0.1", ttl=86400))
    assert book.due(3240) == ("web.test",) and book.in_force(80000)


def test_the_same_addresses_again_is_no_change() -> None:
    book, _ = NameBook().track(["web.test"]).update(ok(0, "10.0.0.1"))
    book, changed = book.update(ok(9, "10.0.0.1"))
    assert not changed
    book, changed = book.update(ok(18, "10.0.0.2"))
    assert changed and book.in_force(18) == {"web.test": lk("10.0.0.2")}


def test_a_failure_keeps_the_answer_until_it_expires_then_nothing() -> None:
    book, _ = NameBook(retry=1, retry_max=4).track(["web.test"]).update(ok(0, "10.0.0.1"))
    book, changed = book.update(failed(9))
    assert not changed and book.in_force(9.5) == {"web.test": lk("10.0.0.1")}
    (row,) = book.rows(9.5)
    assert (row.state, row.error, row.admitted) == ("stale", "timed out", (A("10.0.0.1"),))
    assert book.due(9.9) == () and book.due(10) == ("web.test",)  # retry after 1 s
    book, _ = book.update(failed(10))
    assert book.due(11.9) == () and book.due(12) == ("web.test",)  # then 2 s
    assert book.in_force(10) == {}
    (row,) = book.rows(10)
    assert (row.state, row.admitted, row.matched) == ("failed", (), ())
    book, _ = book.update(failed(12))
    book, _ = book.update(failed(16))
    assert book.due(19.9) == () and book.due(20) == ("web.test",)  # capped at retry_max


def test_success_after_failures_resets_the_delay() -> None:
    book, _ = NameBook().track(["web.test"]).update(failed(0))
    book, _ = book.update(failed(1))
    book, changed = book.update(ok(3, "10.0.0.3"))
    assert changed and book.rows(3)[0].state == "ok" and book.due(3) == ()


def test_untracked_and_older_answers_are_ignored() -> None:
    book, _ = NameBook().track(["web.test"]).update(ok(50, "10.0.0.1"))
    assert book.update(ok(40, "10.0.0.2")) == (book, False)
    assert book.update(Answer("other.test", None, 0, 60)) == (book, False)
    assert book.track(["other.test"]).in_force(50) == {}
    assert book.track(["web.test", "other.test"]).in_force(50) == {"web.test": lk("10.0.0.1")}


def test_ask_again_makes_every_name_due_and_keeps_the_answers() -> None:
    book, _ = NameBook().track(["web.test"]).update(ok(0, "10.0.0.1"))
    assert book.due(1) == ()
    book = book.ask_again(1)
    assert book.due(1) == ("web.test",) and book.in_force(1) == {"web.test": lk("10.0.0.1")}
    book, _ = book.update(ok(1.1, "10.0.0.1"))
    assert book.due(2) == ()


def test_an_expired_answer_is_no_time_to_wake_again_and_names_being_asked_are_not_due() -> None:
    book = NameBook(floor=2).track(["a.test"])
    assert book.wake_at() == float("-inf") and book.wake_at(asking={"a.test"}) is None
    book, _ = book.update(Answer("a.test", Lookup("a.test", "a.test", ()), 2.0, 100.0))
    book, _ = book.update(Answer("a.test", None, 0.0, 101.0, "timed out"))  # refreshing fails
    assert book.wake_at(now=101.0) == 102.0  # the retry (and the expiry at 102)
    assert book.wake_at(asking={"a.test"}, now=103.0) is None  # expired, being asked: sleep until the answer
