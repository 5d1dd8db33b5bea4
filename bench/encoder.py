"""x264 settings for a still background with a moving mouth: CPU per frame, size, PSNR in the face box. `make bench-encoder`.

    python -m bench.encoder [--models ir_models] [--repeats 3]

The 512² test photo with 160 mouths pasted as the server pastes them, two ways: the generator's own
mouths (with random weights: noise, x264's worst case) and a smooth moving mouth (the photo's own
lower face, stretched by a sine: what trained weights paint, roughly). Each is encoded by the
server's writer (`Mp4Writer`, the dirty-box colour conversion, no audio) with each x264 choice; per
choice: the writer's CPU seconds per frame (best of `--repeats`), the file's size, and the PSNR of
the decoded face box against the raw frames. Writes bench/results/encoder.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

from harness import ASSETS, ROOT
from wav2lip_core import TalkingHead
from wav2lip_core import audio as A
from wav2lip_core.compose import Paster, face_input
from wav2lip_core.config import Settings
from wav2lip_core.image import decode_image
from wav2lip_core.schema import Options
from wav2lip_core.video import Mp4Writer

RESULTS = ROOT / "bench" / "results" / "encoder.json"
BOX = (180, 70, 280, 215)
NO_DELAY = "bframes=0:rc-lookahead=0:force-cfr=1"  # what streaming needs: each frame's packet at once
CHOICES = (  # (preset, x264 params); the first is the server's default
    (Settings().x264_preset, Settings().x264_params),
    ("veryfast", f"subme=1:me=dia:trellis=0:ref=1:{NO_DELAY}"),
    ("veryfast", f"subme=0:me=dia:trellis=0:ref=1:{NO_DELAY}"),
    ("superfast", NO_DELAY),
    ("ultrafast", NO_DELAY),
)


def clips(models: Path) -> dict[str, list[np.ndarray]]:
    """The two sets of 160 frames: the generator's mouths and a smooth moving mouth, pasted into the photo."""
    frame = decode_image((ASSETS / "astronaut.jpg").read_bytes(), 10**8)
    sound = A.decode_audio((ASSETS / "speech.wav").read_bytes(), 60)
    n = A.frame_count(sound.samples.shape[0], sound.sample_rate, 25.0)
    mels = A.mel_chunks(A.melspectrogram(A.to_16k_mono(sound)), n, 25.0)
    head = TalkingHead.load(models)
    generated = np.concatenate(list(head.lipsync.generator.run(mels, face_input(frame, BOX))))
    x1, y1, x2, y2 = BOX
    crop = cv2.resize(frame[y1:y2, x1:x2], (96, 96))
    smooth = [np.concatenate([crop[:48], cv2.resize(crop[48:], (96, int(48 * (1 + 0.15 * np.sin(i / 3)))))[:48]]) for i in range(n)]
    paste = lambda mouths: [Paster(frame, BOX, Options().paste).paste(m) for m in mouths]
    return {"generator": paste(generated), "smooth": paste(smooth)}


def encode(frames: list[np.ndarray], preset: str, params: str) -> tuple[bytes, float]:
    """The MP4 and the CPU seconds the writer took (this thread, one x264 thread as served)."""
    h, w = frames[0].shape[:2]
    writer = Mp4Writer(w, h, 25.0, preset, Settings().x264_crf, params)
    t0 = time.thread_time()
    for i, f in enumerate(frames):
        writer.write(f, dirty=None if i == 0 else BOX)
    mp4 = writer.finish()
    return mp4, time.thread_time() - t0


def box_psnr(mp4: bytes, frames: list[np.ndarray]) -> float:
    x1, y1, x2, y2 = BOX
    with av.open(io.BytesIO(mp4)) as c:
        got = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    diff = np.stack([g[y1:y2, x1:x2].astype(np.float64) - f[y1:y2, x1:x2] for g, f in zip(got, frames, strict=True)])
    return float(10 * np.log10(255**2 / np.mean(diff**2)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "ir_models")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = []
    for name, frames in clips(args.models).items():
        for preset, params in CHOICES:
            runs = [encode(frames, preset, params) for _ in range(args.repeats)]
            mp4, cpu = runs[0][0], min(r[1] for r in runs)
            row = {"frames": name, "preset": preset, "params": params, "cpu_ms_per_frame": round(cpu / len(frames) * 1000, 3),
                   "kb": round(len(mp4) / 1024), "box_psnr_db": round(box_psnr(mp4, frames), 2)}  # fmt: skip
            rows.append(row)
            print(f"{name:9s} {preset:9s} {params:60s} {row['cpu_ms_per_frame']:5.2f} ms/frame {row['kb']:5d} KB "
                  f"PSNR box {row['box_psnr_db']:5.2f} dB", flush=True)  # fmt: skip
    args.out.write_text(json.dumps({"size": "512x512", "crf": Settings().x264_crf, "choices": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
