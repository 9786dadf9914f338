"""A real CrowdSec Local API for tests: Debian's ``crowdsec`` run as a LAPI only (``-no-cs``) on
127.0.0.1, on a free port, from a directory of its own.

Everything lives under that directory — ``config.yaml``, the machine credentials cscli uses,
the SQLite file, the log — so a test neither reads nor changes /etc/crowdsec, and the package's
own service (port 8080) is never involved. Nothing online is configured: no ``online_client``
(Central API), no hub, no console, no Prometheus listener, since only the package registries are
reachable from here.

``cscli -c CONFIG`` manages it as an operator would: ``bouncers add`` writes straight into the
database; ``decisions add/delete`` go through the running LAPI with the machine login made at
set-up (as ``cscli`` does on a real host). Readiness is the HTTP endpoint answering, polled
within a bound, never a sleep; the process is stopped (SIGTERM, then SIGKILL) even when the test
fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from support import netlab

CROWDSEC = "crowdsec"
CSCLI = "cscli"
READY_TIMEOUT = 30.0  # seconds: start-up on a loaded 2-core machine stays well under this
CSCLI_TIMEOUT = 60.0
CSCLI_TRIES = 5


def available() -> str | None:
    """Why a LAPI cannot be started here, or None."""
    missing = [t for t in (CROWDSEC, CSCLI) if shutil.which(t) is None]
    return f"needs {' and '.join(missing)} (Debian's crowdsec; make setup installs it)" if missing else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    """Server certificate and key for the LAPI, and the CA file a client trusts."""

    cert: Path
    key: Path
    ca: Path


def make_tls(root: Path) -> Tls:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl, no network)."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (root / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = root / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=sockgate test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return Tls(cert, key, ca)


def _q(value: object) -> str:
    return json.dumps(str(value))  # a JSON string is a YAML string


def config_text(root: Path, port: int, tls: Tls | None, host: str = "127.0.0.1") -> str:
    tls_part = f"    tls:\n      cert_file: {_q(tls.cert)}\n      key_file: {_q(tls.key)}\n" if tls else ""
    return f"""\
common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: {_q(root)}
config_paths:
  config_dir: {_q(str(root) + "/")}
  data_dir: {_q(str(root / "data") + "/")}
  simulation_path: {_q(root / "simulation.yaml")}
  hub_dir: {_q(str(root / "hub") + "/")}
  index_path: {_q(root / "hub" / ".index.json")}
  notification_dir: {_q(str(root / "notifications") + "/")}
  plugin_dir: "/usr/lib/crowdsec/plugins/"
crowdsec_service:
  acquisition_path: {_q(root / "acquis.yaml")}
  parser_routines: 1
cscli:
  output: human
  color: "no"
db_config:
  log_level: info
  type: sqlite
  db_path: {_q(root / "data" / "crowdsec.db")}
  use_wal: true
  flush:
    max_items: 5000
    max_age: 7d
api:
  client:
    insecure_skip_verify: {"true" if tls else "false"}
    credentials_path: {_q(root / "local_api_credentials.yaml")}
  server:
    log_level: info
    listen_uri: "{host}:{port}"
    profiles_path: {_q(root / "profiles.yaml")}
{tls_part}    trusted_ips:
      - {host}
      - ::1
prometheus:
  enabled: false
  level: full
  listen_addr: 127.0.0.1
  listen_port: 0
"""


PROFILES = """\
name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: 4h
on_success: break
"""


class Lapi:
    """One LAPI process and the cscli that manages it. Use ``lapi()``, which always cleans up.
    ``netns``: run it (and cscli) in that network namespace (``ip netns`` name), listening on
    ``host`` there — the LAPI of a simulated fleet (tests/support/fleet.py)."""

    def __init__(self, root: Path, tls: Tls | None = None, port: int | None = None,
                 host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.root = root
        self.tls = tls
        self.host = host
        self.netns = netns
        self.prefix: tuple[str, ...] = () if netns is None else ("nsenter", f"--net=/var/run/netns/{netns}")
        self.port = port or free_port()
        self.config = root / "config.yaml"
        self.log = root / "lapi.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.locked = 0  # cscli commands run again after "database is locked"
        for d in ("data", "hub", "notifications"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "simulation.yaml").write_text("simulation: off\n")
        (root / "profiles.yaml").write_text(PROFILES)
        (root / "acquis.yaml").write_text("")
        self._write_config()
        password = secrets.token_hex(16)
        self.cscli("machines", "add", "sockgate-test", "--password", password,
                   "-f", str(root / "local_api_credentials.yaml"), "-u", self.url)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def _write_config(self) -> None:
        self.config.write_text(config_text(self.root, self.port, self.tls, self.host))
        creds = self.root / "local_api_credentials.yaml"
        if creds.exists():  # the machine login follows the port
            lines = [f"url: {self.url}" if ln.startswith("url:") else ln for ln in creds.read_text().splitlines()]
            creds.write_text("\n".join(lines) + "\n")

    # -- the process ---------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the LAPI and return once it answers HTTP; a port taken meanwhile is retried
        on another one (the port was free when chosen, but not reserved)."""
        assert self.proc is None, "already running"
        for attempt in range(3):
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([*self.prefix, CROWDSEC, "-c", str(self.config), "-no-cs", "-info"],
                                             stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                             start_new_session=True)
            if self._wait_ready(timeout):
                return
            self._reap()
            if attempt < 2 and "address already in use" in self.log_text():
                self.port = free_port()
                self._write_config()
                continue
            break
        raise RuntimeError(f"the CrowdSec LAPI did not become ready on {self.url}:\n{self.log_text()[-3000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            if self.answers():
                return True
            time.sleep(0.05)
        return False

    def answers(self) -> bool:
        """Whether the LAPI answers an HTTP request (any status: 403 without a key is fine)."""
        return self._answers() if self.netns is None else netlab.inside(self.netns, self._answers)

    def _answers(self) -> bool:
        conn: http.client.HTTPConnection
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca))
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=2, context=ctx)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
        try:
            conn.request("GET", "/v1/decisions/stream")
            return conn.getresponse().status > 0
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; no-op when not running."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shut-down."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- the operator's side ---------------------------------------------------------------

    def cscli(self, *args: str) -> str:
        """``cscli ARGS``; run again, as an operator would, while the LAPI answers "database is
        locked" (SQLite admits one writer, and every bouncer's pull writes its last-pull time),
        at most ``CSCLI_TRIES`` times — counted in ``locked``."""
        for attempt in range(CSCLI_TRIES):
            out = subprocess.run([*self.prefix, CSCLI, "-c", str(self.config), *args], capture_output=True, text=True,
                                 timeout=CSCLI_TIMEOUT, cwd=self.root)
            if out.returncode == 0:
                return out.stdout
            if "database is locked" not in out.stderr or attempt == CSCLI_TRIES - 1:
                break
            self.locked += 1
        raise RuntimeError(f"cscli {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")

    def bouncer_key(self, name: str, key: str | None = None) -> str:
        """Register a bouncer and return its API key (``cscli bouncers add NAME -o raw``);
        ``key`` registers that key (``-k``), as a second LAPI of a fleet would."""
        key = self.cscli("bouncers", "add", name, "-o", "raw", *(("-k", key) if key else ())).strip()
        assert key and "\n" not in key, key
        return key

    def add(self, target: str, duration: str = "4h", type: str = "ban") -> None:
        """``cscli decisions add --ip|--range TARGET --duration D --type T``."""
        self.cscli("decisions", "add", _flag(target), target, "--duration", duration, "--type", type,
                   "--reason", "sockgate test")

    def delete(self, target: str) -> None:
        """``cscli decisions delete --ip|--range TARGET``: every decision on it."""
        self.cscli("decisions", "delete", _flag(target), target)

    def alerts(self) -> list[dict[str, object]]:
        raw = self.cscli("alerts", "list", "-o", "json")
        found = json.loads(raw) if raw.strip() else None
        return [self.alert(int(a["id"])) for a in found or []]

    def alert(self, ident: int) -> dict[str, object]:
        out: dict[str, object] = json.loads(self.cscli("alerts", "inspect", str(ident), "-o", "json"))
        return out

    def decisions(self) -> list[dict[str, object]]:
        raw = self.cscli("decisions", "list", "-o", "json")
        alerts = json.loads(raw) if raw.strip() else None
        return [d for a in alerts or [] for d in a.get("decisions") or []]


HUB = Path("/usr/share/crowdsec/hub")  # Debian's offline hub
HUB_PARSERS = ("parsers/s00-raw/crowdsecurity/syslog-logs.yaml", "parsers/s02-enrich/crowdsecurity/dateparse-enrich.yaml")
PATTERNS = Path("/etc/crowdsec/patterns")


def install_items(lapi: Lapi, contrib: Path) -> None:
    """Put the syslog and date parsers of Debian's offline hub, the grok patterns, and
    ``contrib``'s parsers and scenarios into the LAPI's config directory (copies: local items,
    no hub download)."""
    for rel in HUB_PARSERS:
        stage = rel.split("/")[1]
        (lapi.root / "parsers" / stage).mkdir(parents=True, exist_ok=True)
        shutil.copy(HUB / rel, lapi.root / "parsers" / stage / Path(rel).name)
    shutil.copytree(PATTERNS, lapi.root / "patterns", dirs_exist_ok=True)
    shutil.copytree(contrib, lapi.root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("acquis.d"))
    index = lapi.root / "hub" / ".index.json"
    if not index.exists():
        index.symlink_to(HUB / ".index.json")


def replay(lapi: Lapi, log: Path, kind: str = "syslog") -> str:
    """Run the CrowdSec agent once over ``log`` (``crowdsec -dsn file://LOG -type KIND -no-api``,
    its time-machine mode), sending its alerts to ``lapi``; returns its output."""
    out = subprocess.run([CROWDSEC, "-c", str(lapi.config), "-dsn", f"file://{log}", "-type", kind, "-no-api", "-info"],
                         capture_output=True, text=True, timeout=CSCLI_TIMEOUT, cwd=lapi.root)
    if out.returncode != 0:
        raise RuntimeError(f"crowdsec replay failed ({out.returncode}): {(out.stdout + out.stderr)[-3000:]}")
    return out.stdout + out.stderr


def _flag(target: str) -> str:
    return "--range" if "/" in target else "--ip"


@contextlib.contextmanager
def lapi(root: Path, tls: Tls | None = None, start: bool = True, port: int | None = None,
         host: str = "127.0.0.1", netns: str | None = None) -> Iterator[Lapi]:
    """A LAPI in ``root``, started (unless ``start`` is False) and always stopped."""
    the_lapi = Lapi(root, tls, port, host, netns)
    try:
        if start:
            the_lapi.start()
        yield the_lapi
    finally:
        the_lapi.stop()
