"""agent/enrol: daemons by literal name and --map only (ALL never enrols), processes by argv[0]
basename then comm (15 bytes), case-folded as libwrap compares; selection's precedence."""

from __future__ import annotations

import pytest

from hypothesis import given, strategies as st

from sockgate.agent.enrol import (Conflict, comm_name, daemon_names, enrollable, impostor, impostor_of, plausible,
                                  process_matches, select)
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


# -- a name alone is not the daemon (any user may write it into /proc/self/comm or argv[0]) --------


def test_a_user_process_that_took_the_name_is_an_impostor_not_enrolled() -> None:
    fake = holder("sshd", "sshd", euid=65534, exe="/usr/bin/python3.11", exe_root_owned=True)
    assert not process_matches("sshd", fake)
    assert impostor("sshd", fake)
    assert select(desired(spec("sshd", Selector(daemon="sshd"), origin="hosts_access")),
                  sock(1, 2310, holders=(fake,))) is None


def test_root_or_a_root_owned_executable_of_that_name_is_the_daemon() -> None:
    assert process_matches("sshd", holder("sshd", euid=0))
    dropped = holder("sshd", euid=105, exe="/usr/sbin/sshd", exe_root_owned=True)
    assert process_matches("sshd", dropped) and not impostor("sshd", dropped)


@pytest.mark.parametrize("exe,owned", [("/home/u/sshd", False), (None, True), ("/usr/sbin/sshd-not", True),
                                       ("/usr/sbin/sshd (deleted)", True)])
def test_an_unprivileged_holder_without_a_trusted_executable_is_not_enrolled(exe: str | None, owned: bool) -> None:
    h = holder("sshd", "sshd", euid=1000, exe=exe, exe_root_owned=owned)
    assert not plausible("sshd", h) and impostor("sshd", h)


@given(st.integers(min_value=1, max_value=2**32 - 1), st.one_of(st.none(), st.text(max_size=40)), st.booleans(),
       st.integers(min_value=0, max_value=65533))
def test_no_unprivileged_holder_is_enrolled_unless_a_system_account_runs_roots_executable_of_that_name(
        euid: int, exe: str | None, owned: bool, sys_uid_max: int) -> None:
    # The rule changed (REVIEW4 N2): a root-owned executable of the daemon's name enrols only a
    # system account's process; any user may run /usr/sbin/dropbear with an LD_PRELOAD of theirs.
    h = holder("sshd", "sshd", euid=euid, exe=exe, exe_root_owned=owned)
    trusted = owned and exe is not None and exe.rsplit("/", 1)[-1].lower() == "sshd" and euid <= sys_uid_max
    assert process_matches("sshd", h, sys_uid_max) == trusted
    assert impostor("sshd", h, sys_uid_max) == (not trusted)


def test_a_regular_user_running_the_daemons_own_binary_is_an_impostor() -> None:
    user = holder("dropbear", "dropbear", euid=1000, exe="/usr/sbin/dropbear", exe_root_owned=True)
    service = spec("dropbear", Selector(daemon="dropbear"), origin="hosts_access")
    assert impostor("dropbear", user) and not process_matches("dropbear", user)
    assert select(desired(service), sock(1, 2399, holders=(user,))) is None
    assert impostor_of(desired(service), sock(1, 2399, holders=(user,))) == "dropbear"
    system = holder("dropbear", "dropbear", euid=999, exe="/usr/sbin/dropbear", exe_root_owned=True)
    assert select(desired(service), sock(1, 2399, holders=(system,))) == service.want
    assert process_matches("dropbear", user, sys_uid_max=1000)  # the host's login.defs decides


def test_an_unreadable_uid_is_not_root() -> None:
    assert not process_matches("sshd", holder("sshd", euid=None))


def test_impostor_of_names_the_daemon_whose_name_was_taken_only_when_nothing_selects_the_socket() -> None:
    sshd = spec("sshd", Selector(daemon="sshd"), origin="hosts_access")
    fake = holder("sshd", "sshd", euid=1000, exe="/usr/bin/python3")
    assert impostor_of(desired(sshd), sock(1, 2310, holders=(fake,))) == "sshd"
    assert impostor_of(desired(sshd), sock(1, 2310, holders=(holder("sshd", euid=0),))) is None
    assert impostor_of(desired(sshd, SSH), sock(1, 22, holders=(fake,))) is None  # selected by its port: guarded
    assert impostor_of(desired(sshd), sock(1, 2310, holders=(holder("nginx", euid=1000),))) is None
