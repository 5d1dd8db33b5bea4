"""Dubbing-length video through the real server: a 2-minute 1080p clip + 2 minutes of speech.

    python -m bench.dubbing [--seconds 120] [--width 1920 --height 1080]     (make bench-dubbing)

Makes a synthetic 1080p video with head motion (harness/clips.py) and speech tiled to the same
length, starts gunicorn with the default settings (a longer deadline and body limit), POSTs both as
multipart with `loop: none`, and reports the time, the output's frames, resolution and durations,
and the worker's peak RSS (VmHWM). Writes bench/results/dubbing.json.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import av

from bench.run import ROOT, speech
from harness.clips import idle_clip
from harness.gunicorn import Gunicorn

RESULTS = ROOT / "bench" / "results" / "dubbing.json"


def multipart(fields: dict[str, tuple[str, bytes]], text: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in text.items()]
    for name, (filename, data) in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def probe(mp4: bytes) -> dict[str, object]:
    with av.open(io.BytesIO(mp4)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for packet in c.demux(v) if packet.size)  # the demuxer ends with an empty flush packet
        return {"width": v.width, "height": v.height, "fps": float(v.average_rate), "frames": frames,
                "video_s": float(v.duration * v.time_base), "audio_s": float(a.duration * a.time_base)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--models", type=Path, default=ROOT / "ir_models")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    fps, n = 25, math.ceil(args.seconds * 25)
    with tempfile.TemporaryDirectory(prefix="wav2lip-dubbing-") as tmp:
        t0 = time.perf_counter()
        idle_clip(args.width, args.height, frames=n, fps=fps, crf=23, period=250, out=Path(tmp) / "clip.mp4")
        video = (Path(tmp) / "clip.mp4").read_bytes()
        print(f"made a {args.seconds:g} s {args.width}×{args.height} clip ({len(video) / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s")
        body, content_type = multipart({"video": ("clip.mp4", video), "audio": ("speech.wav", speech(args.seconds))}, {"loop": "none"})
        env = {"REQUEST_TIMEOUT_S": "1800", "GUNICORN_TIMEOUT": "1800", "MAX_REQUEST_BYTES": str(len(body) + 1024),
               "AVATAR_DIR": str(Path(tmp) / "avatars")}  # fmt: skip
        with Gunicorn(args.models, Path(tmp) / "gunicorn.log", env=env) as srv:
            before = srv.worker_memory_mb()
            headers = {"Content-Type": content_type, "Accept": "video/mp4"}
            req = urllib.request.Request(f"{srv.url}/api/generate", data=body, headers=headers)
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=1800) as resp:
                mp4, frames = resp.read(), int(resp.headers["X-Frames"])
            wall = time.perf_counter() - t0
            after = srv.worker_memory_mb()
    result = {"seconds": args.seconds, "input": f"{args.width}x{args.height}", "input_mb": len(video) / 1e6, "wall_s": wall,
              "frames": frames, "output": probe(mp4), "workers_at_ready": before, "workers_after": after,
              "peak_rss_mb": max(m["peak_rss_mb"] for m in after.values())}  # fmt: skip
    out = result["output"]
    print(f"{frames} frames {out['width']}×{out['height']} in {wall:.1f} s; video {out['video_s']:.2f} s, audio {out['audio_s']:.2f} s; "
          f"worker peak RSS {result['peak_rss_mb']:.0f} MB")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
