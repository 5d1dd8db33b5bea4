"""A real redis-server for tests and benches: on a free loopback port, its data (append-only file) in a
folder of the caller's, restartable on the same port with the same data, stopped on exit.

    with RedisServer(tmp_path / "redis") as redis:
        env = {"REDIS_URL": redis.url}
        redis.restart(down_s=3)    # an outage: clients see errors meanwhile, then the same data again
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import process
from harness.gunicorn import free_port

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


@dataclass
class RedisServer:
    data_dir: Path
    port: int = field(default=0, init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does this)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        # appendfsync always: what the server acknowledged survives a restart (a production Redis would use everysec)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log")]  # fmt: skip
        self.proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        process.wait_ready(self.proc, self._pong, START_TIMEOUT_S, f"redis-server on port {self.port}", self.log_tail)
        return self

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (Redis flushes its append-only file), SIGKILL after STOP_TIMEOUT_S."""
        process.stop(self.proc, signal.SIGTERM, STOP_TIMEOUT_S)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s`, start again on the same port with the same data."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def log_tail(self, lines: int = 15) -> str:
        log = self.data_dir / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
