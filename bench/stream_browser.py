"""Streamed replies in a real browser: the demo page (clients/browser/index.html) in headless Chromium
plays each reply with Media Source Extensions as it arrives, and measures it from its request.

    python -m bench.stream_browser [--url http://127.0.0.1:8000] [--runs 5] [--image FILE] [--audio FILE]

Against a running server whose CORS_ORIGINS lists http://localhost:8123 (the page's origin, served
here), or, without --url, a gunicorn started here on --models with that origin allowed. The image is
registered through the page as its avatar; each run chooses the audio in the page and waits until the
avatar is idle again. Per run, from the page's performance.now() at the request: time to the first
byte of the body, time to the first frame on screen (requestVideoFrameCallback, once the video is
shown), `waiting` events once playing (the stream was late), and the playback rate (currentTime
advance ÷ wall time; 1.0 is real time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from harness import ASSETS, ROOT
from harness.cdp import Chromium
from harness.gunicorn import Gunicorn
from harness.page import PAGE_ORIGIN, PageError, open_page, serve_page, speak, stream_timings

MEDIANS = ("ttfb_ms", "first_frame_ms", "body_ms", "playback_rate")


def first_frame_in_browser(server_url: str, image: Path, audio: Path, runs: int, chromium: str | None = None) -> dict[str, Any]:
    """`runs` replies to `audio` with `image` as the avatar, streamed to the page in headless Chromium:
    per run the page's timings (harness.page.stream_timings) and their medians. PageError if a reply fails."""
    exe = chromium or shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory(prefix="wav2lip-browser-") as tmp, serve_page() as origin, Chromium(exe, Path(tmp)) as browser:
        open_page(browser, origin, server_url, image)
        per_run = []
        for _ in range(runs):
            timings = stream_timings(speak(browser, audio)["lastStream"])
            if timings["outcome"] != "complete":
                raise PageError(f"a reply did not stream whole: {timings}")
            per_run.append(timings)
    return {
        "runs": per_run,
        "median": {k: statistics.median(r[k] for r in per_run) for k in MEDIANS},
        "waiting_total": sum(r["waiting"] for r in per_run),
        "paths": sorted({r["path"] for r in per_run}),  # "mse" unless the browser lacks Media Source Extensions
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help=f"a running server (CORS_ORIGINS must list {PAGE_ORIGIN}); default: start one on --models")
    p.add_argument("--models", type=Path, default=ROOT / "ir_models")
    p.add_argument("--image", type=Path, default=ASSETS / "astronaut.jpg")
    p.add_argument("--audio", type=Path, default=ASSETS / "speech.wav")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--chromium", default=None, help="the browser (default: chromium on PATH)")
    p.add_argument("--out", type=Path, help="also write the result here as JSON")
    args = p.parse_args(argv)
    if args.url:
        result = first_frame_in_browser(args.url, args.image, args.audio, args.runs, args.chromium)
    else:
        with tempfile.TemporaryDirectory(prefix="wav2lip-stream-browser-") as tmp:
            env = {"CORS_ORIGINS": PAGE_ORIGIN, "AVATAR_DIR": str(Path(tmp) / "avatars")}
            with Gunicorn(args.models, Path(tmp) / "gunicorn.log", env=env) as server:
                result = first_frame_in_browser(server.url, args.image, args.audio, args.runs, args.chromium)
    for i, r in enumerate(result["runs"], 1):
        print(f"run {i}: {r['path']}, first byte {r['ttfb_ms']:.0f} ms, first frame on screen {r['first_frame_ms']:.0f} ms, "
              f"body {r['body_ms']:.0f} ms, {r['frames']} frames, {r['waiting']} waiting, "
              f"playback rate {r['playback_rate']:.3f}")  # fmt: skip
    m = result["median"]
    print(f"median: first byte {m['ttfb_ms']:.0f} ms, first frame {m['first_frame_ms']:.0f} ms, playback rate {m['playback_rate']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
