"""Before/after benchmark in one run: PyTorch eager reference vs the OpenVINO generator vs the HTTP server,
and beside them Intel's digital-avatar OpenVINO backend, warm (harness/peers.py; needs ffmpeg on PATH).

    python -m bench.run            # everything, ~3 min on a quiet 2-core box (more if it must wait or redo)
    python -m bench.run --quick    # without the 120 s / 720p request and the workers × threads servers

Uses checkpoints/wav2lip_gan.pth (or wav2lip.pth) when present, otherwise a seeded random generator
in the original checkpoint format; either is converted by the real converter, so the reference and
the IR share the weights. Prints a table and writes bench/results/latest.json; bench/README.md says
what each number means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from bench import noise, report
from bench.client import Call, concurrent, generate
from harness import ASSETS, ROOT
from harness.checkpoints import run_converter, write_checkpoints
from harness.gunicorn import Gunicorn

RESULTS = ROOT / "bench" / "results" / "latest.json"
IMAGE, AUDIO = ASSETS / "astronaut.jpg", ASSETS / "speech.wav"
BOX = (180, 70, 280, 215)  # x1, y1, x2, y2 around the astronaut's face (512×512)
CANVAS_720P = (1280, 720)
OFFSET_720P = (384, 104)  # where the 512² portrait sits on the 720p canvas: centred
SEED = 0
TIMED_REQUESTS = 5  # the 6.4 s request, after one warm-up; the median is reported
NEW_AVATARS = 3  # requests without a box on never-seen images, then each again (medians)
HD_REQUESTS = 3  # the 6.4 s speech on the 1280×720 canvas (median)
LENGTHS_S = (5.0, 30.0, 120.0)
CONCURRENCY_REQUESTS = 6  # per (workers × threads, clients) case
WORKER_TIMEOUT_S = 900.0
QUIET_WAIT_S = 20.0  # per stage, at most, for other processes to calm down (see bench/noise.py)
_T0 = time.monotonic()


def progress(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f} s] {msg}", flush=True)


@dataclass
class Setup:
    tmp: Path
    checkpoint: Path
    weights: str  # "real (<file>)" or "random (seed N)"
    ir: Path
    cache: Path
    convert_s: float

    def server(self, name: str, **env: str) -> Gunicorn:
        return Gunicorn(self.ir, self.tmp / f"gunicorn-{name}.log", cache_dir=self.cache, env=env)


def run_worker(*args: str) -> dict:
    """`python -m bench._worker ARGS` in its own process; its JSON answer."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench._worker", *args], cwd=ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench._worker {args[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare(tmp: Path) -> Setup:
    """A checkpoint in the original format (real if present) and its IR, made by the real converter."""
    real = [p for p in (ROOT / "checkpoints/wav2lip_gan.pth", ROOT / "checkpoints/wav2lip.pth") if p.is_file()]
    if real:
        checkpoint, weights = real[0], f"real ({real[0].name})"
    else:
        checkpoint, weights = write_checkpoints(tmp, SEED)["wav2lip"], f"random (seed {SEED})"
    progress(f"weights: {weights}; converting {checkpoint.name} to OpenVINO IR …")
    args = ["--wav2lip", str(checkpoint), "--int8", "--out", str(tmp / "ir")]
    s3fd = ROOT / "checkpoints/s3fd.pth"
    if s3fd.is_file():
        args += ["--s3fd", str(s3fd)]
    t0 = time.perf_counter()
    proc = run_converter(*args)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_to_openvino.py failed ({proc.returncode}):\n{proc.stdout[-1000:]}{proc.stderr[-2000:]}")
    (tmp / "ov_cache").mkdir()
    return Setup(tmp, checkpoint, weights, tmp / "ir", tmp / "ov_cache", time.perf_counter() - t0)


def speech(seconds: float) -> bytes:
    """The test speech tiled (or cut) to `seconds`, as an in-memory 16-bit WAV."""
    samples, rate = sf.read(AUDIO, dtype="int16")
    n = round(seconds * rate)
    tiled = np.tile(samples, -(-n // len(samples)))[:n]
    buf = io.BytesIO()
    sf.write(buf, tiled, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _jpeg(bgr: np.ndarray) -> bytes:
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for a {bgr.shape} image")
    return jpg.tobytes()


def new_avatars(n: int) -> list[bytes]:
    """The astronaut with a different 8×8 corner mark each: new pixels, so the face-box cache misses."""
    portrait = cv2.imread(str(IMAGE))
    marked = [portrait.copy() for _ in range(n)]
    for i, img in enumerate(marked):
        img[:8, :8] = 60 + 40 * i
    return [_jpeg(img) for img in marked]


def avatar_720p() -> tuple[bytes, tuple[int, int, int, int]]:
    """The astronaut centred on a grey 1280×720 canvas (JPEG) and the face box moved with it."""
    portrait = cv2.imread(str(IMAGE))
    (w, h), (dx, dy) = CANVAS_720P, OFFSET_720P
    canvas = np.full((h, w, 3), 128, np.uint8)
    canvas[dy : dy + portrait.shape[0], dx : dx + portrait.shape[1]] = portrait
    x1, y1, x2, y2 = BOX
    return _jpeg(canvas), (x1 + dx, y1 + dy, x2 + dx, y2 + dy)


def summarize(call: Call) -> dict[str, object]:
    return {
        "wall_s": call.wall_s, "frames": call.frames, "audio_s": call.duration_s, "fps": call.fps, "rtf": call.wall_s / call.duration_s,
        "timings_ms": call.timings_ms, "client_ms": call.client_ms, "transport_ms": call.transport_ms, "mp4_bytes": call.mp4_bytes,
        "face_box": call.face_box,
    }  # fmt: skip


def median_call(calls: list[Call]) -> dict[str, object]:
    """The median wall time and, per stage, the median over the calls."""
    wall = statistics.median(c.wall_s for c in calls)
    stages = {k: statistics.median(c.timings_ms.get(k, 0.0) for c in calls) for k in calls[0].timings_ms}
    frames, audio_s = calls[0].frames, calls[0].duration_s
    return {
        "wall_s": wall, "frames": frames, "audio_s": audio_s, "fps": frames / wall, "rtf": wall / audio_s, "timings_ms": stages,
        "client_ms": statistics.median(c.client_ms for c in calls), "transport_ms": statistics.median(c.transport_ms for c in calls),
        "runs_s": [c.wall_s for c in calls], "mp4_bytes": calls[0].mp4_bytes,
    }  # fmt: skip


def stage_server(setup: Setup) -> dict[str, object]:
    """Default server (1 worker), fresh: the first request, the 6.4 s request, new vs repeated avatars."""
    image, audio = IMAGE.read_bytes(), AUDIO.read_bytes()
    out: dict[str, object] = {}
    cache = "warm" if any(setup.cache.iterdir()) else "empty"
    with setup.server("default") as srv:
        out["ready_s"], out["compile_cache"] = srv.ready_s, cache
        progress(f"server ready in {srv.ready_s:.1f} s (compile cache {cache}); warm-up request …")
        out["first_request"] = summarize(generate(srv.url, image, audio, BOX))
        calls = []
        for i in range(TIMED_REQUESTS):
            calls.append(generate(srv.url, image, audio, BOX))
            progress(f"6.4 s request {i + 1}/{TIMED_REQUESTS}: {calls[-1].wall_s:.2f} s, {calls[-1].fps:.1f} frames/s")
        out["e2e"] = median_call(calls)
        avatars = new_avatars(NEW_AVATARS)
        out["new_avatar"] = median_call([generate(srv.url, a, audio) for a in avatars])
        out["repeat_avatar"] = median_call([generate(srv.url, a, audio) for a in avatars])
        progress(
            f"{NEW_AVATARS} avatars without box: detect {out['new_avatar']['timings_ms'].get('detect', 0):.1f} ms new, "
            f"{out['repeat_avatar']['timings_ms'].get('detect', 0):.2f} ms repeated"
        )
        hd, hd_box = avatar_720p()
        out["hd_720p"] = median_call([generate(srv.url, hd, audio, hd_box) for _ in range(HD_REQUESTS)])
        progress(f"1280×720 avatar, same speech: {out['hd_720p']['wall_s']:.2f} s (median of {HD_REQUESTS})")
        out["workers"] = srv.worker_memory_mb()
    return out


def stage_server_int8(setup: Setup) -> dict[str, object]:
    """A server with PRECISION=int8 (the INT8 generator): one warm-up request, then the 6.4 s request's median."""
    image, audio = IMAGE.read_bytes(), AUDIO.read_bytes()
    with setup.server("int8", PRECISION="int8") as srv:
        first = summarize(generate(srv.url, image, audio, BOX))
        calls = [generate(srv.url, image, audio, BOX) for _ in range(TIMED_REQUESTS)]
        e2e = median_call(calls)
        progress(f"PRECISION=int8 server: {e2e['wall_s']:.2f} s, {e2e['fps']:.1f} frames/s (median of {TIMED_REQUESTS})")
        return {"ready_s": srv.ready_s, "first_request": first, "e2e": e2e, "workers": srv.worker_memory_mb()}


def stage_lengths(setup: Setup, lengths: tuple[float, ...]) -> dict[str, object]:
    """Default server, one warm-up request, then the speech tiled to each length (512² avatar, box given)."""
    image = IMAGE.read_bytes()
    with setup.server("lengths") as srv:
        generate(srv.url, image, AUDIO.read_bytes(), BOX)
        points = []
        for seconds in lengths:
            points.append(summarize(generate(srv.url, image, speech(seconds), BOX)))
            progress(f"{seconds:g} s of audio: {points[-1]['wall_s']:.2f} s, {points[-1]['fps']:.1f} frames/s")
    return {"points": points}


def linear_fit(points: list[dict]) -> dict[str, float]:
    """Least squares wall = fixed + per_frame × frames, and how well it fits."""
    frames = np.array([p["frames"] for p in points], float)
    wall = np.array([p["wall_s"] for p in points], float)
    slope, intercept = np.polyfit(frames, wall, 1)
    fitted = intercept + slope * frames
    r2 = 1 - float(((wall - fitted) ** 2).sum() / ((wall - wall.mean()) ** 2).sum())
    return {
        "fixed_s": float(intercept),
        "ms_per_frame": float(slope * 1000),
        "r2": r2,
        "max_rel_residual": float(np.max(np.abs(wall - fitted) / wall)),
    }


def stage_720p(setup: Setup) -> dict[str, object]:
    """A fresh default server, one 120 s request on a 1280×720 avatar: the worker's peak RSS."""
    image, box = avatar_720p()
    with setup.server("720p") as srv:
        before = srv.worker_memory_mb()
        progress(f"fresh server ready in {srv.ready_s:.1f} s (compile cache warm); 120 s of audio on 1280×720 …")
        call = summarize(generate(srv.url, image, speech(120.0), box))
        after = srv.worker_memory_mb()
    peak = max(m["peak_rss_mb"] for m in after.values())
    progress(f"120 s on 720p: {call['wall_s']:.1f} s, {call['fps']:.1f} frames/s, worker peak RSS {peak:.0f} MB")
    return {"ready_s": srv.ready_s, "request": call, "workers_at_ready": before, "workers_after": after, "peak_rss_mb": peak}


def stage_workers_threads(setup: Setup) -> list[dict[str, object]]:
    """1 worker × 2 threads vs 2 × 1, each with 1 and 2 concurrent clients sending the 6.4 s request."""
    image, audio = IMAGE.read_bytes(), AUDIO.read_bytes()
    cores = len(os.sched_getaffinity(0))
    rows = []
    for workers in (1, 2):
        threads = max(1, cores // workers)
        env = {"WEB_CONCURRENCY": str(workers), "INFERENCE_NUM_THREADS": str(threads), "MAX_QUEUE": str(2 * CONCURRENCY_REQUESTS)}
        with setup.server(f"{workers}x{threads}", **env) as srv:
            progress(f"{workers} worker(s) × {threads} thread(s): ready in {srv.ready_s:.1f} s")
            concurrent(srv.url, workers, workers, image, audio, BOX)  # warm-up, one per worker (likely)
            for clients in (1, 2):
                calls, wall = concurrent(srv.url, clients, CONCURRENCY_REQUESTS, image, audio, BOX)
                frames = sum(c.frames for c in calls)
                per_worker = Counter(srv.served_by([c.request_id for c in calls]).values())
                row = {"workers": workers, "threads": threads, "clients": clients, "requests": len(calls), "wall_s": wall,
                       "fps": frames / wall, "mean_latency_s": statistics.mean(c.wall_s for c in calls),
                       "max_latency_s": max(c.wall_s for c in calls),
                       "requests_per_worker": sorted(per_worker.values(), reverse=True)}  # fmt: skip
                rows.append(row)
                progress(f"  {clients} client(s): {row['fps']:.1f} frames/s, mean latency {row['mean_latency_s']:.2f} s")
            peak = max(m["peak_rss_mb"] for m in srv.worker_memory_mb().values())
            for row in rows[-2:]:
                row["worker_peak_rss_mb"] = peak
    return rows


def check(value: float | None, target: float, higher_is_better: bool, timed_in: tuple[str, ...], noisy: list[str]) -> dict[str, object]:
    """A target check; `pass` is None when not measured (--quick); `disturbed` names the noisy stages it was timed in."""
    bound = f"{'≥' if higher_is_better else '≤'} {target:g}"
    disturbed = [s for s in timed_in if s in noisy]
    if value is None:
        return {"value": None, "target": bound, "pass": None, "disturbed": disturbed}
    ok = value >= target if higher_is_better else value <= target
    return {"value": round(value, 3), "target": bound, "pass": bool(ok), "disturbed": disturbed}


def checks(res: dict) -> dict[str, dict[str, object]]:
    """The issues' targets, each with its measured value and pass/fail."""
    ref, mo, srv, noisy = res["reference"], res["model_only"], res["server"], res["noisy_stages"]
    int8 = res["server_int8"]["e2e"]
    peer = res.get("peer_intel")  # None when skipped (no ffmpeg)
    det_ms = mo["detector"]["ms"]
    rss = res["rss_720p"]["peak_rss_mb"] if res.get("rss_720p") else None
    longest = max(res["lengths"]["points"], key=lambda p: p["frames"])
    per_frame = lambda p: p["wall_s"] / p["frames"]
    wall = srv["e2e"]["wall_s"]
    default_1x2 = [r for r in res.get("workers_threads") or [] if r["workers"] == 1]
    return {
        "speedup_vs_reference": check(ref["seconds"] / wall, 22.0, True, ("reference", "server"), noisy),
        # Intel's digital-avatar OpenVINO backend, warm, at its default precision (harness/peers.py) vs our server end to end
        "speedup_vs_intel_warm": check(peer["seconds"] / wall if peer else None, 2.7, True, ("peer_intel", "server"), noisy),
        "int8_speedup_vs_reference": check(ref["seconds"] / int8["wall_s"], 30.0, True, ("reference", "server_int8"), noisy),
        "int8_speedup_vs_intel_warm": check(
            peer["seconds"] / int8["wall_s"] if peer else None, 4.0, True, ("peer_intel", "server_int8"), noisy
        ),
        # the request end to end (HTTP, decode, paste, H.264, AAC) vs the generator alone on the same 160 frames
        "e2e_over_generator_alone": check(wall / mo["served"]["seconds"], 1.1, False, ("model_only", "server"), noisy),
        "int8_e2e_over_generator_alone": check(int8["wall_s"] / mo["int8"]["seconds"], 1.1, False, ("model_only", "server_int8"), noisy),
        "rtf_512": check(srv["e2e"]["rtf"], 0.13, False, ("server",), noisy),
        "hd_720p_over_512": check(srv["hd_720p"]["wall_s"] / wall, 1.3, False, ("server",), noisy),
        # 1 worker × 2 threads (the default): frames/s with 2 clients at once over 1 client's
        "two_clients_fps_over_one": check(
            default_1x2[1]["fps"] / default_1x2[0]["fps"] if len(default_1x2) == 2 else None, 1.0, True, ("workers_threads",), noisy
        ),
        "rss_120s_720p_mb": check(rss, 800.0, False, (), noisy),
        "bf16_drift_max_abs": check(mo["drift_served_vs_f32"]["max_abs"], 2.0, False, (), noisy),
        "repeat_avatar_detect_ms": check(
            srv["repeat_avatar"]["timings_ms"].get("detect", 0.0), max(2.0, 0.1 * det_ms), False, ("model_only", "server"), noisy
        ),
        # the server's detect stage on a new avatar vs the detector timed alone (+25 % and 5 ms of noise)
        "new_avatar_detect_ms": check(
            srv["new_avatar"]["timings_ms"].get("detect", 0.0), 1.25 * det_ms + 5.0, False, ("model_only", "server"), noisy
        ),
        "first_request_over_median": check(srv["first_request"]["wall_s"] / wall, 1.2, False, ("server",), noisy),
        # linear cost: a frame of the longest clip costs at most 15 % more than one of the 6.4 s request (median of 5)
        "per_frame_cost_longest_over_6s": check(per_frame(longest) / per_frame(srv["e2e"]), 1.15, False, ("server", "lengths"), noisy),
        # TalkingHead.estimate_seconds() made before each request vs its measured time (6.4 s and 30 s of audio)
        "estimate_error_max": check(max(abs(p["ratio"] - 1) for p in res["estimate"]["points"]), 0.3, False, ("estimate",), noisy),
    }


def machine() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), [])
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    mem_kb = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal:")))
    return {
        "cpu": model, "cores": len(os.sched_getaffinity(0)), "mem_gb": round(mem_kb / 1024**2, 1),
        "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags],
        "python": platform.python_version(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "--short", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }  # fmt: skip


def write_results(res: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(path)


def measure(res: dict, name: str, opts: argparse.Namespace, fn: Callable[..., object], *args: object) -> None:
    """Run one stage into res[name] on a machine as quiet as we can get: wait (bounded) for other processes
    to calm down, record how much CPU they used meanwhile, and redo a disturbed or failed stage (up to
    --retries times), keeping the least disturbed attempt; raises when no attempt succeeded."""
    attempts, errors = [], []
    for attempt in range(1 + opts.retries):
        quiet = noise.wait_quiet(opts.quiet_wait)
        try:
            with noise.CpuMeter() as meter:
                value = fn(*args)
        except (RuntimeError, OSError) as e:  # a server that died or lost its port on this shared box: try again
            if attempt == opts.retries and not attempts:
                raise
            errors.append(f"{type(e).__name__}: {e}")
            progress(f"{name} failed ({errors[-1]}); {'repeating it' if attempt < opts.retries else 'keeping the earlier attempt'}")
            continue
        attempts.append((meter.result["foreign_cores"], value, {"before": quiet, **meter.result}))
        if meter.result["foreign_cores"] <= noise.NOISY_CORES:
            break
        again = "repeating it" if attempt < opts.retries else "keeping the least disturbed attempt"
        progress(f"{name}: other processes used {meter.result['foreign_cores']:.2f} cores meanwhile; {again}")
    _, res[name], res["noise"][name] = min(attempts, key=lambda a: a[0])
    res["noise"][name] |= {"attempts": len(attempts) + len(errors), "errors": errors}


def stage_reference(setup: Setup) -> dict:
    progress("[1/4] PyTorch eager reference (cold process, batch 128) …")
    out = run_worker("reference", str(setup.checkpoint), str(IMAGE), str(AUDIO), *map(str, BOX))
    progress(f"reference: {out['seconds']:.1f} s for {out['frames']} frames")
    return out


def stage_model_only(setup: Setup) -> dict:
    progress("[2/4] OpenVINO generator alone, served precision, int8 and f32 …")
    out = run_worker("model-only", str(setup.ir), str(IMAGE), str(AUDIO), *map(str, BOX))
    fps = ", ".join(f"{out[k]['fps']:.1f} {out[k]['precision']}" for k in ("served", "int8", "f32"))
    progress(f"model only, frames/s: {fps}; int8 vs f32 PSNR {out['drift_int8_vs_f32']['psnr_db']} dB")
    return out


def stage_peer_intel(setup: Setup) -> dict:
    progress("[3/4] Intel's digital-avatar OpenVINO backend, warm (batch 128, AVI + ffmpeg) …")
    out = run_worker("intel-warm", str(setup.ir), str(IMAGE), str(AUDIO), *map(str, BOX))
    progress(f"Intel peer: {out['seconds']:.2f} s for {out['frames']} frames at {out['precision']} (MP4: {out['mp4_frames']} frames)")
    return out


def stage_estimate(setup: Setup) -> dict:
    progress("TalkingHead.estimate_seconds vs measured generate (6.4 s and 30 s, in process) …")
    out = run_worker("estimate", str(setup.ir), str(IMAGE), str(AUDIO))
    progress("estimate/measured: " + ", ".join(f"{p['audio_s']:g} s → {p['ratio']:.2f}" for p in out["points"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="skip the 120 s requests and the workers × threads servers")
    p.add_argument("--quiet-wait", type=float, default=QUIET_WAIT_S, metavar="S",
                   help=f"before each stage, wait up to S seconds for other processes to go quiet (default {QUIET_WAIT_S:g})")  # fmt: skip
    p.add_argument("--retries", type=int, default=2, choices=range(4), metavar="N",
                   help="redo a stage disturbed by other processes up to N times (default 2)")  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS.relative_to(ROOT)})")
    args = p.parse_args(argv)
    res: dict = {"machine": machine(), "quick": args.quick, "noise": {}}
    with tempfile.TemporaryDirectory(prefix="wav2lip-bench-") as tmp:
        setup = prepare(Path(tmp))
        progress(f"converted in {setup.convert_s:.1f} s")
        res["setup"] = {"weights": setup.weights, "convert_s": setup.convert_s, "image": IMAGE.name, "audio": AUDIO.name,
                        "box": list(BOX), "fps": 25}  # fmt: skip
        measure(res, "reference", args, stage_reference, setup)
        measure(res, "model_only", args, stage_model_only, setup)
        res["machine"]["openvino"] = res["model_only"]["openvino"]
        if shutil.which("ffmpeg"):
            measure(res, "peer_intel", args, stage_peer_intel, setup)
        else:
            progress("[3/4] skipping Intel's digital-avatar backend: it needs ffmpeg on PATH (apt-get install ffmpeg)")
            res["peer_intel"] = None
        progress("[4/4] gunicorn server over HTTP …")
        measure(res, "server", args, stage_server, setup)
        measure(res, "server_int8", args, stage_server_int8, setup)
        measure(res, "lengths", args, stage_lengths, setup, LENGTHS_S[:2] if args.quick else LENGTHS_S)
        measure(res, "estimate", args, stage_estimate, setup)
        points = sorted([*res["lengths"]["points"], res["server"]["e2e"]], key=lambda p: p["audio_s"])
        res["lengths"] |= {"points": points, "linear_fit": linear_fit(points)}
        if not args.quick:
            measure(res, "rss_720p", args, stage_720p, setup)
            measure(res, "workers_threads", args, stage_workers_threads, setup)
    res["noisy_stages"] = [k for k, v in res["noise"].items() if v["foreign_cores"] > noise.NOISY_CORES]
    res["checks"] = checks(res)
    res["elapsed_s"] = time.monotonic() - _T0
    write_results(res, args.out)
    print()
    print(report.table(res))
    print(f"\nwrote {args.out} in {res['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
