"""proxy.log: the record formats, and proxy.limits staying free of I/O."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from sockgate.proxy.log import Log


def test_text_records_quote_only_what_needs_it() -> None:
    out = io.StringIO()
    log = Log("text", out)
    log.record("decision", service="web", peer="192.0.2.7:5", decision="deny", rule="p.conf:3", reason="matched p.conf:3: deny 192.0.2.0/24")
    log.record("close", service="web", peer="[2001:db8::1]:9", bytes_up=10, bytes_down=0, duration=0.5, end="closed", missing=None)
    log.flush()
    first, second = out.getvalue().splitlines()
    assert first.endswith(' event=decision service=web peer=192.0.2.7:5 decision=deny rule=p.conf:3 reason="matched p.conf:3: deny 192.0.2.0/24"')
    assert second.endswith(" event=close service=web peer=[2001:db8::1]:9 bytes_up=10 bytes_down=0 duration=0.5 end=closed")
    assert first[:4].isdigit() and first[10] == "T" and first.split()[0].endswith("Z")


def test_json_records_are_one_object_per_line() -> None:
    out = io.StringIO()
    log = Log("json", out)
    log.record("decision", service="s", peer="uid=0", decision="allow", rule="default", reason='with "quotes" = and spaces')
    log.notice("listening", addresses="tcp://127.0.0.1:1")  # notices flush at once
    lines = out.getvalue().splitlines()
    recs = [json.loads(x) for x in lines]
    assert recs[0]["reason"] == 'with "quotes" = and spaces' and recs[0]["event"] == "decision"
    assert recs[1] == {"time": recs[1]["time"], "event": "notice", "message": "listening", "addresses": "tcp://127.0.0.1:1"}


def test_records_wait_in_the_buffer_until_flushed() -> None:
    out = io.StringIO()
    log = Log("text", out, flush_interval=60)
    log.record("close", service="s")
    assert out.getvalue() == ""
    log.tick()
    assert out.getvalue() == ""
    log.flush()
    assert "event=close" in out.getvalue()


def test_limits_and_kernelrules_do_no_io() -> None:
    code = (
        "import sys; import sockgate.proxy.limits, sockgate.proxy.kernelrules\n"
        "bad = [m for m in ('socket', 'asyncio', 'ctypes', 'sockgate.linux') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
