"""The edge of host-name lookups without DNS (``agent/names.py``): /etc/hosts as the C
library's files backend reads it, the worker thread and its eventfd, and a resolver
configuration that cannot be used failing the lookup (never raising)."""

from __future__ import annotations

import ipaddress
import select
from pathlib import Path

from sockgate.agent.names import HostsFile, NameResolver

A = ipaddress.ip_address
HOSTS = """\
# comment
127.0.0.1   localhost
10.0.0.5    Web.SG.test web   # trailing comment
10.0.0.6    other.sg.test web.sg.test
fe80::1%eth0 link.sg.test
not-an-address bogus.sg.test
10.0.0.7
"""


def test_hosts_file_forward_and_reverse() -> None:
    h = HostsFile.parse(HOSTS)
    assert h.forward("web.sg.test") == ("web.sg.test", (A("10.0.0.5"), A("10.0.0.6")))
    assert h.forward("web") == ("web.sg.test", (A("10.0.0.5"),))  # an alias: its canonical name differs
    assert h.forward("link.sg.test") == ("link.sg.test", (A("fe80::1"),))
    assert h.forward("bogus.sg.test") is None and h.forward("nope") is None
    assert h.reverse(A("10.0.0.6")) == ("other.sg.test",) and h.reverse(A("10.0.0.7")) is None


def test_the_worker_answers_through_its_descriptor(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    r = NameResolver(str(tmp_path / "no-resolv.conf"), hosts=str(hosts), timeout=1.0)
    try:
        r.submit(["WEB.sg.test", "nowhere.sg.test"])
        got = {}
        for _ in range(10):
            if len(got) == 2:
                break
            assert select.select([r], [], [], 5)[0]
            got.update({a.name: a for a in r.results()})
    finally:
        r.close()
    web, nowhere = got["web.sg.test"], got["nowhere.sg.test"]
    assert web.lookup is not None and [x.address for x in web.lookup.addresses] == [A("10.0.0.5"), A("10.0.0.6")]
    assert [x.names for x in web.lookup.addresses] == [("web.sg.test",), ("other.sg.test",)]
    assert nowhere.lookup is None and nowhere.error and "no-resolv.conf" in nowhere.error
