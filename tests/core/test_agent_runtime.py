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
from sockgate.bpf import interp
from sockgate.agent.statusdoc import exit_code
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


def fake_agent(options: Options, out: io.StringIO | None = None, **kw: Any) -> Agent:
    """An agent over a fake kernel (``tests/support/fakekernel.py``), logging to ``out``."""
    kernel = fake_kernel(FakeOps())
    return Agent(options, kernel, Applier(kernel, lambda *a, **k: 0),  # type: ignore[arg-type]
                 Log("text", out or io.StringIO(), flush_interval=0), Notes(), **kw)  # type: ignore[arg-type]


def started(a: Agent, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``a`` built and in force as its start leaves it, with the sweeps it asks for recorded
    (not run)."""
    sweeps: list[Any] = []
    monkeypatch.setattr(a, "sweep", lambda trigger, retired=(), only=None: sweeps.append((trigger, retired)))
    a.built = a._build(a.bans)
    a.policy_info = a._policy_info("start", True, None)
    return sweeps


def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = GOOD) -> tuple[Agent, Path, list[Any], io.StringIO]:
    policy = tmp_path / "agent.conf"
    policy.write_text(text)
    out = io.StringIO()
    a = fake_agent(Options(files=(str(policy),), backend="cbpf"), out)
    return a, policy, started(a, monkeypatch), out


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
    a = fake_agent(Options(files=(str(policy),), backend="cbpf"), resolver=names)
    return a, started(a, monkeypatch)


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
    a = fake_agent(Options(hosts_allow=str(allow), hosts_deny=str(deny), backend="cbpf"), resolver=FakeNames({}))
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
    now = [1000.0]
    names = FakeNames({"evil.sg.test": ("127.0.0.9",)})
    a = fake_agent(Options(files=(str(policy),), backend="cbpf"), resolver=names, clock=lambda: now[0])
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # (FakeNames stamps its answers with it)
    started(a, monkeypatch)
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


# -- status's exit code: 4 ("degraded") while something wanted is not in force (REVIEW4 N10) ------


def test_status_is_degraded_while_a_reload_failed_bans_are_not_saved_or_crowdsec_is_not_in_force(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, policy, _, _ = agent(tmp_path, monkeypatch)
    assert exit_code(a.status()) == 0 and a.status()["degraded"] == []
    policy.write_text("service web tcp/80 {\n    allow 127.0.0.1 frobnicate\n}\n")
    assert a.reload_now("signal") is not None
    assert exit_code(a.status()) == 4 and a.status()["degraded"] == ["reload"]
    policy.write_text(GOOD)
    assert a.reload_now("signal") is None and exit_code(a.status()) == 0
    a.opts = replace(a.opts, state=str(tmp_path / "gone" / "bans.json"))
    assert a._handle(Request(1, Ban(parse_network("192.0.2.1"))), None).ok  # type: ignore[arg-type]
    assert exit_code(a.status()) == 4 and a.status()["degraded"] == ["state"]
    a.opts = replace(a.opts, state=str(tmp_path / "bans.json"))
    assert a._handle(Request(2, Ban(parse_network("192.0.2.2"))), None).ok  # type: ignore[arg-type]
    assert exit_code(a.status()) == 0
    feed = CrowdsecFeed(LapiClient("http://127.0.0.1:8080", "k"), Session(interval_s=1))
    a.crowdsec = feed
    feed.session.failed(time.monotonic_ns(), "connection refused")
    assert exit_code(a.status()) == 4 and a.status()["degraded"] == ["crowdsec_lapi"]
    a.crowdsec_error = "CrowdSec decisions not applied (1 held): the program does not fit"
    assert a.status()["degraded"] == ["crowdsec_bans", "crowdsec_lapi"]


def test_status_is_degraded_while_a_host_name_is_not_answered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = named_agent(tmp_path, monkeypatch, FakeNames({}))
    assert exit_code(a.status()) == 4 and a.status()["degraded"] == ["names"]
    ok, _ = named_agent(tmp_path, monkeypatch, FakeNames({"web.sg.test": ("127.0.0.5",)}))
    assert exit_code(ok.status()) == 0
    ok.names_error = "host names web.sg.test changed; not applied, the previous programs stay in force"
    assert exit_code(ok.status()) == 4


# -- the ban lines sshguard and DenyHosts write are bans, not rules (REVIEW4 N7) ------------------


def _enforces(a: Agent, service: str, address: str) -> bool:
    """Whether ``service``'s classic program in force refuses ``address``."""
    assert a.built is not None
    program = a.built.loaded[service].compiled
    return not interp.run(program.insns, interp.Packet.from_address(ipaddress.ip_address(address)))  # type: ignore[attr-defined]


def test_nine_hundred_ipv6_ban_lines_do_not_fail_a_classic_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DenyHosts writes one line per address; an attacker with an IPv6 /48 makes it write
    hundreds. As rules they made the classic program too big and every later reload failed (the
    operator's edits, the tools' removals); as bans the reload succeeds, the lines that fit are in
    force (the earliest first) and the rest is reported (status degraded)."""
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    allow.write_text("sshd: 10.0.0.0/8\n")
    v6 = [str(ipaddress.IPv6Address((0x20010DB8 << 96) | (i << 64) | 1)) for i in range(900)]
    deny.write_text("sshd: 192.0.2.50\n" + "".join(f"sshd: [{a}]\n" for a in v6))
    a = fake_agent(Options(hosts_allow=str(allow), hosts_deny=str(deny), backend="cbpf"))
    started(a, monkeypatch)
    assert [r.rule.text for r in a.built.resolved["sshd"].rules] == ["sshd: 10.0.0.0/8"]  # the lines are not rules
    assert len(a.built.tools) == 901 and 0 < a.built.unfit["sshd"] < 900
    assert _enforces(a, "sshd", "192.0.2.50") and _enforces(a, "sshd", v6[0]) and not _enforces(a, "sshd", "10.1.2.3")
    assert not _enforces(a, "sshd", "192.0.2.51")
    status = a.status()
    assert status["degraded"] == ["ban_lines"] and exit_code(status) == 4
    assert any("ban lines of the hosts files not enforced on sshd" in e for e in status["errors"])  # type: ignore[attr-defined]
    assert status["bans"]["by_origin"] == {"hosts_deny": 901}  # type: ignore[index]
    deny.write_text(deny.read_text() + "sshd: 192.0.2.60\n")  # the tool appends a line: the reload succeeds
    assert a.reload_now("file") is None
    assert len(a.built.tools) == 902


def test_with_few_lines_every_line_is_enforced_and_removing_one_lifts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    allow.write_text("###sshguard###\nALL : 192.0.2.9 : DENY\n###sshguard###\nsshd: ALL EXCEPT 192.0.2.77\n")
    deny.write_text("sshd: 192.0.2.50\nsshd: 192.0.2.77\n")
    a = fake_agent(Options(hosts_allow=str(allow), hosts_deny=str(deny), backend="cbpf"))
    started(a, monkeypatch)
    # sshguard's line is a ban; DenyHosts' lines come after an allow rule that is not by address:
    # they stay rules (.50 is allowed there first, .77 refused by its line as libwrap does)
    assert [str(t.ban.network) for t in a.built.tools] == ["192.0.2.9/32"]
    assert _enforces(a, "sshd", "192.0.2.9") and _enforces(a, "sshd", "192.0.2.77")
    assert not _enforces(a, "sshd", "192.0.2.50") and a.built.unfit == {} and exit_code(a.status()) == 0
    allow.write_text("sshd: ALL EXCEPT 192.0.2.77\n")  # sshguard lifts its ban
    assert a.reload_now("file") is None
    assert not _enforces(a, "sshd", "192.0.2.9")
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
