"""agent/runtime without a kernel, sockets or loop: a reload is all or nothing — a policy that
does not parse, or whose second service does not compile, leaves the running state (the same
``Built``) in force and says why in status, the log and to systemd; a good one swaps it whole
and sweeps once. (The whole agent runs for real in tests/kernel/test_agent.py.)"""

from __future__ import annotations

import io
import ipaddress
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sockgate.agent import banning
from sockgate.agent.applier import Applier
from sockgate.agent.crowdfeed import CrowdsecFeed
from sockgate.agent.forward import Answer
from sockgate.agent.protocol import Ban, Request, Unban, parse_network
from sockgate.agent.runtime import Agent, Options
from sockgate.crowdsec.lapi import LapiClient
from sockgate.crowdsec.session import Session
from sockgate.errors import SockgateError
from sockgate.log import Log
from sockgate.policy.forward import Lookup, Reverse
from support.fakekernel import FakeOps, fake_kernel

GOOD = "service web tcp/80 {\n    allow 127.0.0.1\n}\nservice mail tcp/25 {\n    allow 10.0.0.0/8\n}\n"


class Notes:
    def __init__(self) -> None:
        self.said: list[str] = []

    def status(self, text: str) -> None:
        self.said.append(text)

    def reloading(self) -> None:
        self.said.append("RELOADING")

    def ready(self) -> None:
        self.said.append("READY")


def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = GOOD) -> tuple[Agent, Path, list[Any], io.StringIO]:
    policy = tmp_path / "agent.conf"
    policy.write_text(text)
    kernel = fake_kernel(FakeOps())
    out = io.StringIO()
    a = Agent(Options(files=(str(policy),), backend="cbpf"), kernel, Applier(kernel, lambda *a, **k: 0),  # type: ignore[arg-type]
              Log("text", out, flush_interval=0), Notes())  # type: ignore[arg-type]
    sweeps: list[Any] = []
    monkeypatch.setattr(a, "sweep", lambda trigger, retired=(), only=None: sweeps.append((trigger, retired)))
    a.built = a._build(a.bans)
    a.policy_info = a._policy_info("start", True, None)
    return a, policy, sweeps, out


def test_a_policy_that_does_not_parse_keeps_the_running_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, policy, sweeps, out = agent(tmp_path, monkeypatch)
    before = a.built
    policy.write_text("service web tcp/80 {\n    allow 127.0.0.1 frobnicate\n}\n")
    error = a.reload_now("signal")
    assert error is not None and f"{policy}:2" in error
    assert a.built is before and sweeps == []
    assert a.policy_info is not None and not a.policy_info.reload_ok and a.policy_info.reload_error == error
    assert "reload failed, the previous policy stays in force" in out.getvalue()
    notes = a.notifier.said  # type: ignore[attr-defined]
    assert any(n.startswith("reload failed:") for n in notes)


def test_a_policy_whose_second_service_does_not_compile_keeps_the_running_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, policy, sweeps, _ = agent(tmp_path, monkeypatch)
    before = a.built
    policy.write_text(GOOD.replace("allow 10.0.0.0/8", "allow host .example.com"))  # a reverse lookup: refused
    error = a.reload_now("request")
    assert error is not None
    assert a.built is before and sweeps == []


def test_a_good_reload_swaps_everything_and_sweeps_once_naming_the_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, policy, sweeps, _ = agent(tmp_path, monkeypatch)
    policy.write_text("service web tcp/80 {\n    allow 127.0.0.2\n}\n")
    assert a.reload_now("file") is None
    assert a.built is not None and [s.name for s in a.built.desired.services] == ["web"]
    assert sweeps == [("file", ("mail",))]
    assert a.policy_info is not None and a.policy_info.reload_ok and a.policy_info.trigger == "file"


def test_a_ban_on_a_service_the_policy_lacks_is_refused_and_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _, sweeps, _ = agent(tmp_path, monkeypatch)
    answer = a._handle(Request(7, Ban(parse_network("192.0.2.1"), service="nope")), None)  # type: ignore[arg-type]
    assert answer.error is not None and "no service nope" in answer.error.message
    assert a.bans.entries == () and sweeps == []


def test_crowdsec_decisions_reach_every_service_but_the_exempt_and_a_deletion_lifts_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _, sweeps, _ = agent(tmp_path, monkeypatch)
    feed = CrowdsecFeed(LapiClient("http://127.0.0.1:8080", "k"), Session(interval_s=1), ("mail",))
    a.crowdsec = feed
    a.opts = replace(a.opts, crowdsec_exempt=("mail",))
    body = b'{"new": [{"id": 1, "type": "ban", "scope": "Ip", "value": "192.0.2.7", "duration": "1h"}], "deleted": []}'
    a._on_crowdsec(feed.session.received(body, time.monotonic_ns(), startup=True))
    now = time.monotonic_ns()
    assert [str(b.network) for b in a._effective(a.bans, "web", now)] == ["192.0.2.7/32"]
    assert a._effective(a.bans, "mail", now) == ()
    assert [s for s, _ in sweeps] == ["bans"]  # classic services: compiled again
    assert a.status()["sources"]["crowdsec"]["decisions"] == 1
    gone = b'{"new": [], "deleted": [{"id": 1, "type": "ban", "scope": "Ip", "value": "192.0.2.7", "duration": "1h"}]}'
    a._on_crowdsec(feed.session.received(gone, time.monotonic_ns(), startup=False))
    assert a.bans.entries == ()


def test_a_ban_state_file_that_cannot_be_saved_is_an_error_line_in_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _, _, out = agent(tmp_path, monkeypatch)
    a.opts = replace(a.opts, state=str(tmp_path / "gone" / "bans.json"))  # its directory does not exist
    assert a._handle(Request(1, Ban(parse_network("192.0.2.1"))), None).ok  # type: ignore[arg-type]
    errors = a.status()["errors"]
    assert any("bans not persisted" in e and "bans.json" in e for e in errors)  # type: ignore[attr-defined]
    a.opts = replace(a.opts, state=str(tmp_path / "bans.json"))
    assert a._handle(Request(2, Ban(parse_network("192.0.2.2"))), None).ok  # type: ignore[arg-type]
    assert not any("bans not persisted" in e for e in a.status()["errors"])  # type: ignore[attr-defined]


def test_unban_of_a_network_another_origin_holds_names_that_origin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _, _, _ = agent(tmp_path, monkeypatch)
    net = parse_network("198.51.100.0/24")
    assert a._handle(Request(1, Ban(net, origin="fail2ban")), None).ok  # type: ignore[arg-type]
    answer = a._handle(Request(2, Unban(net)), None)  # type: ignore[arg-type]
    assert answer.result is not None
    assert answer.result["message"] == (
        "198.51.100.0/24 is not banned by manual; banned by fail2ban (unban with --origin fail2ban, or --origin any)")
    assert len(a.bans.entries) == 1
    other = a._handle(Request(3, Unban(parse_network("203.0.113.7"))), None)  # type: ignore[arg-type]
    assert other.result is not None and other.result["message"] == "203.0.113.7/32 was not banned"


class FakeNames:
    """A resolver whose answers the test sets (``lookup_all`` is what a build asks)."""

    def __init__(self, addresses: dict[str, tuple[str, ...] | None]) -> None:
        self.addresses = addresses

    def lookup_all(self, names: Any) -> list[Any]:
        return [self.answer(n) for n in names]

    def answer(self, name: str) -> Any:
        got = self.addresses.get(name)
        if got is None:
            return Answer(name, None, 0.0, time.monotonic(), "timed out")
        lookup = Lookup(name, name, tuple(Reverse(ipaddress.ip_address(a), (name,)) for a in got))
        return Answer(name, lookup, 60.0, time.monotonic())


NAMED = GOOD.replace("allow 127.0.0.1", "allow host web.sg.test")


def named_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: FakeNames) -> tuple[Agent, list[Any]]:
    policy = tmp_path / "agent.conf"
    policy.write_text(NAMED)
    kernel = fake_kernel(FakeOps())
    a = Agent(Options(files=(str(policy),), backend="cbpf"), kernel, Applier(kernel, lambda *a, **k: 0),  # type: ignore[arg-type]
              Log("text", io.StringIO(), flush_interval=0), Notes(), resolver=names)  # type: ignore[arg-type]
    sweeps: list[Any] = []
    monkeypatch.setattr(a, "sweep", lambda trigger, retired=(), only=None: sweeps.append((trigger, retired)))
    a.built = a._build(a.bans)
    a.policy_info = a._policy_info("start", True, None)
    return a, sweeps


def web_digest(a: Agent) -> str:
    assert a.built is not None
    spec = a.built.desired.service("web")
    assert spec is not None and spec.names == ("web.sg.test",)
    return spec.want.digest


def test_a_host_name_is_looked_up_before_the_first_compile_and_a_changed_answer_recompiles_its_services(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = FakeNames({"web.sg.test": ("127.0.0.5",)})
    a, sweeps = named_agent(tmp_path, monkeypatch, names)
    assert a.built is not None
    first, mail = web_digest(a), a.built.loaded["mail"]
    row = a.status()["services"][0]  # type: ignore[index]
    assert row["names"][0]["addresses"] == ["127.0.0.5"] and row["names"][0]["error"] is None
    a.namebook, _ = a.namebook.update(names.answer("web.sg.test"))
    a._refresh()  # the same answer: nothing to do
    assert sweeps == []
    names.addresses["web.sg.test"] = ("127.0.0.6",)
    a.namebook, changed = a.namebook.update(names.answer("web.sg.test"))
    assert changed
    a._refresh()
    assert sweeps == [("names", ())] and web_digest(a) != first
    assert a.built.loaded["mail"] is mail  # a service without the name keeps its program
    assert a.policy_info is not None and a.policy_info.trigger == "names"


def test_a_failed_lookup_admits_nobody_and_says_so_in_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = named_agent(tmp_path, monkeypatch, FakeNames({}))
    assert a.built is not None and a.built.answers == {}
    row = a.status()["services"][0]  # type: ignore[index]
    assert row["names"][0]["addresses"] == [] and "admits nobody" in row["names"][0]["error"]


@pytest.mark.parametrize("pattern", ["PARANOID", ".sg.test", "web.sg.test"])
def test_a_name_that_needs_a_reverse_lookup_is_still_refused_for_the_kernel(tmp_path: Path, pattern: str) -> None:
    """hosts_access: PARANOID and a .suffix need the client's name, refused with the reason; an
    exact name is compiled (its answers; here none: nobody)."""
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    allow.write_text(f"sshd: {pattern}\n")
    deny.write_text("ALL: ALL\n")
    kernel = fake_kernel(FakeOps())
    a = Agent(Options(hosts_allow=str(allow), hosts_deny=str(deny), backend="cbpf"), kernel,  # type: ignore[arg-type]
              Applier(kernel, lambda *a, **k: 0), Log("text", io.StringIO(), flush_interval=0), Notes(),  # type: ignore[arg-type]
              resolver=FakeNames({}))  # type: ignore[arg-type]
    if pattern == "web.sg.test":
        assert a._build(a.bans).answers == {}
        return
    with pytest.raises(SockgateError, match="host name"):
        a._build(a.bans)


def test_the_same_addresses_in_another_order_are_no_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = FakeNames({"web.sg.test": ("127.0.0.5", "127.0.0.6")})
    a, sweeps = named_agent(tmp_path, monkeypatch, names)
    names.addresses["web.sg.test"] = ("127.0.0.6", "127.0.0.5")  # round robin
    a.namebook, _ = a.namebook.update(names.answer("web.sg.test"))
    a._refresh()
    assert sweeps == []


def test_crowdsec_decisions_that_could_not_be_applied_are_applied_at_the_next_pull(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LAPI sends a decision once (a delta is never sent again): when the kernel could not
    take it, the next pull — even one that changes nothing — applies it, and status says so
    meanwhile, instead of the decision held and never enforced."""
    a, _, _, out = agent(tmp_path, monkeypatch)
    feed = CrowdsecFeed(LapiClient("http://127.0.0.1:8080", "k"), Session(interval_s=1))
    a.crowdsec = feed
    build = a._build
    fail = [True]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if fail[0]:
            raise SockgateError("the program does not fit")
        return build(*args, **kwargs)

    monkeypatch.setattr(a, "_build", flaky)
    body = b'{"new": [{"id": 1, "type": "ban", "scope": "Ip", "value": "192.0.2.7", "duration": "1h"}], "deleted": []}'
    a._on_crowdsec(feed.session.received(body, time.monotonic_ns(), startup=True))
    assert a.bans.entries == ()
    assert "CrowdSec decisions not applied" in out.getvalue()
    errors = a.status()["errors"]
    assert any("CrowdSec" in e and "not applied" in e for e in errors)  # type: ignore[attr-defined]
    fail[0] = False
    a._on_crowdsec(feed.session.received(b'{"new": [], "deleted": []}', time.monotonic_ns(), startup=False))
    assert [str(b.network) for b in a._effective(a.bans, "web", time.monotonic_ns())] == ["192.0.2.7/32"]
    assert not any("not applied" in e for e in a.status()["errors"])  # type: ignore[attr-defined]


def test_a_refusing_name_that_stops_answering_keeps_refusing_its_last_addresses_and_blocks_no_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hosts.deny names a host whose owner is the attacker: its zone answers once, then
    SERVFAILs for good. The name's last addresses stay refused (closed), and the rest of the
    policy still reloads — a ban line sshguard or DenyHosts appends is put in force — instead of
    every reload failing for as long as the attacker's DNS says so."""
    policy = tmp_path / "agent.conf"
    text = "service web tcp/80 {\n    deny host evil.sg.test\n    allow 127.0.0.0/8\n}\n"
    policy.write_text(text)
    kernel = fake_kernel(FakeOps())
    now = [1000.0]
    names = FakeNames({"evil.sg.test": ("127.0.0.9",)})
    a = Agent(Options(files=(str(policy),), backend="cbpf"), kernel, Applier(kernel, lambda *a, **k: 0),  # type: ignore[arg-type]
              Log("text", io.StringIO(), flush_interval=0), Notes(), resolver=names, clock=lambda: now[0])  # type: ignore[arg-type]
    monkeypatch.setattr(a, "sweep", lambda trigger, retired=(), only=None: None)
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # (FakeNames stamps its answers with it)
    a.built = a._build(a.bans)
    a.policy_info = a._policy_info("start", True, None)
    now[0] += 3600  # the answer's TTL (60 s) is long past; the refresh fails
    a.namebook, _ = a.namebook.update(Answer("evil.sg.test", None, 0.0, now[0], "SERVFAIL"))
    a._refresh()
    assert a.names_error is None
    policy.write_text(text.replace("    allow", "    deny 192.0.2.50\n    allow"))  # a ban line appended
    assert a.reload_now("file") is None
    assert a.built is not None
    rules = [r.rule.match for r in a.built.resolved["web"].rules]
    assert [str(n) for n in rules[0].nets] == ["127.0.0.9/32"]  # type: ignore[attr-defined]
    assert [str(n) for n in rules[1].nets] == ["192.0.2.50/32"]  # type: ignore[attr-defined]
    row = a.status()["services"][0]["names"][0]  # type: ignore[index]
    assert row["error"] is not None and "last" in row["error"]


@pytest.mark.parametrize("origin", ["fail2ban", "hosts_deny"])
def test_a_tool_ban_covering_this_hosts_loopback_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             origin: str) -> None:
    """fail2ban and the hosts.deny tools decide from log lines remote clients write: like a
    CrowdSec decision, their ban never cuts the host off from itself (an operator's manual
    ban may)."""
    a, _, _, _ = agent(tmp_path, monkeypatch)
    for net in ("127.0.0.1", "127.0.0.0/8", "::1"):
        answer = a._handle(Request(1, Ban(parse_network(net), origin=origin)), None)  # type: ignore[arg-type]
        assert answer.error is not None and "loopback" in answer.error.message
    assert a.bans.entries == ()
    assert a._handle(Request(2, Ban(parse_network("127.0.0.1"))), None).ok  # type: ignore[arg-type]


class Timers:
    def __init__(self) -> None:
        self.armed: list[float] = []

    def call_later(self, delay: float, callback: Any) -> Any:
        self.armed.append(delay)
        return lambda: None


def test_ended_bans_are_lifted_on_time_from_programs_and_tidied_in_batches_from_maps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _, _, _ = agent(tmp_path, monkeypatch)
    timers = Timers()
    a.loop = timers  # type: ignore[assignment]
    soon = [Request(i, Ban(parse_network(f"192.0.2.{i}"), seconds=1)) for i in (1, 2)]
    assert a._handle(soon[0], None).ok  # type: ignore[arg-type]
    assert 0 < timers.armed[-1] <= 1.01  # classic: the ban is in the program, lifted by a recompile on time
    monkeypatch.setattr(banning.bansink, "needs_program", lambda loaded: False)  # as when every service is eBPF
    a._timers.clear()
    timers.armed.clear()
    assert a._handle(soon[1], None).ok  # type: ignore[arg-type]
    assert timers.armed == [pytest.approx(banning.TIDY_S + 0.01, abs=0.05)]
    assert a._handle(Request(3, Ban(parse_network("192.0.2.3"), seconds=1)), None).ok  # type: ignore[arg-type]
    assert len(timers.armed) == 1  # armed once: a stream of changes never pushes the tidy back
