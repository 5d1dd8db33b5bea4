"""The real server for tests, `make bench` and `make load`: gunicorn with gunicorn.conf.py on a free
loopback port, ready once every worker has answered /health with 200, stopped with SIGTERM then
SIGKILL. Its workers are the children of the master (read from /proc); its log is the app's JSON lines.

    with Gunicorn(models_dir, log_path, env={"WEB_CONCURRENCY": "2"}) as server:
        urllib.request.urlopen(f"{server.url}/health")
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness import ROOT
from wav2lip_core.config import Settings

READY_TIMEOUT_S = 300.0  # two workers compiling with one thread each, cold cache
POLL_S = 0.1  # between /health probes while workers compile
STOP_TIMEOUT_S = 30.0  # SIGTERM (graceful) → SIGKILL
LOG_TAIL_LINES = 15
# What a clean environment keeps of the caller's: the rest (a stray WEB_CONCURRENCY, PRECISION, API_KEY…) is dropped.
CLEAN_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> set[int]:
    """Pids whose parent is `pid` (for a gunicorn master: its workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, …
        except OSError:  # exited while we looked
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def status_kb(pid: int | str, key: str) -> int:
    """A kB field of /proc/<pid>/status, e.g. VmHWM (peak resident set) or VmRSS; pid may be "self"."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def memory_mb(pid: int | str) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident set of a process, in MB."""
    return {"peak_rss_mb": status_kb(pid, "VmHWM") / 1024, "rss_mb": status_kb(pid, "VmRSS") / 1024}


def _json_field(text: str, key: str) -> object:
    """`key` of a JSON object, None when the text is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get(key) if isinstance(value, dict) else None


@dataclass
class Gunicorn:
    """`python -m gunicorn -c gunicorn.conf.py app:app` in the repository on 127.0.0.1:<free port>.

    `cache_dir` is OV_CACHE_DIR: "" disables the compile cache, None leaves it to the environment.
    `env` is added last. With `inherit_env` False (the default) only CLEAN_ENV is kept of the
    caller's environment, so what is tested or measured is the configuration written here.
    """

    models_dir: Path
    log_path: Path
    cache_dir: Path | str | None = ""
    env: dict[str, str] = field(default_factory=dict)
    inherit_env: bool = False
    ready_timeout_s: float = READY_TIMEOUT_S
    port: int = field(default=0, init=False)  # chosen by start()
    ready_s: float = field(default=0.0, init=False)  # seconds from start until every worker was ready
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)  # the master

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The master's pid."""
        if self.proc is None:
            raise RuntimeError("gunicorn is not started")
        return self.proc.pid

    def server_env(self) -> dict[str, str]:
        """The environment gunicorn runs with."""
        base = dict(os.environ) if self.inherit_env else {k: v for k, v in os.environ.items() if k in CLEAN_ENV}
        ours = {"MODELS_DIR": str(Path(self.models_dir).resolve()), "BIND": f"127.0.0.1:{self.port}"}
        state = self.log_path.parent / self.log_path.stem  # registered avatars and jobs beside the log, never in the checkout
        ours |= {"AVATAR_DIR": str(state / "avatars"), "JOB_DIR": str(state / "jobs")}
        if self.cache_dir is not None:
            ours["OV_CACHE_DIR"] = str(self.cache_dir)
        return base | ours | self.env

    def start(self) -> Gunicorn:
        """Start the master and wait until every worker answers /health 200; on failure stop it and raise with the log's tail."""
        self.port = self.port or free_port()  # a restart keeps its address: a proxy in front still finds it
        env = self.server_env()
        workers = int(env.get("WEB_CONCURRENCY", Settings.workers))  # as gunicorn.conf.py reads it
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:  # this run's log only: tails and served_by read it whole
            cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"]
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        try:
            self.wait_ready(workers)
        except BaseException as e:
            self.stop()
            if isinstance(e, RuntimeError | TimeoutError):  # ours: the log says why
                raise type(e)(f"{e}\n{self.log_tail()}") from e
            raise
        self.ready_s = time.monotonic() - t0
        return self

    def wait_ready(self, workers: int, timeout: float | None = None) -> set[int]:
        """Poll /health until `workers` workers exist and each has answered 200 since this call; their pids.

        Fails at once when gunicorn exits, a worker reports that its models cannot load, or another
        process answers on our port."""
        timeout = self.ready_timeout_s if timeout is None else timeout
        t0 = time.monotonic()
        ready: set[int] = set()
        last = ""
        while True:
            current = self.workers()
            if len(current) == workers and current <= ready:
                return current
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc and self.proc.returncode}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{self.url}: {len(ready & current)}/{workers} workers ready after {timeout:g} s; last /health: {last}")
            pid, last = self._probe_health(last)
            if pid is not None and pid not in self.workers():
                raise RuntimeError(f"{self.url} is answered by pid {pid}, not by a worker of our gunicorn {self.pid}")
            if pid is not None:
                ready.add(pid)
            time.sleep(POLL_S)

    def _probe_health(self, last: str) -> tuple[int | None, str]:
        """One GET /health: the answering worker's pid if it is ready, and the last not-ready answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return json.loads(r.read())["pid"], last
        except urllib.error.HTTPError as e:  # 503 while a worker compiles, or the reason it cannot
            body = e.read().decode(errors="replace")
            if _json_field(body, "status") == "error":
                raise RuntimeError(f"a worker cannot load its models: {_json_field(body, 'error')}") from e
            return None, body[:300]
        except OSError:  # not listening yet
            return None, last

    def workers(self) -> set[int]:
        """The master's children: its workers."""
        return children(self.pid) if self.proc is not None else set()

    def worker_memory_mb(self) -> dict[int, dict[str, float]]:
        """Per worker: peak (VmHWM) and current (VmRSS) resident set in MB."""
        return {pid: memory_mb(pid) for pid in sorted(self.workers())}

    def log_records(self) -> list[dict]:
        """The JSON lines of the server's log (the app's and gunicorn's), oldest first."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def served_by(self, request_ids: list[str]) -> dict[str, int]:
        """Which worker pid served each request (sent as X-Request-ID), from the JSON access log."""
        wanted = set(request_ids)
        records = self.log_records()
        return {r["request_id"]: r["pid"] for r in records if r.get("logger") == "wav2lip.access" and r.get("request_id") in wanted}

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the log, without the readiness probes."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        tail = [ln for ln in text.splitlines() if '"path": "/health"' not in ln][-lines:]
        return "\n  ".join([f"last lines of {self.log_path}:", *tail])

    def stop(self) -> None:
        """SIGTERM the master (graceful: workers finish their requests), SIGKILL it after STOP_TIMEOUT_S."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):  # the log may be in a temporary folder: show it now
            state = "running" if self.proc is not None and self.proc.poll() is None else "exited"
            print(f"gunicorn on {self.url} ({state}); {self.log_tail()}", file=sys.stderr)
        self.stop()
