"""The CrowdSec LAPI fixture works: it answers on its own port with keys it issued, cscli's
decisions reach the stream, and the process is gone afterwards, even when the test fails."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest

from support import crowdsec


def stream(lapi: crowdsec.Lapi, key: str, startup: bool) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", lapi.port, timeout=10)
    try:
        conn.request("GET", f"/v1/decisions/stream?startup={'true' if startup else 'false'}",
                     headers={"X-Api-Key": key})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if resp.status == 200 else {})
    finally:
        conn.close()


def values(batch: dict[str, object], part: str) -> set[str]:
    return {str(d["value"]) for d in batch.get(part) or []}  # type: ignore[attr-defined]


def test_the_lapi_answers_its_own_keys_only(lapi: crowdsec.Lapi) -> None:
    assert lapi.port != 8080 and lapi.config.parent == lapi.root
    key = lapi.bouncer_key("lab")
    assert stream(lapi, key, True)[0] == 200
    assert stream(lapi, "0" * 32, True)[0] == 403
    assert lapi.bouncer_key("lab2") != key


def test_cscli_decisions_reach_the_stream(lapi: crowdsec.Lapi) -> None:
    key = lapi.bouncer_key("lab")
    lapi.add("192.0.2.7", "1h")
    lapi.add("2001:db8::/48", "1h")
    _, batch = stream(lapi, key, True)
    assert values(batch, "new") == {"192.0.2.7", "2001:db8::/48"}
    lapi.delete("192.0.2.7")
    _, batch = stream(lapi, key, False)
    assert values(batch, "deleted") == {"192.0.2.7"}
    assert {d["value"] for d in lapi.decisions()} == {"2001:db8::/48"}


def test_state_survives_a_restart_on_the_same_port(lapi: crowdsec.Lapi) -> None:
    key = lapi.bouncer_key("lab")
    lapi.add("198.51.100.9", "1h")
    lapi.kill()
    assert not lapi.answers()
    lapi.start()
    assert lapi.answers()
    assert values(stream(lapi, key, True)[1], "new") == {"198.51.100.9"}


def test_the_process_is_stopped_even_when_the_test_fails(tmp_path: Path) -> None:
    if (reason := crowdsec.available()) is not None:
        pytest.skip(reason)
    pid = None
    with pytest.raises(ZeroDivisionError):
        with crowdsec.lapi(tmp_path / "lapi") as the_lapi:
            assert the_lapi.proc is not None
            pid = the_lapi.proc.pid
            1 / 0
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not the_lapi.answers()


def test_a_lapi_that_cannot_start_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    if (reason := crowdsec.available()) is not None:
        pytest.skip(reason)
    with crowdsec.lapi(tmp_path / "lapi", start=False) as the_lapi:
        the_lapi.config.write_text(the_lapi.config.read_text().replace("type: sqlite", "type: nosuchdb"))
        with pytest.raises(RuntimeError, match="did not become ready"):
            the_lapi.start(timeout=10)
        assert the_lapi.proc is None


def test_tls(tmp_path: Path) -> None:
    if (reason := crowdsec.available()) is not None:
        pytest.skip(reason)
    tls = crowdsec.make_tls(tmp_path / "tls")
    with crowdsec.lapi(tmp_path / "lapi", tls=tls) as the_lapi:
        assert the_lapi.url.startswith("https://") and the_lapi.answers()
        the_lapi.add("192.0.2.1")  # cscli logs in over TLS
        assert [d["value"] for d in the_lapi.decisions()] == ["192.0.2.1"]
