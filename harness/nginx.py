"""Real nginx in front of real replicas, for tests: deploy/nginx/lipsync.conf (what compose runs) on a
free loopback port, with an upstream block of the given `host:port`s, everything else in `folder`.

    with Nginx(["127.0.0.1:8001", "127.0.0.1:8002"], tmp_path / "nginx") as nginx:
        urllib.request.urlopen(f"{nginx.url}/health")
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness import ROOT, process
from harness.gunicorn import free_port

SITE = ROOT / "deploy" / "nginx" / "lipsync.conf"
UPSTREAM = ROOT / "deploy" / "nginx" / "upstream-compose.conf"  # compose's replicas: their lines become ours
LISTEN = "listen 8080;"  # the site's own listen line, replaced by a loopback port here
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def main_config(folder: Path, upstreams: list[str], port: int) -> str:
    """nginx.conf for an unprivileged run in `folder`: pid, logs and temporary bodies there, the site included."""
    site = SITE.read_text()
    if LISTEN not in site:
        raise RuntimeError(f"{SITE} has no '{LISTEN}' line to point at a loopback port")
    (folder / "site.conf").write_text(site.replace(LISTEN, f"listen 127.0.0.1:{port};"))
    (folder / "upstream.conf").write_text(upstream_block(upstreams))
    temps = "".join(f"    {kind}_temp_path {folder / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root the workers would otherwise drop to nobody and lose the folder
    return (
        f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n{temps}"
        f"    include {folder / 'upstream.conf'};\n    include {folder / 'site.conf'};\n}}\n"
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
    folder: Path
    port: int = field(default=0, init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.folder / "access.log"

    def start(self) -> Nginx:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(exe, os.X_OK):
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx; .ci/run does this)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.folder / "nginx.conf"
        conf.write_text(main_config(self.folder, self.upstreams, self.port))
        with self.access_log.open("ab") as log:
            cmd = [exe, "-p", str(self.folder), "-c", str(conf), "-g", "daemon off;"]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        process.wait_ready(self.proc, self._listening, START_TIMEOUT_S, f"nginx on port {self.port}", self.log_tail)
        return self

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def log_tail(self, lines: int = 15) -> str:
        logs = [self.folder / "error.log", self.access_log]
        return "\n".join(line for p in logs if p.exists() for line in p.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGQUIT (graceful), SIGKILL after STOP_TIMEOUT_S."""
        process.stop(self.proc, signal.SIGQUIT, STOP_TIMEOUT_S)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
