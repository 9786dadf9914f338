"""agent/statusdoc: the built document is schema 1 (and the checker refuses what is not), the
text fits 80 columns with hostile names escaped, exit code 3 while a socket is unguarded."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sockgate.agent.model import GuardState
from sockgate.agent.statusdoc import (AgentInfo, BanRow, ImpostorRow, NameRow, PolicyInfo, Refusals, ServiceRow, SocketRow, StatusError,
                                      SuperservedRow, build,
                                      check, exit_code, json_schema, render)
from sockgate.agent.model import Selector
from support.agentcore import DNS, NGINX, SSH, holder, ours, sock, spec

T = 1_764_750_000.0  # 2025-12-03T08:20:00Z

AGENT = AgentInfo(pid=42, version="0.9", started=T, backend="cbpf", watch_mode="cgroup-bpf", control_path="/run/sockgate/agent.sock",
                  control_group="sockgate", watch_cgroup="/sys/fs/cgroup", counters={"adopted": 2, "attached": 1})
POLICY = PolicyInfo("0123456789abcdef", T, ("/etc/hosts.allow", "/etc/hosts.deny"), T + 5, False, "file",
                    "/etc/hosts.allow:3:7: expected a daemon list")


def _doc(**over: Any) -> dict[str, Any]:
    rows = (
        ServiceRow(SSH, T, (SocketRow(sock(1, 22, guard=ours(SSH), holders=(holder("sshd", "sshd", 812, 3),)), "adopted", T),),
                   Refusals(9, 2, (("192.0.2.66", 8, T, T + 1),)), bans=1),
        ServiceRow(DNS, T, (SocketRow(sock(2, 53, "udp", guard=GuardState("foreign", locked=True),
                                          holders=(holder("evil", "evil\x1b[2J" + "x" * 300, 9, 4),)),
                                      "unguarded", None, "carries a filter sockgate did not put there and locked (SO_LOCK_FILTER); left as it is", 1),
                            SocketRow(sock(3, 53, "udp"), "retrying", None, "EPERM: needs CAP_SYS_PTRACE", 3, T + 0.4))),
        ServiceRow(NGINX, T, names=(NameRow("web.example.com", ("192.0.2.10",), T + 60),)),
    )
    bans = [BanRow("192.0.2.66/32", "manual", None, T + 3600, T, "scanner"), BanRow("2001:db8::/64", "crowdsec", ("ssh",), None, T)]
    kw: dict[str, Any] = {"sources": {"crowdsec": {"url": "http://127.0.0.1:8080", "state": "ok"}}, "errors": ["one"]} | over
    return build(AGENT, POLICY, rows, bans, **kw)


def test_the_document_is_schema_1_and_json() -> None:
    doc = _doc()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["schema"] == 1 and doc["unguarded"] == 2 and doc["agent"]["started"] == "2025-12-03T08:20:00Z"
    ssh = doc["services"][0]
    assert ssh["sockets"][0]["local"] == "0.0.0.0:22" and ssh["sockets"][0]["netns"] == "net:[4026531840]"
    assert ssh["refusals"] == {"counted": True, "total": 9, "sources": 2,
                               "top": [{"source": "192.0.2.66", "count": 8, "first": "2025-12-03T08:20:00Z", "last": "2025-12-03T08:20:01Z"}]}
    assert doc["services"][1]["refusals"] == {"counted": False}
    assert doc["bans"]["by_origin"] == {"manual": 1, "crowdsec": 1} and doc["bans"]["items"][0]["services"] == ["*"]
    assert doc["agent"]["counters"] == {"adopted": 2, "attached": 1, "reloaded": 0, "replaced": 0, "detached": 0, "destroyed": 0}


@pytest.mark.parametrize("path, value, message", [
    (("schema",), 2, "status.schema: expected one of 1, found 2"),
    (("unguarded",), "0", "status.unguarded: expected int, found str"),
    (("unguarded",), True, "status.unguarded: expected int, found bool"),
    (("services", 0, "sockets", 0, "state"), "fine", "status.services[0].sockets[0].state: expected one of guarded, adopted, unguarded, retrying"),
    (("services", 0, "sockets", 0, "family"), True, "status.services[0].sockets[0].family: expected one of 4, 6, found True"),
    (("agent", "watch"), {}, "status.agent.watch: expected an object with keys cgroup, events, last_resync, lost, mode"),
    (("services", 1, "refusals"), {"counted": False, "total": 3}, "status.services[1].refusals: expected an object with keys counted"),
    (("bans", "by_origin", "manual"), "1", "status.bans.by_origin.manual: expected int, found str"),
])
def test_the_checker_refuses_what_is_not_schema_1(path: tuple[Any, ...], value: object, message: str) -> None:
    doc = copy.deepcopy(_doc())
    target: Any = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    with pytest.raises(StatusError) as e:
        check(doc)
    assert str(e.value).startswith(message)


def test_an_extra_key_is_refused() -> None:
    doc = _doc()
    doc["extra"] = 1
    with pytest.raises(StatusError, match="status: expected an object with keys"):
        check(doc)


LOADED = PolicyInfo("0123456789abcdef", T, ("/etc/hosts.allow", "/etc/hosts.deny"), T + 5, True, "file", None)


def test_exit_code_three_while_anything_is_unguarded() -> None:
    assert exit_code(_doc()) == 3
    # (the last reload of POLICY failed: since REVIEW4 N10 that is exit 4, so a loaded policy here)
    good = build(AGENT, LOADED, (ServiceRow(SSH, T, (SocketRow(sock(1, 22, guard=ours(SSH)), "guarded", T),)),), [])
    assert exit_code(good) == 0 and render(good).endswith("every selected socket is guarded\n")


def test_exit_code_four_while_something_wanted_is_not_in_force_and_three_first() -> None:
    guarded = (ServiceRow(SSH, T, (SocketRow(sock(1, 22, guard=ours(SSH)), "guarded", T),)),)
    failed = build(AGENT, POLICY, guarded, [])
    assert failed["degraded"] == ["reload"] and exit_code(failed) == 4
    assert "DEGRADED, not in force: reload (see above)\n" in render(failed)
    for kind in ("crowdsec_bans", "crowdsec_lapi", "names", "state"):
        assert exit_code(build(AGENT, LOADED, guarded, [], degraded=[kind])) == 4
    stale = (ServiceRow(SSH, T, guarded[0].sockets, names=(NameRow("web.example.com", ("192.0.2.10",), T + 60, True,
                                                                    "refreshing fails"),)),)
    assert build(AGENT, LOADED, stale, [])["degraded"] == ["names"]
    assert exit_code(build(AGENT, LOADED, guarded, [], errors=["watching by polling: no CAP_BPF"])) == 0
    assert exit_code(_doc(degraded=["state"])) == 3  # an unguarded socket says more
    assert _doc(degraded=["state", "state"])["degraded"] == ["reload", "state"]


def test_text_fits_80_columns_and_escapes_what_processes_chose() -> None:
    text = render(_doc())
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "\x1b" not in text and "evil\\x1b[2J" in text
    assert "last reload (file, 2025-12-03T08:20:05Z) FAILED, old policy kept:\n  /etc/hosts.allow:3:7: expected a daemon list\n" in text
    assert "ssh (native, tcp/22): cbpf ssh-1, 1 socket, 9 refused\n" in text
    assert "  adopted   tcp 0.0.0.0:22 812/sshd:3\n" in text
    assert "  RETRYING  udp 0.0.0.0:53 no holder\n    EPERM: needs CAP_SYS_PTRACE (attempt 3, next 2025-12-03T08:20:00Z)\n" in text
    assert text.endswith("2 sockets NOT guarded\n")
    assert "bans: 2 (crowdsec 1, manual 1)\n" in text


def test_the_shipped_json_schema_is_the_schema_table() -> None:
    shipped = json.loads((Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())
    assert shipped == json_schema()
    assert shipped["properties"]["services"]["items"]["properties"]["sockets"]["items"]["required"][:3] == ["cookie", "proto", "family"]


def test_polling_says_what_it_cannot_see() -> None:
    import dataclasses

    polling = dataclasses.replace(AGENT, watch_mode="poll")
    good = build(polling, POLICY, (ServiceRow(SSH, T, (SocketRow(sock(1, 22, guard=ours(SSH)), "guarded", T),)),), [])
    assert render(good).endswith("every selected socket is guarded (polling: this network namespace only)\n")


def test_an_enrolled_daemon_without_a_listener_is_flagged_with_the_map_advice_but_not_in_the_exit_code() -> None:
    """inetd, xinetd or systemd socket activation hold the listener of the daemon they start:
    the daemon's own process never holds one, and status must not read as all guarded."""
    sshd = spec("sshd", Selector(daemon="sshd"), origin="hosts_access")
    held = ServiceRow(NGINX, T, (SocketRow(sock(1, 8080, guard=ours(NGINX)), "guarded", T),))
    doc = build(AGENT, LOADED, (ServiceRow(sshd, T), held, ServiceRow(SSH, T)), [])
    assert [s["no_listener"] for s in doc["services"]] == [True, False, False]  # a native service is not a daemon
    assert exit_code(doc) == 0
    text = render(doc)
    assert all(len(line) <= 80 for line in text.splitlines())
    words = " ".join(text.split())  # the line is wrapped to 80 columns
    assert "sshd (daemon sshd): cbpf sshd-1, 0 sockets no listening socket seen:" in words
    assert "map its port: --map sshd=tcp/PORT" in words and words.count("no listening socket seen") == 1


def test_an_impostor_is_listed_apart_and_not_in_the_exit_code() -> None:
    fake = holder("sshd", "sshd", 15285, 3, euid=65534, exe="/usr/bin/python3.11")
    doc = build(AGENT, LOADED, (ServiceRow(SSH, T, (SocketRow(sock(1, 22, guard=ours(SSH)), "guarded", T),)),), [],
                impostors=(ImpostorRow("sshd", sock(7, 2310, holders=(fake,))),))
    check(json.loads(json.dumps(doc)))
    assert doc["impostors"] == [{"service": "sshd", "proto": "tcp", "local": "0.0.0.0:2310", "holders": [
        {"pid": 15285, "comm": "sshd", "argv0": "sshd", "uid": 65534, "exe": "/usr/bin/python3.11"}]}]
    assert exit_code(doc) == 0 and doc["unguarded"] == 0
    words = " ".join(render(doc).split())
    assert "impostor (name only, not sshd, left alone): tcp 0.0.0.0:2310 15285/sshd uid 65534 exe /usr/bin/python3.11" in words
    assert words.endswith("every selected socket is guarded")


def test_a_locked_socket_with_our_earlier_program_reads_stale_not_unguarded_and_names_appear() -> None:
    stale = GuardState("sockgate", "ssh", "ssh-0", "cbpf", locked=True)
    why = "stale guard: locked (SO_LOCK_FILTER) with sockgate's earlier program (ssh ssh-0), which stays in force until the socket closes"
    rows = (ServiceRow(SSH, T, (SocketRow(sock(1, 22, guard=stale, holders=(holder("sshd", "sshd", 812, 3),)), "unguarded", None, why, 1),),
                       names=(NameRow("web.example.com", (), T + 60, False, "lookup failed (timed out): admits nobody"),)),)
    text = render(build(AGENT, POLICY, rows, []), width=200)
    assert "  STALE     tcp 0.0.0.0:22 812/sshd:3\n" in text and why in text
    assert "  host name web.example.com: no address (lookup failed (timed out): admits nobody)\n" in text


def test_a_super_servers_listener_says_why_its_daemon_is_not_settled() -> None:
    """A listener pid 1 holds where a systemd unit could not be read: status says which unit
    and why (the operator fixes that, not a --map)."""
    pid1 = holder("systemd", "systemd", 1, 40, euid=0)
    why = "systemd unit demo.socket: systemd drop-in /etc/x.conf unreadable: Permission denied"
    doc = build(AGENT, LOADED, (), [], superserved=(SuperservedRow(sock(7, 2323, holders=(pid1,)), why),))
    check(json.loads(json.dumps(doc)))
    assert doc["superserved"][0]["why"] == why
    words = " ".join(render(doc, width=400).split())
    assert f"not settled: {why}" in words
