"""A service restarted again and again while a denied host keeps knocking: each new socket is
guarded, no denied connection outlives its guard, and a scanner from the denied host sees the
port filtered.

The "host" is the server namespace of a netns lab (tests/support/netlab.py): the agent and the
service both run there (``nsenter --net``, so the cgroup2 tree and the lab's bpffs stay
visible), watching the agent lab's cgroup (tests/support/agentlab.py). The client namespace,
joined by veth, is two other hosts: 198.18.0.2 (denied) and 198.19.7.7 (allowed).

The denied host runs a bounded loop of TCP connects (a process in the client namespace) for the
whole test, so every restart's new listener is hammered from the moment it exists. The service
counts on its side what it accepted from the denied host and what is still open. The agent
guards a socket after the service's ``listen()`` (a few milliseconds later: the guard gap,
bench/bench_agent.py), so a handshake may complete in that gap and even be accepted; what the
agent promises is that such a connection is ended once the guard lands (``end_denied``), and
that is what is asserted: after each restart, once guarded, nothing from the denied host is
open. How many were accepted in gaps is printed (``-s``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from conftest import needs_agent, needs_netns, needs_tool
from kernel.test_nmap import nmap
from support import netlab
from support.agentlab import WAIT, Lab, Server, guarded_by, in_netns, until

pytestmark = [
    *needs_agent,
    needs_netns,
    needs_tool("nmap"),
    needs_tool("nsenter"),
]

PORT = 8022
RESTARTS = 50
ALLOWED = netlab.OTHER_HOST
KNOCKS = 100_000  # the denied loop's bound on attempts (it also stops when told, or after LOOP_S)
LOOP_S = 600.0
HOLD_S = 3 * WAIT  # a denied connection still open after this has survived its guard

# The service: listens on 0.0.0.0:PORT, prints {"pid","fd","t"}, accepts and echoes; counts the
# connections accepted from WATCHED and those of them still open; "report" on stdin prints
# {"accepted": N, "open": M}.
COUNTING = r"""
import json, os, select, socket, sys, time
port, watched = int(sys.argv[2]), "%s"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
bind_retry(s, port)
s.listen(64)
print(json.dumps({"pid": os.getpid(), "fd": s.fileno(), "t": time.monotonic()}), flush=True)
conns, accepted = {}, 0
while True:
    for x in select.select([sys.stdin, s, *conns], [], [])[0]:
        if x is sys.stdin:
            if not sys.stdin.readline():
                sys.exit(0)
            n = sum(1 for ip in conns.values() if ip == watched)
            print(json.dumps({"accepted": accepted, "open": n}), flush=True)
        elif x is s:
            c, peer = s.accept()
            conns[c] = peer[0]
            accepted += peer[0] == watched
        else:
            try:
                data = x.recv(2048)
                if data:
                    x.sendall(data)
            except OSError:  # ECONNABORTED / ECONNRESET: the agent ended it
                data = b""
            if not data:
                del conns[x]
                x.close()
"""

# The denied host: connect, send a byte, read the echo, then hold the connection until it is
# ended (or HOLD_S passes: it survived); again, until stdin closes, KNOCKS attempts or LOOP_S
# seconds. A connect whose SYN-ACK left in the gap but whose last ACK met the new filter (the
# listener's filter runs on it before the kernel makes the connection: tcp_v4_rcv) completes on
# this side only: nothing reaches the service, no echo ever comes, there is nothing on the server
# to end — "unanswered", not "survived". Prints {"attempts","connected","echoed","ended",
# "unanswered","survived"}.
KNOCKER = r"""
import json, select, socket, sys, time
src, dst, port, bound, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[6])
until = time.monotonic() + float(sys.argv[5])
n = dict(attempts=0, connected=0, echoed=0, ended=0, unanswered=0, survived=0)
while n["attempts"] < bound and time.monotonic() < until and not select.select([sys.stdin], [], [], 0)[0]:
    n["attempts"] += 1
    with socket.socket() as c:
        c.bind((src, 0))
        c.settimeout(0.05)
        try:
            c.connect((dst, port))
        except OSError:  # refused (no listener) or timed out (the SYN was dropped)
            time.sleep(0.001)
            continue
        n["connected"] += 1
        c.settimeout(hold)
        echoed = False
        try:
            c.sendall(b"d")
            echoed = c.recv(1) == b"d"
            n["echoed"] += echoed
            n["ended" if c.recv(1) == b"" else "survived"] += 1
        except TimeoutError:
            n["survived" if echoed else "unanswered"] += 1
        except OSError:  # ECONNRESET: ended
            n["ended"] += 1
print(json.dumps(n), flush=True)
"""


def test_fifty_restarts_under_a_denied_connect_loop(lab: netlab.Lab, agents: Lab) -> None:
    lab.add_client_addresses([ALLOWED])
    policy = agents.path("web.conf", f"service web tcp/{PORT} {{\n    allow {ALLOWED}\n    default deny\n}}\n")
    server_ns, client_ns = in_netns(lab.server.name), in_netns(lab.client.name)
    agent = agents.agent(policy, prefix=server_ns)
    knocker = subprocess.Popen([*client_ns, sys.executable, "-I", "-c", KNOCKER, lab.client_v4, lab.server_v4,
                                str(PORT), str(KNOCKS), str(LOOP_S), str(HOLD_S)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    gap_accepts = []
    try:
        for _ in range(RESTARTS):
            s = agents.server("tcp", PORT, prefix=server_ns, script=COUNTING % lab.client_v4)
            until("the new listener guarded", lambda: guarded_by(s.info, "web"))
            report = until("nothing from the denied host open", lambda: _closed(s))
            gap_accepts.append(report["accepted"])
            if len(gap_accepts) < RESTARTS:
                s.stop()
                agents.servers.remove(s)
        assert knocker.poll() is None, "the denied loop ended early: it knocked on too few restarts"
        assert knocker.stdin is not None and knocker.stdout is not None
        knocker.stdin.close()  # stop
        knocker.wait(HOLD_S + WAIT)
        out = knocker.stdout.read()
    finally:
        if knocker.poll() is None:
            os.killpg(knocker.pid, signal.SIGKILL)
            knocker.wait(WAIT)
        for pipe in (knocker.stdin, knocker.stdout):
            if pipe is not None:
                pipe.close()
    knocks = json.loads(out)
    assert knocks["attempts"] > RESTARTS  # it kept trying through every restart
    print(f"\n{RESTARTS} restarts: the denied host made {knocks['attempts']} attempts; {knocks['connected']} "
          f"handshakes completed in guard gaps ({knocks['echoed']} echoed), {knocks['ended']} ended by the agent, "
          f"{knocks['unanswered']} never reached the service, {knocks['survived']} survived; the service accepted {sum(gap_accepts)} (per restart at most "
          f"{max(gap_accepts)})")
    assert knocks["survived"] == 0
    assert knocks["ended"] + knocks["unanswered"] == knocks["connected"]
    assert _closed(s)
    assert nmap(lab, lab.client_v4, "-sS", "-p", str(PORT)) == {str(PORT): "filtered"}
    assert lab.exchange(ALLOWED, PORT, WAIT, b"a", 1) == b"a"  # the allowed host is echoed
    st = agent.status()
    assert st["unguarded"] == 0
    assert st["agent"]["counters"]["attached"] >= RESTARTS
    assert st["agent"]["counters"]["destroyed"] >= sum(gap_accepts)


def _closed(s: Server) -> dict[str, int] | None:
    """The service's report once nothing from the denied host is open on it."""
    r = s.ask("report")
    return r if r["open"] == 0 else None
