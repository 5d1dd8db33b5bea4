"""Real nginx in front of real replicas, for tests: deploy/nginx/lipsync.conf (what compose runs) on a free
loopback port, with compose's upstream block (deploy/nginx/upstream-compose.conf) pointed at the given
`host:port`s, both in a conf.d folder included as compose's nginx includes deploy/nginx/. Config, pid, logs
and buffered bodies live in one folder: the caller's, or a temporary one removed on stop. Runs as root
(workers stay root: they must write that folder) and as any other user.

    with Nginx(["127.0.0.1:8001", "127.0.0.1:8002"]) as nginx:
        urllib.request.urlopen(f"{nginx.url}/health")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import ROOT, process
from harness.gunicorn import free_port

SITE = ROOT / "deploy" / "nginx" / "lipsync.conf"
UPSTREAM = ROOT / "deploy" / "nginx" / "upstream-compose.conf"  # compose's replicas: their lines become ours
LISTEN = "listen 8080;"  # the site's own listen line, replaced by a loopback port here
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # every *_temp_path of the http module
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0  # per signal: SIGQUIT (graceful), SIGTERM (fast), then SIGKILL


def executable() -> str:
    """The nginx binary (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(exe, os.X_OK):
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx; .ci/run does this)")
    return exe


def main_config(folder: Path, upstreams: list[str], port: int) -> str:
    """nginx.conf for a run in `folder`: pid, logs and temporary files there; folder/conf.d holds the site and the
    upstream block under their own names, included in name order as compose's nginx includes deploy/nginx/*.conf."""
    site = SITE.read_text()
    if LISTEN not in site:
        raise RuntimeError(f"{SITE} has no '{LISTEN}' line to point at a loopback port")
    confd = folder / "conf.d"
    confd.mkdir(exist_ok=True)
    (confd / SITE.name).write_text(site.replace(LISTEN, f"listen 127.0.0.1:{port};"))
    (confd / UPSTREAM.name).write_text(upstream_block(upstreams))
    temps = "".join(f"    {kind}_temp_path {folder / kind};\n" for kind in TEMP_PATHS)
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root the workers would otherwise drop to nobody and lose the folder
    return (
        f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n{temps}"
        f"    include {confd}/*.conf;\n}}\n"
    )


def upstream_block(upstreams: list[str]) -> str:
    """Compose's upstream block with its replicas' `server` lines replaced by `upstreams` (same parameters)."""
    lines = UPSTREAM.read_text().splitlines()
    at = [i for i, ln in enumerate(lines) if ln.strip().startswith("server ")]
    if not at:
        raise RuntimeError(f"{UPSTREAM} lists no 'server' line")
    params = lines[at[0]].strip().split(" ", 2)[2]  # what follows "server <address>": max_fails, fail_timeout …
    ours = [f"    server {u} {params}" for u in upstreams]
    return "\n".join([*lines[: at[0]], *ours, *lines[at[-1] + 1 :]]) + "\n"


@dataclass
class Nginx:
    upstreams: list[str]
    folder: Path | None = None  # None: a temporary folder, removed on stop
    port: int = field(default=0, init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _own_folder: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        """nginx's stdout and stderr: the site's JSON access log (`access_log /dev/stdout`)."""
        return self._folder() / "access.log"

    def _folder(self) -> Path:
        if self.folder is None:
            raise RuntimeError("nginx is not started")
        return self.folder

    def _command(self, *args: str) -> list[str]:
        folder = self._folder()  # -e: the error log from the start, not Debian's /var/log/nginx (unwritable for a user)
        return [executable(), "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(folder / "nginx.conf"), *args]

    def write_config(self) -> Path:
        """The folder with nginx.conf, the site and the upstream block, on a newly chosen free port."""
        if self.folder is None:
            self.folder, self._own_folder = Path(tempfile.mkdtemp(prefix="lipsync-nginx-")), True
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.folder / "nginx.conf").write_text(main_config(self.folder, self.upstreams, self.port))
        return self.folder

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on this configuration (written first if needed): returncode 0 and "syntax is ok" when valid."""
        if self.folder is None or not (self.folder / "nginx.conf").exists():
            self.write_config()
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> Nginx:
        self.write_config()
        with self.access_log.open("ab") as log:  # new session: on SIGKILL the whole group (master and workers) goes
            self.proc = subprocess.Popen(self._command("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait_ready(self.proc, self._listening, START_TIMEOUT_S, f"nginx on port {self.port}", self.log_tail)
        except BaseException:
            self.stop()
            raise
        return self

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def records(self) -> list[dict]:
        """The JSON lines of the access log, oldest first."""
        lines = self.access_log.read_text(errors="replace").splitlines() if self.access_log.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def records_of(self, request_id_prefix: str, count: int = 1, timeout_s: float = 5.0) -> list[dict]:
        """The access-log records whose request id starts with the prefix, once there are `count` of them: nginx
        writes a request's line after its answer has gone, so a client that has the answer may be there first."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [r for r in self.records() if str(r.get("request_id", "")).startswith(request_id_prefix)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def log_tail(self, lines: int = 15) -> str:
        logs = [self._folder() / "error.log", self.access_log]
        return "\n".join(line for p in logs if p.exists() for line in p.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGTERM (fast), then SIGKILL to master and workers; a temporary folder is removed."""
        try:
            process.stop(self.proc, signal.SIGQUIT, STOP_TIMEOUT_S, fallback=signal.SIGTERM, group=True)
        finally:
            if self._own_folder and self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder, self._own_folder = None, False

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
