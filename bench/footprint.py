"""The memory estimate's parts (lipsync_server/memory.py), measured: each kind of work's peak private memory.

    python -m bench.footprint [--models ir_models] [--clips DIR]            (every case)
    python -m bench.footprint --case NAME [--models …] [--clips …]          (one, in this process)

Each case runs in a fresh process: the models loaded, the whole generator compiled and run once (what
a worker keeps after its first video avatar), the heap trimmed; then the work, with a thread reading
`RssAnon` every 3 ms. Per case: the peak and the after over the idle process (after, before and after
`malloc_trim(0)`, and the trim's time), beside `memory.Work(...).bytes()`, the server's estimate for
it. Writes bench/results/footprint.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from bench.memory import Clips
from bench.run import AUDIO, IMAGE, speech, write_results
from harness import ROOT
from lipsync_server.memory import MB, Work, private_bytes, trim
from wav2lip_core import TalkingHead, frames
from wav2lip_core.avatar import Avatar, is_video
from wav2lip_core.pipeline import LipSync
from wav2lip_core.schema import Options

RESULTS = ROOT / "bench" / "results" / "footprint.json"
SAMPLE_S = 0.003
AUDIO_S = 10.0
DUB_S = 20.0
CASES = ("register_1080p", "register_720p", "registered_1080p_stream", "registered_1080p_whole", "registered_720p_stream",
         "registered_720p_whole", "photo_512_whole", "inline_720p_whole", "dub_1080p_20s_whole", "three_720p_streams")  # fmt: skip


def stream(lip: LipSync, avatar: Avatar | bytes, audio: bytes) -> None:
    render = lip.start(avatar, audio, Options(), fragmented=True)
    for _ in render.batches():
        render.writer.take()
    render.finish()
    render.close()


def whole(lip: LipSync, avatar: Avatar | bytes, audio: bytes, loop: str = "pingpong") -> None:
    lip.start(avatar, audio, Options(loop=loop), video=None if isinstance(avatar, Avatar) else is_video(avatar)).complete()


def cases(lip: LipSync, clips: Clips, scratch: Path) -> dict[str, Callable[[], tuple[Callable[[], None], Work]]]:
    """Per case, what makes it ready (a registered avatar's frame files, before measuring), giving the work to measure
    and the estimate the server makes for it."""
    mapped = lambda clip: lip.build(clip.read_bytes(), Options(), Path(tempfile.mkdtemp(dir=scratch)))
    a10, hd, sd = speech(AUDIO_S), (1920, 1080), (1280, 720)
    n, values = round(AUDIO_S * 25), round(AUDIO_S * 16000)
    return {
        "register_1080p": lambda: (partial(register, lip, clips.hd10, scratch), Work(*hd, decoders=1, renders=False)),
        "register_720p": lambda: (partial(register, lip, clips.living[0], scratch), Work(*sd, decoders=1, renders=False)),
        "registered_1080p_stream": lambda: (partial(stream, lip, mapped(clips.hd10), a10), Work(*hd, n, values)),
        "registered_1080p_whole": lambda: (partial(whole, lip, mapped(clips.hd10), a10), Work(*hd, n, values, whole=True)),
        "registered_720p_stream": lambda: (partial(stream, lip, mapped(clips.living[0]), a10), Work(*sd, n, values)),
        "registered_720p_whole": lambda: (partial(whole, lip, mapped(clips.living[0]), a10), Work(*sd, n, values, whole=True)),
        "photo_512_whole": lambda: (partial(whole, lip, IMAGE.read_bytes(), AUDIO.read_bytes()), Work(512, 512, 160, 102400, whole=True)),
        "inline_720p_whole": lambda: (partial(whole, lip, clips.living[1].read_bytes(), a10), Work(*sd, n, values, whole=True)),
        "dub_1080p_20s_whole": lambda: (
            partial(whole, lip, clips.hd20.read_bytes(), speech(DUB_S), "none"),
            Work(*hd, round(DUB_S * 25), round(DUB_S * 16000), 2, whole=True),
        ),
        "three_720p_streams": lambda: (partial(three, lip, [mapped(c) for c in clips.living[:3]], a10), Work(*sd, n, values)),
    }


def register(lip: LipSync, clip: Path, scratch: Path) -> None:
    with frames.staged(scratch) as folder:
        lip.build(clip.read_bytes(), Options(), folder)


def three(lip: LipSync, avatars: list[Avatar], audio: bytes) -> None:
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda a: stream(lip, a, audio), avatars))


def measure(run: Callable[[], None]) -> dict[str, float]:
    """Peak and after of `run()`'s private memory over the idle process, in MB; the trim after it."""
    gc.collect()
    trim()
    idle, peak, stop = private_bytes(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], private_bytes())
            stop.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run()
    stop.set()
    sampler.join()
    after = private_bytes()
    t0 = time.perf_counter()
    trim()
    trim_ms = (time.perf_counter() - t0) * 1000
    mb = lambda b: round((b - idle) / MB, 1)
    return {"idle_mb": round(idle / MB), "peak_mb": mb(peak[0]), "after_mb": mb(after), "trimmed_mb": mb(private_bytes()),
            "trim_ms": round(trim_ms, 1)}  # fmt: skip


def one(case: str, models: Path, clips: Clips) -> dict[str, float]:
    """One case in this process, after the warm-up a worker has had once it played a video avatar."""
    lip = TalkingHead.load(models_dir=models).lipsync
    with tempfile.TemporaryDirectory(prefix="wav2lip-footprint-") as tmp:
        whole(lip, clips.living[2].read_bytes(), speech(0.5))  # the whole generator compiled and its requests made
        run, work = cases(lip, clips, Path(tmp))[case]()
        n = 3 if case.startswith("three") else 1
        return measure(run) | {"estimate_mb": round(n * work.bytes() / MB, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path(os.environ.get("MODELS_DIR", ROOT / "ir_models")))
    p.add_argument("--clips", type=Path, default=Path(tempfile.gettempdir()) / "wav2lip-bench-clips")
    p.add_argument("--case", help="run this one case here and print its JSON")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    clips = Clips(args.clips)
    if args.case:
        print(json.dumps(one(args.case, args.models, clips)))
        return 0
    res = {}
    for case in CASES:
        cmd = [sys.executable, "-m", "bench.footprint", "--case", case, "--models", str(args.models), "--clips", str(args.clips)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        res[case] = json.loads(out.strip().splitlines()[-1])
        print(f"{case:26s} {res[case]}", flush=True)
    write_results(res, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
