"""A worker's memory through the real server: private (RssAnon) and resident (VmRSS), at the peak and after.

    python -m bench.memory [--models ir_models] [--clips DIR] [--only NAME ...]      (make bench-memory)

Each workload runs on a gunicorn started by harness/gunicorn.py (one worker unless said), its clips made
here beforehand (harness/clips.py: the test photo moved, scaled and turned a little per frame, so the
detector follows a face): ready, and after a 512² photo answer; one 10 s 1920×1080 living avatar
registered and used (a streamed answer: time to its first byte, against a still's); 20 different
~10 s 1280×720 ones, each registered and used once in turn (growth from the first to the last); 3
concurrent streams on distinct 10 s 720p ones; a 2-minute 1080p dub (`loop: none`) in a fresh worker
and after the 20 living avatars in the same worker; and two workers streaming the same 1080p avatar
at once, their proportional set sizes (Pss, /proc/PID/smaps_rollup) showing its frames counted once.
A sampler reads /proc every 50 ms (peaks); "after" is read once the work ended and the worker is idle.
Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from bench import noise
from bench.client import generate
from bench.dubbing import multipart
from bench.run import AUDIO, IMAGE, machine, speech, write_results
from harness import ROOT
from harness.clips import idle_clip
from harness.gunicorn import Gunicorn
from harness.jobs import http
from lipsync_server.memory import MB, private_bytes

RESULTS = ROOT / "bench" / "results" / "memory.json"
SAMPLE_S = 0.05
SETTLE_S = 1.0  # after the work: the worker's threads finish their bookkeeping
TTFB_RUNS = 5
BOX_512 = (180, 70, 280, 215)  # bench.run's box around the astronaut's face
LIVING_720P = 20


def status_mb(pid: int) -> dict[str, float]:
    """RssAnon (private), RssFile (mapped files) and VmRSS of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile", "VmRSS")}


def pss_mb(pid: int) -> dict[str, float]:
    """Rss, Pss and its file-backed part of a process (/proc/PID/smaps_rollup), in MB."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    fields = {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in text[1:] if ln.split()[-1] == "kB"}
    return {k: fields[k] for k in ("Rss", "Pss", "Pss_File", "Pss_Anon") if k in fields}


class Sampler:
    """Peaks of RssAnon and VmRSS (and with `pss`, of Pss) of `pids`, read every SAMPLE_S on a thread."""

    def __init__(self, pids: set[int], pss: bool = False):
        self.pids, self.pss = sorted(pids), pss
        self.peak: dict[int, dict[str, float]] = {pid: {} for pid in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                now = status_mb(pid) | (pss_mb(pid) if self.pss else {})
                self.peak[pid] = {k: max(v, self.peak[pid].get(k, 0.0)) for k, v in now.items()}
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def measured(srv: Gunicorn, row: dict[str, Any], pss: bool = False) -> Iterator[None]:
    """Fill `row` with the workers' memory before, at the peak of, and after the block."""
    pids = srv.workers()
    row["before"] = {pid: status_mb(pid) for pid in pids}
    with Sampler(pids, pss) as sampler:
        yield
    time.sleep(SETTLE_S)
    row["peak"], row["after"] = sampler.peak, {pid: status_mb(pid) for pid in pids}


def summary(row: dict[str, Any]) -> str:
    """One line: the first worker's private memory before → peak → after, and its VmRSS peak."""
    pid = min(row["peak"])
    return (f"private {row['before'][pid]['RssAnon']:.0f} → peak {row['peak'][pid]['RssAnon']:.0f} → after "
            f"{row['after'][pid]['RssAnon']:.0f} MB; VmRSS peak {row['peak'][pid]['VmRSS']:.0f} MB")  # fmt: skip


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def register(url: str, clip: bytes) -> str:
    status, _, data = http("POST", f"{url}/api/avatars", {"video": b64(clip)}, timeout=600)
    if status not in (200, 201):
        raise RuntimeError(f"registration answered {status}: {data[:300]!r}")
    return json.loads(data)["avatar_id"]


def answer(url: str, body: dict[str, Any]) -> int:
    """A whole answer (the MP4 itself); its frames."""
    status, headers, data = http("POST", f"{url}/api/generate", body, headers={"Accept": "video/mp4"}, timeout=900)
    if status != 200:
        raise RuntimeError(f"/api/generate answered {status}: {data[:300]!r}")
    return int(headers["X-Frames"])


def streamed(url: str, body: dict[str, Any]) -> dict[str, float]:
    """A streamed answer read to its end: seconds to the first body byte, and in all."""
    conn = HTTPConnection(url.removeprefix("http://"), timeout=900)
    t0 = time.perf_counter()
    conn.request("POST", "/api/generate", json.dumps(body | {"stream": True}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.read1(1 << 16)
    ttfb = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"stream answered {resp.status}: {first[:300]!r}")
    size = len(first) + sum(len(chunk) for chunk in iter(lambda: resp.read1(1 << 16), b""))
    return {"ttfb_s": round(ttfb, 4), "total_s": round(time.perf_counter() - t0, 2), "bytes": size}


def ttfb(url: str, body: dict[str, Any]) -> dict[str, Any]:
    runs = [streamed(url, body)["ttfb_s"] for _ in range(TTFB_RUNS)]
    return {"median_s": statistics.median(runs), "runs_s": runs}


class Clips:
    """The bench's synthetic avatars, each made on first use into `folder` (kept there with --clips, for another run)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    @cached_property
    def hd10(self) -> Path:
        return self._made(self.folder / "1080p-10s.mp4", 1920, 1080, 250)

    @cached_property
    def hd20(self) -> Path:
        return self._made(self.folder / "1080p-20s.mp4", 1920, 1080, 500, period=250)

    @cached_property
    def hd120(self) -> Path:
        return self._made(self.folder / "1080p-120s.mp4", 1920, 1080, 3000, period=250)

    @cached_property
    def living(self) -> list[Path]:
        return [self._made(self.folder / f"720p-10s-{k}.mp4", 1280, 720, 250, period=240 + k) for k in range(LIVING_720P)]

    @staticmethod
    def _made(path: Path, width: int, height: int, frames: int, period: int | None = None) -> Path:
        if not path.exists():
            t0 = time.perf_counter()
            idle_clip(width, height, frames=frames, fps=25, crf=23, period=period, out=path.with_suffix(".tmp.mp4"))
            path.with_suffix(".tmp.mp4").rename(path)
            print(f"  made {path.name} ({path.stat().st_size / MB:.1f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
        return path


def photo(srv: Gunicorn, clips: Clips) -> dict[str, Any]:
    """Ready, then one 512² photo answer (6.4 s of speech)."""
    row: dict[str, Any] = {"ready": {pid: status_mb(pid) for pid in srv.workers()}}
    with measured(srv, row):
        generate(srv.url, IMAGE.read_bytes(), AUDIO.read_bytes(), BOX_512)
    return row


def living_1080p(srv: Gunicorn, clips: Clips) -> dict[str, Any]:
    """One 10 s 1080p living avatar registered, then a 10 s streamed answer on it; then the first byte, against a photo's."""
    row: dict[str, Any] = {}
    with measured(srv, row):
        ident = register(srv.url, clips.hd10.read_bytes())
        row["answer"] = streamed(srv.url, {"avatar_id": ident, "audio": b64(speech(10.0))})
    row["quiet_before_ttfb"] = noise.wait_quiet(120.0)  # first-byte times on a 2-core box shared with others: see bench.noise
    row["ttfb_registered_1080p"] = ttfb(srv.url, {"avatar_id": ident, "audio": b64(speech(6.4))})
    row["ttfb_photo_512"] = ttfb(srv.url, {"image": b64(IMAGE.read_bytes()), "audio": b64(speech(6.4)), "box": list(BOX_512)})
    return row


def living_720p(srv: Gunicorn, clips: Clips) -> dict[str, Any]:
    """20 different 10 s 720p living avatars, each registered and used once (a whole 10 s answer) in turn."""
    row: dict[str, Any] = {"after_each_mb": []}
    (pid,) = srv.workers()
    with measured(srv, row):
        for clip in clips.living:
            ident = register(srv.url, clip.read_bytes())
            answer(srv.url, {"avatar_id": ident, "audio": b64(speech(10.0))})
            row["after_each_mb"].append(round(private_bytes(pid) / MB, 1))
    row["growth_first_to_last_mb"] = round(row["after_each_mb"][-1] - row["after_each_mb"][0], 1)
    return row


def three_streams(srv: Gunicorn, clips: Clips) -> dict[str, Any]:
    """Three streams at once, each on its own registered 10 s 720p avatar (10 s of speech each)."""
    idents = [register(srv.url, clip.read_bytes()) for clip in clips.living[:3]]
    row: dict[str, Any] = {}
    with measured(srv, row), ThreadPoolExecutor(3) as pool:
        row["streams"] = list(pool.map(lambda i: streamed(srv.url, {"avatar_id": i, "audio": b64(speech(10.0))}), idents))
    return row


def dub(srv: Gunicorn, clips: Clips) -> dict[str, Any]:
    """A 2-minute 1080p video dubbed with 2 minutes of speech (`loop: none`), whole MP4 back (multipart, as bench.dubbing)."""
    body, content_type = multipart({"video": ("clip.mp4", clips.hd120.read_bytes()), "audio": ("speech.wav", speech(120.0))},
                                   {"loop": "none"})  # fmt: skip
    row: dict[str, Any] = {}
    with measured(srv, row):
        status, headers, data = http("POST", f"{srv.url}/api/generate", body, {"Content-Type": content_type, "Accept": "video/mp4"},
                                     timeout=1800)  # fmt: skip
    if status != 200:
        raise RuntimeError(f"the dub answered {status}: {data[:300]!r}")
    row["frames"], row["mp4_mb"] = int(headers["X-Frames"]), round(len(data) / MB, 1)
    return row


def living_then_dub(srv: Gunicorn, clips: Clips) -> dict[str, Any]:
    """The 20 living avatars, then the dub in the same worker."""
    return {"living_720p": living_720p(srv, clips), "dub": dub(srv, clips)}


def two_workers(srv: Gunicorn, clips: Clips) -> dict[str, Any]:
    """Two workers stream the same registered 1080p avatar at once; while both have touched all its frames,
    their Pss (the frames' pages split between the two mappings) against their Rss (counted in full by each)."""
    ident = register(srv.url, clips.hd10.read_bytes())
    size_mb = next((Path(srv.server_env()["AVATAR_DIR"]) / ident).glob("frames.npy")).stat().st_size / MB
    body = {"avatar_id": ident, "audio": b64(speech(30.0))}
    for _ in range(10):  # until the two streams land on the two workers
        with ThreadPoolExecutor(2) as pool:
            running = [pool.submit(streamed_as, srv.url, body, f"mem-{k}-{time.monotonic_ns()}") for k in range(2)]
            snapshot = both_mapped(srv, size_mb)
            ids = [f.result() for f in running]
        if len(set(srv.served_by(ids).values())) == 2 and snapshot:
            break
    else:
        raise RuntimeError("the two streams never ran on the two workers at once")
    rss_file = sum(s["RssFile"] for s in snapshot.values())
    pss_file = sum(s["Pss_File"] for s in snapshot.values())
    # Rss counts a page shared by the two workers twice, Pss half in each: 0.5 = every mapped file page counted once
    return {"frames_file_mb": round(size_mb), "workers": snapshot, "sum_rss_file_mb": round(rss_file), "sum_pss_file_mb": round(pss_file),
            "pss_per_rss_file": round(pss_file / rss_file, 3)}  # fmt: skip


def streamed_as(url: str, body: dict[str, Any], request_id: str) -> str:
    conn = HTTPConnection(url.removeprefix("http://"), timeout=900)
    conn.request(
        "POST", "/api/generate", json.dumps(body | {"stream": True}), {"Content-Type": "application/json", "X-Request-ID": request_id}
    )
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"stream answered {resp.status}")
    return request_id


def both_mapped(srv: Gunicorn, size_mb: float, timeout_s: float = 120.0) -> dict[int, dict[str, float]] | None:
    """Once every worker has ~all of the frames resident (RssFile), their status and Pss; None if that never happens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = {pid: status_mb(pid) for pid in srv.workers()}
        if all(s["RssFile"] > 0.9 * size_mb for s in states.values()):
            return {pid: states[pid] | pss_mb(pid) for pid in states}
        time.sleep(SAMPLE_S)
    return None


WORKLOADS: dict[str, tuple[Callable[[Gunicorn, Clips], dict[str, Any]], dict[str, str]]] = {
    "photo": (photo, {}),
    "living_1080p": (living_1080p, {}),
    "living_720p_then_dub": (living_then_dub, {}),
    "three_streams_720p": (three_streams, {}),
    "dub_fresh": (dub, {}),
    "two_workers_1080p": (two_workers, {"WEB_CONCURRENCY": "2"}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path(os.environ.get("MODELS_DIR", ROOT / "ir_models")))
    p.add_argument("--clips", type=Path, help="where the clips are made (kept); default: a temporary folder")
    p.add_argument("--only", nargs="*", choices=list(WORKLOADS), help="run these workloads only")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    res: dict[str, Any] = {"machine": machine(), "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="wav2lip-memory-") as tmp:
        clips = Clips(args.clips or Path(tmp) / "clips")
        cache = Path(tmp) / "ov_cache"
        # Long requests and big uploads allowed; streams admitted whatever the CPU (memory is measured here, not speed);
        # avatars evicted beyond 4 GiB of disk, so the 20 living ones do not fill a shared machine's disk.
        env = {"MAX_REQUEST_BYTES": str(512 * MB), "REQUEST_TIMEOUT_S": "1800", "GUNICORN_TIMEOUT": "1800", "STREAM_CAPACITY": "10",
               "AVATAR_STORE_MB": "4096"}  # fmt: skip
        for name in args.only or WORKLOADS:
            run, extra = WORKLOADS[name]
            print(f"{name} …", flush=True)
            with Gunicorn(args.models, Path(tmp) / name / "gunicorn.log", cache_dir=cache, env=env | extra) as srv:
                res["workloads"][name] = row = run(srv, clips)
            print(f"  {json.dumps(row, default=str)[:600]}", flush=True)
    write_results(res, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
