"""agent/control for real: a control server in this process, driven by its own selector from a
thread, answering a fake runtime. The socket file is 0660 root:group; root is answered; a
process running as nobody is refused by the file mode and, with the mode opened up, by the peer
check (one line, kind denied); a member of the group, by primary or supplementary gid, is
answered; a symlink planted at the socket path is replaced, not followed; a symlinked or
group-writable directory is refused; a second server on the path is refused while the first
runs, a stale socket file is replaced; oversized, garbage and NUL requests are answered with an
error and the server still serves; idle and surplus clients are closed (the idle timer armed on
the supervisor's loop by ``control.start``); a failing handler answers an error. The CLI (status, ban, unban) goes through the same socket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from typing import Any, Iterator

import pytest

from sockgate.agent import statusdoc
from sockgate.agent.client import AgentError, AgentUnreachable, call
from sockgate.agent.control import ControlServer, PeerCred, start
from sockgate.agent.model import GuardState
from sockgate.agent.protocol import Ban, Ping, Reload, Request, Response, Status, Unban, failure, ok
from sockgate.cli.main import main
from sockgate.errors import AdapterError
from sockgate.supervisor import SelectorLoop
from support.agentcore import SSH, holder, ours, sock
from support.layers import SRC

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="SO_PEERCRED and /proc/self/fd are Linux's"),
    pytest.mark.skipif(os.geteuid() != 0, reason="becoming nobody and giving the socket a group needs root"),
    pytest.mark.root,
]

GID = 4242  # a group with no name: the control group of these tests
NOBODY = 65534


class FakeRuntime:
    """Answers as the agent's runtime would, and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[Request, PeerCred]] = []

    def __call__(self, request: Request, peer: PeerCred) -> Response:
        self.asked.append((request, peer))
        match request.body:
            case Ping():
                return ok(request.id, {"pong": True})
            case Status():
                return ok(request.id, _status())
            case Ban(net=net):
                return ok(request.id, {"message": f"banned {net} on every service"})
            case Unban(net=net):
                return failure(request.id, "usage", f"{net} is not banned by manual")
            case Reload():
                raise RuntimeError("boom")
        return failure(request.id, "unsupported", "not here")


def _status() -> dict[str, Any]:
    t = 1_764_750_000.0
    agent = statusdoc.AgentInfo(os.getpid(), "0", t, "cbpf", "poll", "/x")
    policy = statusdoc.PolicyInfo("d", t, (), t, True, "start")
    rows = (statusdoc.ServiceRow(SSH, t, (statusdoc.SocketRow(sock(1, 22, guard=ours(SSH), holders=(holder("sshd", "sshd"),)), "guarded"),
                                          statusdoc.SocketRow(sock(2, 22, guard=GuardState("foreign", locked=True)), "unguarded",
                                                              error="carries a filter sockgate did not put there"))),)
    return statusdoc.build(agent, policy, rows, [])


class Running:
    """A control server on the supervisor's ``SelectorLoop`` (``control.start``), run by a thread
    until ``stop``."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        server.open()
        self.loop = SelectorLoop()
        self._r, self._w = os.pipe()
        self.loop.watch(self._r, self.loop.stop)
        self._cancel = start(server, self.loop)
        self._thread = threading.Thread(target=self.loop.run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        os.write(self._w, b"x")
        self._thread.join(10)
        assert not self._thread.is_alive()
        self._cancel()
        self.loop.close()
        self.server.close()
        os.close(self._r)
        os.close(self._w)


@pytest.fixture
def rundir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="sg-control-")
    os.chmod(d, 0o755)  # others may reach the socket; its own mode and the peer check decide
    yield d
    subprocess.run(["rm", "-rf", d], check=True)


@pytest.fixture
def agent(rundir: str) -> Iterator[tuple[str, FakeRuntime, Running]]:
    runtime = FakeRuntime()
    path = os.path.join(rundir, "agent.sock")
    running = Running(ControlServer(path, str(GID), runtime, idle=1.0, max_clients=4))
    try:
        yield path, runtime, running
    finally:
        running.stop()


CHILD = """
import json, os, sys
from sockgate.agent.client import AgentError, AgentUnreachable, call
from sockgate.agent.protocol import Status
uid, gid, groups, path = json.loads(sys.argv[1])
os.setgroups(groups); os.setgid(gid); os.setuid(uid)
assert os.geteuid() == uid
try:
    print(json.dumps({"ok": call(path, Status(), timeout=5).result is not None}))
except AgentError as e:
    print(json.dumps({"error": e.kind, "message": str(e)}))
except AgentUnreachable as e:
    print(json.dumps({"unreachable": str(e)}))
"""


def as_user(path: str, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
    """Ask for the status as ``uid``/``gid``/``groups`` (imports done as root: the interpreter may
    live where nobody can read)."""
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([uid, gid, groups, path])], capture_output=True, text=True,
                         timeout=30, env={"PYTHONPATH": str(SRC)})
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def answer(s: socket.socket) -> dict[str, Any]:
    """The next response line (read a byte at a time: the next one stays in the socket)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1)
        assert chunk, f"closed after {data!r}"
        data += chunk
    doc: dict[str, Any] = json.loads(data)
    return doc


def closed(s: socket.socket) -> bool:
    """The server closed ``s`` (an end of file, or a reset when it left input unread)."""
    try:
        return s.recv(10) == b""
    except ConnectionResetError:
        return True


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_the_socket_is_0660_of_the_group_and_root_is_answered(agent: tuple[str, FakeRuntime, Running], capsys: pytest.CaptureFixture[str]) -> None:
    path, runtime, _ = agent
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and (st.st_uid, st.st_gid) == (0, GID)
    assert call(path, Ping()).result == {"pong": True}
    assert runtime.asked[-1][1].uid == 0 and runtime.asked[-1][1].pid == os.getpid()
    assert main(["status", "--control", path]) == 3  # one socket is not guarded
    out = capsys.readouterr().out
    assert "  UNGUARDED tcp 0.0.0.0:22 no holder\n" in out and out.endswith("1 socket NOT guarded\n")
    assert main(["status", "--control", path, "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["unguarded"] == 1


def test_nobody_is_refused_by_the_mode_and_by_the_peer_check(agent: tuple[str, FakeRuntime, Running]) -> None:
    path, runtime, _ = agent
    assert as_user(path, NOBODY, NOBODY, []) == {"unreachable": f"no access to the agent at {path}: root or the control group only"}
    os.chmod(path, 0o666)  # a mode set wrong: the peer check still refuses
    assert as_user(path, NOBODY, NOBODY, []) == {"error": "denied", "message": f"uid {NOBODY} is not root and not in group {GID}"}
    assert [peer.uid for _, peer in runtime.asked] == []


def test_a_member_of_the_group_is_answered(agent: tuple[str, FakeRuntime, Running]) -> None:
    path, runtime, _ = agent
    assert as_user(path, NOBODY, NOBODY, [GID]) == {"ok": True}
    assert as_user(path, NOBODY, GID, []) == {"ok": True}
    assert [(p.uid, p.gid, p.groups) for _, p in runtime.asked] == [(NOBODY, NOBODY, (GID,)), (NOBODY, GID, ())]


def test_a_symlink_planted_at_the_socket_path_is_replaced_not_followed(rundir: str) -> None:
    victim = os.path.join(rundir, "victim")
    with open(victim, "w") as f:
        f.write("keep")
    path = os.path.join(rundir, "agent.sock")
    os.symlink(victim, path)
    running = Running(ControlServer(path, str(GID), FakeRuntime()))
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and read(victim) == "keep"
        assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644 and os.stat(victim).st_gid == 0
        assert call(path, Ping()).ok
    finally:
        running.stop()
    assert not os.path.lexists(path) and read(victim) == "keep"
    assert sorted(os.listdir(rundir)) == ["agent.lock", "victim"]


def test_a_symlinked_or_writable_directory_is_refused(rundir: str) -> None:
    real = os.path.join(rundir, "real")
    os.mkdir(real, 0o755)
    link = os.path.join(rundir, "link")
    os.symlink(real, link)
    with pytest.raises(AdapterError, match=f"^{link}: a symlink, not a directory: refusing to put the control socket there$"):
        ControlServer(os.path.join(link, "agent.sock"), None, FakeRuntime()).open()
    os.chmod(real, 0o777)
    with pytest.raises(AdapterError, match=f"^{real}: writable by group or others \\(mode 777\\)"):
        ControlServer(os.path.join(real, "agent.sock"), None, FakeRuntime()).open()
    assert os.listdir(real) == []


def test_a_second_server_is_refused_a_stale_socket_replaced(rundir: str) -> None:
    path = os.path.join(rundir, "agent.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # what a killed agent leaves
    first = Running(ControlServer(path, None, FakeRuntime()))
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600 and call(path, Ping()).ok
        with pytest.raises(AdapterError, match=f"^another agent runs \\(pid {os.getpid()}\\) with its control socket in {rundir}$"):
            ControlServer(path, None, FakeRuntime()).open()
        assert call(path, Ping()).ok  # the refused one removed nothing
    finally:
        first.stop()


def test_garbage_is_answered_and_the_server_still_serves(agent: tuple[str, FakeRuntime, Running]) -> None:
    path, _, _ = agent
    with raw(path) as s:
        s.sendall(b"not json\n")
        assert answer(s)["error"] == {"kind": "usage", "message": "not JSON: Expecting value: line 1 column 1 (char 0)"}
        s.sendall(b'{"v":1,"id":5,"op":"ping"}\0\n')
        assert answer(s)["error"]["message"] == "a request may not contain NUL"
        s.sendall(b'{"v":1,"id":6,"op":"ban","addr":"10.0.0.1/8"}\n')
        assert answer(s) == {"v": 1, "id": 6, "ok": False, "error": {"kind": "usage", "message": "10.0.0.1/8 has host bits set: did you mean 10.0.0.0/8?"}}
        s.sendall(b'{"v":1,"id":7,"op":"ping"}\n{"v":1,"id":8,"op":"ping"}\n')  # two in one write: two answers in turn
        assert answer(s)["id"] == 7 and answer(s)["id"] == 8
    with raw(path) as s:
        s.sendall(b"x" * 70_000)
        assert answer(s)["error"] == {"kind": "usage", "message": "a line is longer than 65536 bytes"}
        assert closed(s)
    assert call(path, Ping()).ok


def test_a_failing_handler_answers_an_error_and_the_server_goes_on(agent: tuple[str, FakeRuntime, Running]) -> None:
    path, _, _ = agent
    with pytest.raises(AgentError, match="^internal error RuntimeError: boom$"):
        call(path, Reload())
    assert call(path, Ping()).ok


def test_idle_and_surplus_clients_are_closed(agent: tuple[str, FakeRuntime, Running]) -> None:
    path, _, running = agent
    idle = [raw(path) for _ in range(4)]
    try:
        with raw(path) as extra:
            assert answer(extra)["error"] == {"kind": "runtime", "message": "too many control connections (at most 4)"}
        for s in idle:
            assert closed(s)  # after 1 s of silence (the recv waits at most 5 s)
    finally:
        for s in idle:
            s.close()
    assert call(path, Ping()).ok


def test_ban_and_unban_from_the_command_line(agent: tuple[str, FakeRuntime, Running], capsys: pytest.CaptureFixture[str]) -> None:
    path, runtime, _ = agent
    assert main(["ban", "192.0.2.0/24", "--for", "10m", "--service", "ssh", "--control", path]) == 0
    assert capsys.readouterr().out == "banned 192.0.2.0/24 on every service\n"
    body = runtime.asked[-1][0].body
    assert isinstance(body, Ban) and (str(body.net), body.seconds, body.service, body.origin) == ("192.0.2.0/24", 600, "ssh", "manual")
    assert main(["unban", "192.0.2.9", "--control", path]) == 2
    assert capsys.readouterr().err == "sockgate: 192.0.2.9/32 is not banned by manual\n"


def test_a_client_that_asks_without_reading_holds_neither_the_server_nor_memory(agent: tuple[str, FakeRuntime, Running]) -> None:
    path, runtime, _ = agent
    n = 600  # status answers of about 2 KB: more than the socket buffers hold
    with raw(path) as greedy:
        greedy.sendall(b"".join(b'{"v":1,"id":%d,"op":"status"}\n' % i for i in range(n)))
        assert call(path, Ping()).ok  # another client is served meanwhile
        assert len(runtime.asked) < n + 1  # the greedy one's requests wait for it to read
        with greedy.makefile("rb") as f:
            ids = [json.loads(f.readline())["id"] for _ in range(n)]
    assert ids == list(range(n))


def test_a_missing_directory_is_made_for_the_group(rundir: str) -> None:
    path = os.path.join(rundir, "run", "agent.sock")
    running = Running(ControlServer(path, str(GID), FakeRuntime()))
    try:
        st = os.lstat(os.path.dirname(path))
        assert stat.S_IMODE(st.st_mode) == 0o750 and (st.st_uid, st.st_gid) == (0, GID)
        assert as_user(path, NOBODY, NOBODY, [GID]) == {"ok": True}
        assert as_user(path, NOBODY, NOBODY, []) == {"unreachable": f"no access to the agent at {path}: root or the control group only"}
    finally:
        running.stop()


def test_a_socket_served_by_another_user_is_not_believed() -> None:
    """`--control` pointed into a directory a user may write: the user's own server there, answering
    like the agent, is refused by the client before anything it says is read."""
    where = tempfile.mkdtemp(prefix="sg-impostor-")
    os.chmod(where, 0o777)
    path = os.path.join(where, "agent.sock")
    serve = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1); print('ready', flush=True)\n"
             "c, _ = s.accept(); c.recv(4096)\n"
             "c.sendall(b'{\"id\": 0, \"result\": {\"message\": \"banned\"}}\\n')\n")
    p = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", serve, path],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        with pytest.raises(AgentUnreachable, match="served by uid 65534, not by root"):
            call(path, Status())
    finally:
        p.kill()
        p.wait()
        assert p.stdout is not None
        p.stdout.close()
        shutil.rmtree(where)
