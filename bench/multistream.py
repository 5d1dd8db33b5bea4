"""Many conversations at once on one worker: first bytes, lateness against playback, admission, capacity.

    python -m bench.multistream [--int8] [--quick]        (make bench-multistream)

Through a real gunicorn (default settings, one worker) on a free loopback port: every stream is read
by a raw HTTP client that counts video frames as they arrive (each fMP4 `moof`'s video `trun` sample
count) and compares each frame's arrival with its playback time: first byte + PLAYER_BUFFER_S + k / fps.
Positive lateness is a frame the player would have waited for. Scenarios: a 6 s answer while a 60 s
one streams; N users 0.3 s apart (3 at bf16, 5 at INT8); 8 at once (admitted vs 503); a job and a
whole answer beside streams; a registered 10 s 1080p video avatar; the standard whole request alone
and 4 at once; 100 streams in a row and 50 aborted (threads, files, RSS). From the measured per-frame
costs, a capacity model for 4/8/16 cores (a model, not a measurement). Writes bench/results/multistream.json.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.run import IMAGE, ROOT, machine, speech, write_results
from bench.stream import StreamRefused, abort_after_first_fragment, worker_state
from harness.clips import idle_clip
from harness.gunicorn import Gunicorn
from wav2lip_core.scheduler import PLAYER_BUFFER_S

RESULTS = ROOT / "bench" / "results" / "multistream.json"
FPS = 25.0
SETTLE_S = 2.0
CORES_MODELLED = (4, 8, 16)
ABORT_TRIES = 50  # 503s waited out (0.2 s apart) before an aborted stream's seat is taken as never freed


def payload(seconds: float, stream: bool = True, avatar_id: str | None = None) -> bytes:
    avatar = {"avatar_id": avatar_id} if avatar_id else {"image": base64.b64encode(IMAGE.read_bytes()).decode()}
    return json.dumps(avatar | {"audio": base64.b64encode(speech(seconds)).decode(), "stream": stream}).encode()


# ---------------------------------------------------------------- reading a stream as it arrives


def video_track(moov: bytes) -> int:
    """The id of the track whose handler (`hdlr`) is `vide`."""
    for trak in boxes(moov, b"trak"):
        if next(boxes(trak, b"hdlr"))[8:12] == b"vide":
            tkhd = next(boxes(trak, b"tkhd"))
            return int.from_bytes(tkhd[12:16] if tkhd[0] == 0 else tkhd[20:24], "big")
    raise ValueError("no video track in the moov")


def boxes(data: bytes, kind: bytes):
    """The payloads of the child boxes of `kind` in `data`, descending into containers."""
    i = 0
    while i + 8 <= len(data):
        size, name = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8]
        if size < 8:
            return
        body = data[i + 8 : i + size]
        if name == kind:
            yield body
        elif name in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"moof", b"traf", b"mvex"):
            yield from boxes(body, kind)
        i += size


def video_samples(moof: bytes, track: int) -> int:
    """Video frames in one `moof`: the `trun` sample counts of its video `traf`s."""
    count = 0
    for traf in boxes(moof, b"traf"):
        tfhd = next(boxes(traf, b"tfhd"))
        if int.from_bytes(tfhd[4:8], "big") == track:
            count += sum(int.from_bytes(trun[4:8], "big") for trun in boxes(traf, b"trun"))
    return count


class Watch:
    """One streamed request read to its end: when each video frame arrived, relative to the request's start."""

    def __init__(self, port: int, body: bytes, start_at: float):
        self.port, self.body, self.start_at = port, body, start_at
        self.status: int | None = None
        self.retry_after: str | None = None
        self.error: str | None = None
        self.first_byte_s: float | None = None
        self.arrivals: list[float] = []  # per video frame, seconds after the request was sent

    def run(self) -> Watch:
        time.sleep(max(0.0, self.start_at - time.monotonic()))
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        t0 = time.monotonic()
        try:
            conn.request("POST", "/api/generate", self.body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            self.status, self.retry_after = resp.status, resp.getheader("Retry-After")
            if resp.status != 200:
                self.error = json.loads(resp.read())["error"]["code"]
                return self
            self._read(resp, t0)
        except (OSError, http.client.HTTPException) as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        return self

    def _read(self, resp: http.client.HTTPResponse, t0: float) -> None:
        buf, track = b"", None
        while chunk := resp.read1(1 << 16):
            now = time.monotonic() - t0
            if self.first_byte_s is None:
                self.first_byte_s = now
            buf += chunk
            while len(buf) >= 8 and len(buf) >= (size := int.from_bytes(buf[:4], "big")):
                kind, box, buf = buf[4:8], buf[8:size], buf[size:]
                if kind == b"moov":
                    track = video_track(box)
                elif kind == b"moof" and track is not None:
                    self.arrivals += [now] * video_samples(box, track)

    def lateness_s(self) -> float | None:
        """The worst frame's arrival after its playback time (negative: every frame was ahead)."""
        if not self.arrivals or self.first_byte_s is None:
            return None
        return max(t - (self.first_byte_s + PLAYER_BUFFER_S + k / FPS) for k, t in enumerate(self.arrivals))

    def summary(self) -> dict[str, Any]:
        late = self.lateness_s()
        return {"status": self.status, "error": self.error, "retry_after": self.retry_after,
                "first_byte_s": None if self.first_byte_s is None else round(self.first_byte_s, 3),
                "frames": len(self.arrivals), "worst_lateness_s": None if late is None else round(late, 3),
                "kept_real_time": None if late is None else late <= 0}  # fmt: skip


def together(port: int, bodies: list[bytes], gap_s: float) -> list[dict[str, Any]]:
    """Streams started `gap_s` apart, all watched to their end."""
    t0 = time.monotonic() + 0.2
    watches = [Watch(port, b, t0 + i * gap_s) for i, b in enumerate(bodies)]
    with ThreadPoolExecutor(len(watches)) as pool:
        return [w.summary() for w in pool.map(Watch.run, watches)]


# ---------------------------------------------------------------- scenarios


def scenario_second_user(port: int) -> dict[str, Any]:
    """A 6 s answer asked 5 s into a 60 s one."""
    long, short = together(port, [payload(60.0), payload(6.0)], gap_s=5.0)
    return {"first_60s": long, "second_6s": short}


def scenario_users(port: int, users: int) -> dict[str, Any]:
    streams = together(port, [payload(20.0)] * users, gap_s=0.3)
    return {"users": users, "streams": streams, "all_kept_real_time": all(s["kept_real_time"] for s in streams),
            "first_byte_max_s": max(s["first_byte_s"] or math.inf for s in streams)}  # fmt: skip


def scenario_overload(port: int, users: int = 8) -> dict[str, Any]:
    streams = together(port, [payload(20.0)] * users, gap_s=0.0)
    admitted = [s for s in streams if s["status"] == 200]
    refused = [s for s in streams if s["status"] == 503 and s["error"] == "busy" and s["retry_after"]]
    return {"users": users, "admitted": len(admitted), "refused_503_with_retry_after": len(refused),
            "other_errors": len(streams) - len(admitted) - len(refused),
            "admitted_all_kept_real_time": all(s["kept_real_time"] for s in admitted), "streams": streams}  # fmt: skip


def post_json(port: int, path: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, Any], float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    t0 = time.monotonic()
    conn.request(method, path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    seconds = time.monotonic() - t0
    conn.close()
    return resp.status, (json.loads(data) if data[:1] == b"{" else {"bytes": len(data)}), seconds


def scenario_beside(port: int, streams: int) -> dict[str, Any]:
    """A 60 s job and a 6.4 s whole answer while `streams` streams of 20 s play."""
    status, job, _ = post_json(port, "/api/jobs", payload(60.0, stream=False))
    assert status == 202, job
    whole: dict[str, Any] = {}

    def whole_answer() -> None:
        time.sleep(2.0)
        code, _, seconds = post_json(port, "/api/generate", payload(6.4, stream=False))
        whole.update(status=code, seconds=round(seconds, 2))

    side = threading.Thread(target=whole_answer)
    side.start()
    watched = together(port, [payload(20.0)] * streams, gap_s=0.3)
    side.join()
    return {"streams": watched, "all_kept_real_time": all(s["kept_real_time"] for s in watched), "whole_6_4s": whole,
            "job": wait_job(port, job["id"])}  # fmt: skip


def wait_job(port: int, job_id: str, timeout_s: float = 600.0) -> dict[str, Any]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        _, job, _ = post_json(port, f"/api/jobs/{job_id}", b"", method="GET")
        if job["status"] in ("done", "error", "cancelled"):
            return {"status": job["status"], "seconds": round(time.monotonic() - t0, 1)}
        time.sleep(0.5)
    return {"status": "timeout"}


def scenario_video_avatar(port: int, tmp: Path, runs: int) -> dict[str, Any]:
    """Streamed first byte of a registered 10 s 1920×1080 video avatar, against the photo's (medians)."""
    clip = tmp / "avatar_1080p.mp4"
    idle_clip(1920, 1080, frames=250, out=clip)
    body = json.dumps({"video": base64.b64encode(clip.read_bytes()).decode()}).encode()
    status, record, register_s = post_json(port, "/api/avatars", body)
    assert status in (200, 201), record
    video = [Watch(port, payload(6.0, avatar_id=record["avatar_id"]), 0).run().summary() for _ in range(runs)]
    image = [Watch(port, payload(6.0), 0).run().summary() for _ in range(runs)]
    med = lambda xs: round(statistics.median(x["first_byte_s"] for x in xs), 3)
    return {"register_s": round(register_s, 1), "video_first_byte_s": med(video), "image_first_byte_s": med(image),
            "video_runs": video, "image_runs": image}  # fmt: skip


def scenario_whole(port: int, runs: int) -> dict[str, Any]:
    """The standard whole request alone (median of `runs`), then 4 at once: frames/s of each."""
    body = payload(6.4, stream=False)
    post_json(port, "/api/generate", body)  # warm
    alone = [post_json(port, "/api/generate", body) for _ in range(runs)]
    frames = alone[0][1]["frames"]
    median_s = statistics.median(s for _, _, s in alone)
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        four = list(pool.map(lambda _: post_json(port, "/api/generate", body), range(4)))
    wall = time.monotonic() - t0
    ok = sum(code == 200 for code, _, _ in four)
    return {"alone_median_s": round(median_s, 3), "alone_fps": round(frames / median_s, 1), "four_at_once_ok": ok,
            "four_at_once_fps": round(ok * frames / wall, 1), "ratio": round(ok * frames / wall / (frames / median_s), 3)}  # fmt: skip


def scenario_leaks(server: Gunicorn, worker: int) -> dict[str, Any]:
    """100 short streams in a row and 50 aborted after their first fragment: the worker's threads, files and RSS.
    An aborted stream holds its seat until the worker notices the hang-up; the next one waits out its 503 (counted)."""
    short, long = payload(1.0), payload(20.0)
    refused = 0

    def abort() -> None:
        nonlocal refused
        for _ in range(ABORT_TRIES):
            try:
                abort_after_first_fragment(server.port, long)
                return
            except StreamRefused:
                refused += 1
                time.sleep(0.2)
        raise RuntimeError(f"a stream was still refused after {ABORT_TRIES} tries: aborted streams keep their seats")

    for _ in range(5):  # what the first requests create (pools, arenas) stays: not a leak
        Watch(server.port, short, 0).run()
        abort()
    time.sleep(SETTLE_S)
    before = worker_state(worker)
    completed = sum(Watch(server.port, short, 0).run().status == 200 for _ in range(100))
    for _ in range(50):
        abort()
    time.sleep(SETTLE_S)
    return {"completed": completed, "aborted": 50, "refused_then_admitted": refused, "before": before, "after": worker_state(worker)}


def capacity_model(health: dict[str, Any], whole: dict[str, Any]) -> dict[str, Any]:
    """Real-time streams per machine, modelled from this worker's measured cost of a frame (see the module doc)."""
    streams, cores = health["streams"], health["threads"]
    core_s_per_frame = cores / whole["alone_fps"]  # every core busy for one frame (generator, paste, encode)
    usable = streams["limit"]
    return {
        "measured_on_cores": cores, "core_ms_per_frame": round(core_s_per_frame * 1000, 2), "stream_capacity": usable,
        "streams_per_machine": {c: math.floor(c / core_s_per_frame * usable / FPS) for c in CORES_MODELLED},
        "assumes": "one worker per 2 cores (WEB_CONCURRENCY = cores / 2), each as fast as this one; no memory-bandwidth limit",
    }  # fmt: skip


def batch_merge(models: Path, rounds: int = 7) -> dict[str, Any]:
    """What putting the batches of several renders into one generator call would give: the decoder's time a frame
    at batch 4 (one render's batch) against 8 and 16 (two and four renders merged), alternated, medians."""
    import numpy as np

    from wav2lip_core.config import Settings
    from wav2lip_core.runtime import Runtime

    runtime = Runtime.open(Settings(models_dir=models))
    decoders = {b: runtime.compile(runtime.manifest.generator.split.decoder, {"mel": [b, 1, 80, 16]}) for b in (4, 8, 16)}
    times: dict[int, list[float]] = {b: [] for b in decoders}
    for _ in range(rounds):
        for b, compiled in decoders.items():
            request = compiled.create_infer_request()
            inputs = {p.get_any_name(): np.random.rand(*p.get_shape()).astype(np.float32) for p in compiled.inputs}
            request.infer(inputs)
            t0 = time.perf_counter()
            for _ in range(4):
                request.infer(inputs)
            times[b].append((time.perf_counter() - t0) / 4 / b * 1000)
    ms = {b: round(statistics.median(v), 2) for b, v in times.items()}
    return {"decoder_ms_per_frame": ms, "merged_2_vs_1": round(ms[8] / ms[4], 3), "merged_4_vs_1": round(ms[16] / ms[4], 3),
            "threads": runtime.properties["INFERENCE_NUM_THREADS"]}  # fmt: skip


def health(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    data = json.loads(conn.getresponse().read())
    conn.close()
    return data


def run_server(models: Path, tmp: Path, quick: bool, env: dict[str, str], out: dict[str, Any], save: Callable[[], None]) -> None:
    """Every scenario on one server, into `out`; `save()` after each (a long run leaves what it measured)."""
    with Gunicorn(models, tmp / "gunicorn.log", env={"AVATAR_DIR": str(tmp / "avatars"), "JOB_DIR": str(tmp / "jobs"), **env},
                  ready_timeout_s=300) as server:  # fmt: skip
        port, worker = server.port, next(iter(server.workers()))
        users = 5 if env.get("PRECISION") == "int8" else 3
        scenarios: list[tuple[str, Callable[[], Any]]] = [
            ("health", lambda: health(port)),
            ("second_user", lambda: scenario_second_user(port)),
            ("users", lambda: scenario_users(port, users)),
            ("overload", lambda: scenario_overload(port)),
            ("beside", lambda: scenario_beside(port, max(1, out["overload"]["admitted"] - 1))),
            ("whole", lambda: scenario_whole(port, 3 if quick else 5)),
        ]
        if not quick:
            scenarios += [("video_avatar", lambda: scenario_video_avatar(port, tmp, 5)), ("leaks", lambda: scenario_leaks(server, worker))]
        for name, scenario in scenarios:
            print(f"[multistream] {env or 'default'}: {name}", flush=True)
            out[name] = scenario()
            save()
        out["capacity_streams_admitted"] = out["overload"]["admitted"]
        out["capacity_model"] = capacity_model(out["health"], out["whole"])
        save()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "ir_models")
    ap.add_argument("--int8", action="store_true", help="also the same scenarios with PRECISION=int8 (needs make models-int8)")
    ap.add_argument("--quick", action="store_true", help="skip the video avatar and the leak scenarios")
    ap.add_argument("--set", action="append", default=[], metavar="VAR=VALUE", help="a server setting for every run (repeatable)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    opts = ap.parse_args(argv)
    extra = dict(item.split("=", 1) for item in opts.set)
    res: dict[str, Any] = {"machine": machine(), "settings": extra, "batch_merge": batch_merge(opts.models)}
    precisions = [("bf16", extra)] + ([("int8", extra | {"PRECISION": "int8"})] if opts.int8 else [])
    for name, env in precisions:
        res[name] = {}
        with tempfile.TemporaryDirectory(prefix="multistream-") as tmp:
            run_server(opts.models, Path(tmp), opts.quick, env, res[name], lambda: write_results(res, opts.out))
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
