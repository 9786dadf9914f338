"""The proxy's pinning when the kernel refuses it (``Proxy._pin``, ``_steer``): the worker
says so and serves unpinned and unsteered — a listener is never left half-configured, and a
CPU list that is not one CPU per worker is refused before anything starts."""

from __future__ import annotations

import io
import json
import socket

import pytest

from sockgate.errors import AdapterError, UsageError
from sockgate.linux import cpus
from sockgate.linux.listen import Listener
from sockgate.log import Log
from sockgate.policy.parser import parse_policy
from sockgate.proxy.server import Proxy
from sockgate.proxy.spec import ProxySpec
from sockgate.urls import parse_url


def _proxy(out: io.StringIO, workers: int = 2, cpu_list: tuple[int, ...] = (0, 1), accept: bool = True) -> Proxy:
    svc = parse_policy("service web {\n allow all\n}\n", "p.conf").services[0]
    plan = ProxySpec(svc, (parse_url("tcp://127.0.0.1:0"),), parse_url("tcp://127.0.0.1:9"))
    return Proxy([plan], log=Log("json", out), workers=workers, cpus=cpu_list, accept_by_cpu=accept)


def test_a_refused_pin_is_logged_and_nothing_is_steered(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    p = _proxy(out)
    steered: list[int] = []

    def refuse(cpu: int) -> None:
        raise AdapterError(f"pin to CPU {cpu}: invalid argument")

    monkeypatch.setattr(cpus, "pin", refuse)
    monkeypatch.setattr(cpus, "steer", lambda sock, cpu: steered.append(cpu))
    p.worker_index = 1
    p._pin(1)
    with socket.socket() as s:
        p._steer([Listener(parse_url("tcp://127.0.0.1:0?reuseport=1"), s)])
    p.log.flush()
    rec = json.loads(out.getvalue().splitlines()[-1])
    assert rec["event"] == "error" and "worker 1: not pinned: pin to CPU 1" in rec["message"]
    assert p.cpu is None and steered == []


def test_a_refused_steer_is_logged_and_the_listener_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    p = _proxy(out)
    monkeypatch.setattr(cpus, "pin", lambda cpu: None)

    def refuse(sock: socket.socket, cpu: int) -> None:
        raise AdapterError(f"SO_INCOMING_CPU {cpu}: operation not permitted")

    monkeypatch.setattr(cpus, "steer", refuse)
    p._pin(0)
    with socket.socket() as s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        tcp = Listener(parse_url("tcp://127.0.0.1:0?reuseport=1"), s)
        p._steer([tcp, Listener(parse_url("udp://127.0.0.1:0?reuseport=1"), u)])
        assert s.fileno() >= 0  # kept, serving unsteered
    p.log.flush()
    errors = [json.loads(line) for line in out.getvalue().splitlines() if '"error"' in line]
    assert len(errors) == 1 and "not steered: SO_INCOMING_CPU 0" in errors[0]["message"]  # the TCP one only


@pytest.mark.parametrize(("workers", "cpu_list"), [(2, (0,)), (1, (0, 1)), (3, (0, 1))])
def test_a_cpu_list_not_one_per_worker_is_refused(workers: int, cpu_list: tuple[int, ...]) -> None:
    with pytest.raises(UsageError, match="one each"):
        _proxy(io.StringIO(), workers, cpu_list)
