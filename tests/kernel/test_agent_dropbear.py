"""A real daemon that does not link libwrap, guarded by the agent from the hosts.allow /
hosts.deny pair that names it: the silent fail-open of TCP Wrappers, closed.

dropbear (Debian's ``dropbear-bin``: the server binary without an init script or unit, so its
install starts nothing; ``make setup`` installs it) is checked with ``ldd`` to load no
libwrap, so its own hosts_access check does not exist: without sockgate, ``dropbear: ...`` in
hosts.allow protects nothing. It runs as root on a test port in the server namespace of a netns
lab, in the agent lab's cgroup; the agent runs in the same namespace (``nsenter --net``) with
only the two files. From the client namespace, 198.18.0.2 (denied by hosts.deny's ``ALL: ALL``)
gets nothing — nmap says filtered — and 198.19.7.7 (allowed by hosts.allow) gets dropbear's SSH
banner. The daemon is then restarted (a new pid, new sockets) and guarded again by its event.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from conftest import needs_agent, needs_netns, needs_tool
from kernel.test_nmap import nmap
from support import netlab
from support.agentlab import WAIT, Lab, Server, guard, in_netns, until

pytestmark = [
    *needs_agent,
    needs_netns,
    needs_tool("dropbear"),
    needs_tool("dropbearkey"),
    needs_tool("ldd"),
    needs_tool("ss"),
    needs_tool("nmap"),
    needs_tool("nsenter"),
]

PORT = 2222
ALLOWED = netlab.OTHER_HOST


def listeners(lab: netlab.Lab, port: int) -> list[tuple[int, int]]:
    """(pid, fd) of every process holding a TCP listener on ``port`` in the server namespace."""
    out = lab.server.run("ss", "-Htlnp", f"sport = :{port}").stdout
    # (ss pads its lines with blanks when not on a terminal: read the pid=,fd= pairs only)
    return [(int(pid), int(fd)) for line in out.splitlines() if "users:(" in line
            for pid, fd in re.findall(r"pid=(\d+),fd=(\d+)", line.split("users:(", 1)[1])]


def dropbear(agents: Lab, lab: netlab.Lab, key: str) -> tuple[Server, list[tuple[int, int]]]:
    """dropbear in the foreground on PORT (IPv4 and IPv6), in the server namespace and the agent
    lab's cgroup; with its listeners once both are up."""
    exe = shutil.which("dropbear")
    assert exe is not None
    argv = [*in_netns(lab.server.name), exe, "-F", "-E", "-s", "-p", str(PORT), "-r", key,
            "-P", agents.path("dropbear.pid")]
    d = Server(agents.spawn(argv), {}, agents.path(f"server-{len(agents.servers)}.log"))
    agents.servers.append(d)

    def up() -> list[tuple[int, int]] | None:
        assert d.proc.poll() is None, f"dropbear exited ({d.proc.returncode})"
        found = [(pid, fd) for pid, fd in listeners(lab, PORT) if pid == d.proc.pid]
        return found if len(found) == 2 else None

    return d, until("dropbear listens on IPv4 and IPv6", up)


def banner_from(lab: netlab.Lab, src: str, timeout: float) -> bytes:
    """The first bytes the server sends to a client at ``src``; b"" when the connect times out."""
    return lab.exchange(src, PORT, timeout) or b""


def all_guarded(found: list[tuple[int, int]]) -> bool:
    return all((g := guard(pid, fd)).state == "sockgate" and g.service == "dropbear" for pid, fd in found)


def test_dropbear_without_libwrap_is_guarded_from_hosts_allow(lab: netlab.Lab, agents: Lab) -> None:
    exe = shutil.which("dropbear")
    assert exe is not None
    linked = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True, timeout=WAIT).stdout
    assert "libdl" in linked or "libc.so" in linked, linked  # ldd read it
    assert "libwrap" not in linked, f"{exe} links libwrap: it would enforce hosts.allow itself"
    lab.add_client_addresses([ALLOWED])
    key = agents.path("dropbear_ed25519_host_key")
    subprocess.run(["dropbearkey", "-t", "ed25519", "-f", key], capture_output=True, check=True, timeout=30)

    first, found = dropbear(agents, lab, key)  # before the agent: found by its scan
    assert not all_guarded(found)
    assert banner_from(lab, lab.client_v4, WAIT).startswith(b"SSH-2.0-dropbear")  # open to all, unguarded
    agent = agents.hosts_agent(f"dropbear: {ALLOWED}\n", prefix=in_netns(lab.server.name))
    until("dropbear's listeners guarded", lambda: all_guarded(found))
    assert banner_from(lab, ALLOWED, WAIT).startswith(b"SSH-2.0-dropbear")
    assert banner_from(lab, lab.client_v4, 0.5) == b""
    assert nmap(lab, lab.client_v4, "-sS", "-p", str(PORT)) == {str(PORT): "filtered"}
    assert nmap(lab, ALLOWED, "-sS", "-p", str(PORT)) == {str(PORT): "open"}

    first.stop()  # a restart: a new process, new sockets, seen by their listen events
    agents.servers.remove(first)
    second, found = dropbear(agents, lab, key)
    until("the restarted dropbear's listeners guarded", lambda: all_guarded(found))
    assert banner_from(lab, lab.client_v4, 0.5) == b""
    assert banner_from(lab, ALLOWED, WAIT).startswith(b"SSH-2.0-dropbear")
    st = agent.status()
    assert [s["name"] for s in st["services"]] == ["dropbear"]
    assert st["unguarded"] == 0
    assert st["agent"]["counters"]["attached"] == 4
