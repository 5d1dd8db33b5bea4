"""A real redis-server for tests and benches: on a free loopback port, its data (append-only file) in a
folder of the caller's, restartable on the same port with the same data, stopped on exit.

    with RedisServer(tmp_path / "redis") as redis:
        env = {"REDIS_URL": redis.url}
        redis.restart(down_s=3)    # an outage: clients see errors meanwhile, then the same data again
        with redis.stalled(): ...  # up but silent (SIGSTOP): clients wait out their socket timeouts
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from harness import process
from harness.gunicorn import free_port

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
LOG = "redis.log"


@dataclass
class RedisServer:
    data_dir: Path
    port: int = field(default=0, init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.absolute()  # redis-server changes into --dir: a relative path would name another folder

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start on `port` (a free one the first time) with the data in `data_dir`; ready once it answers."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does this)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        # appendfsync always: what the server acknowledged survives a restart, even a SIGKILL (a production Redis would use everysec)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--daemonize", "no"]  # fmt: skip
        with (self.data_dir / LOG).open("ab") as log:  # its log on stdout, and on stderr what it says before it has a log (bad config)
            self.proc = subprocess.Popen([exe, *args], stdout=log, stderr=subprocess.STDOUT)
        process.wait_ready(self.proc, self._answers, START_TIMEOUT_S, f"redis-server on port {self.port}", self.log_tail)
        return self

    def _answers(self) -> bool:
        """Ours answers on the port (not another server that holds it: then ours exits, and the log says why)."""
        try:
            with redis.Redis("127.0.0.1", self.port, socket_timeout=1, socket_connect_timeout=1) as client:
                return client.info("server")["process_id"] == self.proc.pid
        except redis.RedisError:  # not listening yet, or still loading its data
            return False

    def stop(self) -> None:
        """SIGTERM (Redis flushes its append-only file), SIGKILL after STOP_TIMEOUT_S."""
        process.stop(self.proc, signal.SIGTERM, STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL, as a machine dies: with appendfsync always, nothing acknowledged is lost."""
        process.stop(self.proc, signal.SIGKILL, STOP_TIMEOUT_S)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s`, start again on the same port with the same data."""
        self.stop()
        time.sleep(down_s)
        self.start()

    @contextmanager
    def stalled(self) -> Iterator[None]:
        """Up but silent while inside (SIGSTOP, then SIGCONT): connections open, no command answered."""
        assert self.proc is not None and self.proc.poll() is None, "redis-server is not running"
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 15) -> str:
        log = self.data_dir / LOG
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
