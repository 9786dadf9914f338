"""agent/enrol: daemons by literal name and --map only (ALL never enrols), processes by argv[0]
basename then comm (15 bytes), case-folded as libwrap compares; selection's precedence."""

from __future__ import annotations

import pytest

from sockgate.agent.enrol import Conflict, comm_name, daemon_names, enrollable, process_matches, select
from sockgate.agent.model import Endpoint, Selector
from support.agentcore import DNS, NGINX, SSH, desired, holder, sock, spec


def test_daemon_names_are_the_literal_names_and_the_maps_each_once() -> None:
    maps = {"dropbear": (Endpoint("tcp", 2222, 2222),), "SSHD": (Endpoint("tcp", 22, 22),)}
    assert daemon_names(["sshd", "in.ftpd", "sshd"], maps) == ("sshd", "in.ftpd", "dropbear")


@pytest.mark.parametrize("name", ["ALL", "all", "LOCAL", "KNOWN", "UNKNOWN", "PARANOID", "ssh*", "s?hd", ".example",
                                  "in.", "sshd@10.0.0.1", "", "a b", "x\0y"])
def test_keywords_wildcards_and_odd_names_never_enrol(name: str) -> None:
    assert not enrollable(name)
    assert daemon_names([name], {}) == ()


def test_all_in_a_map_enrols_nothing_either() -> None:
    assert daemon_names([], {"ALL": (Endpoint("tcp", 1, 65535),)}) == ()


def test_process_matches_argv0_basename_case_folded() -> None:
    assert process_matches("sshd", holder("sshd", "sshd"))
    assert process_matches("SSHD", holder("other", "sshd"))
    assert not process_matches("sshd", holder("nginx", "nginx"))


def test_comm_fallback_for_setproctitle_and_unreadable_cmdlines() -> None:
    assert process_matches("sshd", holder("sshd", "sshd: /usr/sbin/sshd -D [listener]"))
    assert process_matches("sshd", holder("sshd", None))
    assert not process_matches("sshd", holder("bash", None))


def test_comm_is_the_first_15_bytes_of_the_name() -> None:
    long = "a-very-long-daemon-name"
    assert comm_name(long) == "a-very-long-dae"
    assert process_matches(long, holder("a-very-long-dae", None))
    assert not process_matches("a-very-long-dae", holder("x", "a-very-long-daemon-name"))
    assert comm_name("ééééééééé") == "ééééééé\udcc3"  # cut inside a character, as the kernel cuts bytes


def test_select_by_native_endpoint_whoever_holds_it() -> None:
    d = desired(SSH, DNS, NGINX)
    assert select(d, sock(1, 22, holders=(holder("nginx", "nginx"),))) == SSH.want
    assert select(d, sock(2, 53, "udp")) == DNS.want
    assert select(d, sock(3, 53, "tcp")) is None


def test_select_by_map_then_by_holder() -> None:
    d = desired(SSH, NGINX)
    assert select(d, sock(1, 8080)) == NGINX.want
    assert select(d, sock(2, 9999, holders=(holder("nginx", "nginx"),))) == NGINX.want
    assert select(d, sock(3, 9999, holders=(holder("apache2", "apache2"),))) is None


def test_native_wins_over_a_daemon_holding_its_port() -> None:
    assert select(desired(SSH, NGINX), sock(1, 22, holders=(holder("nginx", "nginx"),))) == SSH.want


def test_two_daemons_holding_one_socket_conflict() -> None:
    other = spec("dropbear", Selector(daemon="dropbear"), origin="hosts_access")
    got = select(desired(NGINX, other), sock(1, 9999, holders=(holder("nginx", "nginx"), holder("dropbear", "dropbear", pid=7))))
    assert got == Conflict(("dropbear", "nginx"))
    assert got.reason == "claimed by services dropbear, nginx: not guarded until one of them lets go"
