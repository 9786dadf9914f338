"""A socket its holder locked (SO_LOCK_FILTER) after the agent guarded it, then a reload: the
kernel keeps the earlier program, and ``status`` says so — a stale guard naming that program,
``STALE`` in the text — rather than a plain "unguarded", which would read as unfiltered."""

from __future__ import annotations

import json
import subprocess
import sys

from kernel.test_agent import BASE, Lab, guard, guarded_by, lab, native, until  # noqa: F401
from support.agentlab import joining
from support.children import reap

# Listens on 0.0.0.0:PORT, prints {"pid","fd"}, and locks its socket's filter on "lock".
LOCKER = r"""
import json, os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print(json.dumps({"pid": os.getpid(), "fd": s.fileno()}), flush=True)
for line in sys.stdin:
    s.setsockopt(socket.SOL_SOCKET, 44, 1)
    print("locked", flush=True)
"""


def test_a_locked_socket_with_the_earlier_program_is_a_stale_guard(lab: Lab) -> None:
    port = BASE + 3
    policy = native(lab, port)
    agent = lab.agent(policy, "--backend", "cbpf")  # a stale *classic* program (eBPF: test_agent's adoption)
    p = subprocess.Popen([sys.executable, "-I", "-c", LOCKER, str(port)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, preexec_fn=joining(lab.cgroup))
    try:
        assert p.stdin is not None and p.stdout is not None
        info = json.loads(p.stdout.readline())
        before = until("guarded", lambda: guarded_by(info, "web"))
        p.stdin.write("lock\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "locked"
        native(lab, port, allow="127.0.0.3")  # the policy changes (the file is watched)

        def reported() -> dict[str, object] | None:
            rows = [k for s in agent.status()["services"] for k in s["sockets"] if k["state"] not in ("guarded", "adopted")]
            return rows[0] if rows else None

        row = until("the locked socket reported", reported)
        assert row["guard"] == {"state": "sockgate", "service": "web", "digest": before.digest, "backend": "cbpf",
                                "locked": True}, row
        assert str(row["error"]).startswith(f"stale guard: locked (SO_LOCK_FILTER) with sockgate's earlier program (web {before.digest})")
        assert guard(info["pid"], info["fd"]).digest == before.digest
        text = subprocess.run([sys.executable, "-m", "sockgate", "status", "--control", agent.control],
                              capture_output=True, text=True, check=False)
        assert f"  STALE     tcp 0.0.0.0:{port}" in text.stdout and text.returncode == 3, text.stdout
    finally:
        reap([p])
