"""The bench's view of the server: a gunicorn on a loopback port, its workers' memory, and a timed client.

The client does what a real one does — base64-encode the media into JSON, POST it, parse the JSON
answer and base64-decode the MP4 — and times all of it, so the wall time is the caller's.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300.0  # two workers compiling with one thread each, cold cache
REQUEST_TIMEOUT_S = 600.0
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")  # the rest of the caller's is dropped


@dataclass
class Call:
    """One /api/generate round trip as the client saw it, with the server's own stage timings."""

    wall_s: float
    frames: int
    duration_s: float
    timings_ms: dict[str, float]
    client_ms: float  # JSON + base64 encode of the request, JSON parse + base64 decode of the answer
    http_ms: float  # from sending the body to the last byte of the answer
    face_box: list[int]
    mp4_bytes: int
    request_id: str = ""  # sent as X-Request-ID; the server's access log names the worker pid that served it

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s

    @property
    def transport_ms(self) -> float:
        """HTTP time the stage timings do not cover: request parsing and JSON rendering, socket copies."""
        return self.http_ms - sum(self.timings_ms.values())


def generate(url: str, image: bytes, audio: bytes, box: tuple[int, int, int, int] | None = None) -> Call:
    """POST one request (JSON + base64 in and out) and time it end to end."""
    request_id = f"bench-{uuid.uuid4().hex[:16]}"
    t0 = time.perf_counter()
    fields: dict[str, object] = {"image": base64.b64encode(image).decode("ascii"), "audio": base64.b64encode(audio).decode("ascii")}
    if box is not None:
        fields["box"] = list(box)
    body = json.dumps(fields).encode()
    t1 = time.perf_counter()
    headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
    req = urllib.request.Request(f"{url}/api/generate", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"POST {url}/api/generate answered {e.code}: {e.read()[:300]!r}") from e
    t2 = time.perf_counter()
    out = json.loads(raw)
    mp4 = base64.b64decode(out["video"])
    t3 = time.perf_counter()
    if mp4[4:8] != b"ftyp":
        raise RuntimeError(f"the answer's video is not an MP4 (starts with {mp4[:8]!r})")
    return Call(
        wall_s=t3 - t0,
        frames=out["frames"],
        duration_s=out["duration_s"],
        timings_ms=out["timings_ms"],
        client_ms=((t1 - t0) + (t3 - t2)) * 1000,
        http_ms=(t2 - t1) * 1000,
        face_box=out["face_box"],
        mp4_bytes=len(mp4),
        request_id=request_id,
    )


def concurrent(
    url: str, clients: int, requests: int, image: bytes, audio: bytes, box: tuple[int, int, int, int]
) -> tuple[list[Call], float]:
    """`requests` requests split over `clients` threads, each sending its next as soon as the last returns."""
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(lambda n: [generate(url, image, audio, box) for _ in range(n)], n) for n in per_client]
        calls = [c for f in futures for c in f.result()]
    return calls, time.perf_counter() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


@dataclass
class Server:
    """gunicorn serving app:app on a free loopback port; use as a context manager."""

    models_dir: Path
    cache_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    ready_s: float = 0.0
    proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if k in PASSED_ENV},  # no stray WEB_CONCURRENCY, PRECISION, …: defaults
            "MODELS_DIR": str(self.models_dir),
            "OV_CACHE_DIR": str(self.cache_dir),
            "BIND": f"127.0.0.1:{port}",
            **self.env,
        }
        with self.log_path.open("a") as log:
            cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"]
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(int(self.env.get("WEB_CONCURRENCY", "1")))
        except BaseException as e:
            self.__exit__(type(e))
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and exc_type is not KeyboardInterrupt:  # the log lives in a temporary folder: show it now
            alive = self.proc is not None and self.proc.poll() is None
            lines = self.log_path.read_text(errors="replace").splitlines()
            tail = [ln for ln in lines if '"path": "/health"' not in ln][-15:]  # not the readiness polls
            state = "running" if alive else f"exited with {self.proc and self.proc.returncode}"
            print(f"gunicorn on {self.url} ({state}); last lines of its log:", *tail, sep="\n  ", file=sys.stderr)
        self.stop()

    def _wait_ready(self, workers: int) -> None:
        """Poll /health until every worker has answered 200 (each compiles its own models)."""
        t0 = time.monotonic()
        ready: set[int] = set()
        last = ""
        while len(ready) < workers or len(self.worker_pids()) < workers:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise TimeoutError(f"{self.url}: {len(ready)}/{workers} workers ready after {READY_TIMEOUT_S:g} s; last /health: {last}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    pid = json.loads(r.read())["pid"]
            except urllib.error.HTTPError as e:  # 503 while a worker compiles, or the reason it cannot
                pid, last = None, e.read()[:300].decode(errors="replace")
            except OSError:  # not listening yet
                pid = None
            if pid is not None and pid not in self.worker_pids():  # another server took the port before ours bound it
                raise RuntimeError(f"{self.url} is answered by pid {pid}, not by a worker of our gunicorn {self.proc.pid}")
            if pid is not None:
                ready.add(pid)
            time.sleep(0.2)
        self.ready_s = time.monotonic() - t0

    def worker_pids(self) -> list[int]:
        """Children of the gunicorn master (its workers)."""
        if self.proc is None:
            return []
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, …
            except OSError:  # exited while we looked
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        return sorted(pids)

    def served_by(self, request_ids: list[str]) -> dict[str, int]:
        """Which worker pid served each request, from the server's JSON access log."""
        wanted, found = set(request_ids), {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"wav2lip.access"' in line:
                record = json.loads(line)
                if record.get("request_id") in wanted:
                    found[record["request_id"]] = record["pid"]
        return found

    def worker_memory_mb(self) -> dict[int, dict[str, float]]:
        """Per worker: peak (VmHWM) and current (VmRSS) resident set in MB."""
        return {
            pid: {"peak_rss_mb": _status_kb(pid, "VmHWM") / 1024, "rss_mb": _status_kb(pid, "VmRSS") / 1024} for pid in self.worker_pids()
        }

    def stop(self) -> None:
        """SIGTERM the master (graceful), SIGKILL it after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
