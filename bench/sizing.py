"""What one replica needs, for deploy/k8s/lipsync.yaml's startup probe and resources.

    python -m bench.sizing [--models ir_models]      (make bench-sizing)

Starts the default server (one worker, as each pod runs it) with an empty compile cache and times it to
/health 200 (cold: compile and fill the cache, a new pod), then once more on the filled cache (warm: a
restarted container). On the warm server: 512² requests (6.4 s of speech), 1280×720 requests, and a
10 s 1280×720 video avatar (MAX_AVATAR_SECONDS; make bench-memory has its memory in detail). For each,
the wall time, the worker's CPU seconds (cores used = CPU / wall) and its resident set after; the peak
(VmHWM) at the end. Writes bench/results/sizing.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import noise
from bench.client import generate
from bench.run import AUDIO, IMAGE, avatar_720p, speech
from harness import ROOT
from harness.clips import idle_clip
from harness.gunicorn import Gunicorn, memory_mb
from harness.jobs import http

RESULTS = ROOT / "bench" / "results" / "sizing.json"
BOX_512 = (180, 70, 280, 215)  # bench.run's box around the astronaut's face
REPEATS = 3
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measured(server: Gunicorn, name: str, send: Callable[[str], int]) -> dict[str, object]:
    """Run `send(url)` once; wall, the worker's CPU and cores used, its RSS after."""
    (pid,) = server.workers()
    c0, t0 = cpu_s(pid), time.perf_counter()
    frames = send(server.url)
    wall, cpu = time.perf_counter() - t0, cpu_s(pid) - c0
    row = {"request": name, "frames": frames, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cores": round(cpu / wall, 2)}
    row |= {k: round(v) for k, v in memory_mb(pid).items()}
    print(f"  {name}: {frames} frames in {wall:.2f} s, {cpu / wall:.2f} cores, RSS {row['rss_mb']} MB, peak {row['peak_rss_mb']} MB")
    return row


def video_request(url: str, clip: bytes, audio: bytes) -> int:
    body = {"video": base64.b64encode(clip).decode(), "audio": base64.b64encode(audio).decode()}
    status, _, data = http("POST", f"{url}/api/generate", body, timeout=600)
    if status != 200:
        raise RuntimeError(f"video avatar request answered {status}: {data[:300]!r}")
    return json.loads(data)["frames"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path(os.environ.get("MODELS_DIR", ROOT / "ir_models")))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    image, audio = IMAGE.read_bytes(), AUDIO.read_bytes()
    image_720, box_720 = avatar_720p()
    clip, _ = idle_clip(1280, 720, frames=250, fps=25, crf=23)
    cases = [("512x512 image, 6.4 s", lambda url: generate(url, image, audio, BOX_512).frames)] * REPEATS
    cases += [("1280x720 image, 6.4 s", lambda url: generate(url, image_720, audio, box_720).frames)] * REPEATS
    cases += [("1280x720 10 s video avatar, 10 s", lambda url: video_request(url, clip, speech(10.0)))]
    quiet = noise.wait_quiet(30.0)
    res: dict[str, object] = {"quiet_before": quiet, "cpus": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="wav2lip-sizing-") as tmp:
        cache = Path(tmp) / "ov_cache"
        cache.mkdir()
        for kind in ("cold", "warm"):
            with Gunicorn(args.models, Path(tmp) / f"{kind}.log", cache_dir=cache, env={"AVATAR_DIR": str(Path(tmp) / "avatars")}) as srv:
                (pid,) = srv.workers()
                res[f"{kind}_ready_s"] = round(srv.ready_s, 2)
                res[f"{kind}_ready_rss_mb"] = round(memory_mb(pid)["rss_mb"])
                print(f"{kind} start to /health 200: {srv.ready_s:.2f} s, worker RSS {res[f'{kind}_ready_rss_mb']} MB")
                if kind == "cold":
                    continue
                res["requests"] = [measured(srv, name, send) for name, send in cases]
                res["peak_rss_mb"] = round(memory_mb(pid)["peak_rss_mb"])
    print(f"worker peak RSS {res['peak_rss_mb']} MB; cold ready {res['cold_ready_s']} s, warm {res['warm_ready_s']} s")
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
