"""How long a request will take on this machine: a linear cost model measured at load time.

`generate` time is linear in frames (the bench fits wall = fixed + per-frame × frames with R² = 1.000
from 5 s to 120 s of audio). At load the pipeline renders two short clips of a synthetic still
avatar (8 and 40 frames, rounded up to whole generator batches) to measure this machine's fixed and per-frame cost; the
frame size adds `MS_PER_MEGAPIXEL_FRAME` per frame. Each real request then nudges a correction
factor, so the estimate follows a machine that is busier (or quieter) than at load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .audio import SAMPLE_RATE, Audio
from .avatar import STILL_FPS, Avatar
from .compose import face_input
from .schema import Options

if TYPE_CHECKING:
    from .pipeline import LipSync

# bench/results: 120 s of audio on 512² cost 7.63 ms/frame, on 1280×720 (same face box) 8.73 ms/frame:
# 1.1 ms more for 0.66 more megapixels (x264 still looks at every macroblock of a static background).
MS_PER_MEGAPIXEL_FRAME = 1.7
CALIBRATION_SIDE = 384  # a square avatar, face box a third of it
CALIBRATION_FRAMES = (8, 40)  # 4 and 12 frames (~16 and ~50 ms of rendering) gave 50 % errors: noise-bound
OBSERVED_WEIGHT = 0.3  # how much one real request moves the correction factor
CLIP_FRAME_FACTOR = 1.1  # generator.py: a video avatar runs the whole network, ~10 % more work a frame than the split decoder
REFERENCE_PIXELS = 512 * 512  # /health states capacity in frames/s of a 512² still avatar


@dataclass
class CostModel:
    """seconds = (fixed + frames × (per_frame + megapixels × MS_PER_MEGAPIXEL_FRAME / 1000)) × correction."""

    fixed_s: float
    per_frame_s: float
    calibration_pixels: int
    correction: float = 1.0
    observed: int = field(default=0)

    def seconds(self, frames: int, pixels: int) -> float:
        return self.fixed_s * self.correction + frames * self.frame_seconds(pixels)

    def frame_seconds(self, pixels: int, still: bool = True) -> float:
        """One more frame of a `pixels`-sized avatar (a still one, or a video avatar: the whole network)."""
        extra = (pixels - self.calibration_pixels) / 1e6 * MS_PER_MEGAPIXEL_FRAME / 1000
        seconds = max(self.per_frame_s + extra, 0.2 * self.per_frame_s) * self.correction
        return seconds if still else seconds * CLIP_FRAME_FACTOR

    def stream_load(self, fps: float, pixels: int, still: bool) -> float:
        """The share of this worker's compute a stream needs to keep real time (1.0: all of it)."""
        return fps * self.frame_seconds(pixels, still)

    def observe(self, frames: int, pixels: int, seconds: float) -> None:
        """Fold one measured request into the correction factor (bounded: one odd request cannot wreck it)."""
        predicted = self.seconds(frames, pixels) / self.correction  # the model without its correction
        ratio = min(3.0, max(0.33, seconds / predicted))
        self.correction += OBSERVED_WEIGHT * (ratio - self.correction)
        self.observed += 1

    def describe(self) -> dict[str, float]:
        return {"fixed_s": round(self.fixed_s, 4), "ms_per_frame": round(self.per_frame_s * 1000, 3),
                "correction": round(self.correction, 3), "requests_observed": self.observed}  # fmt: skip

    @classmethod
    def calibrate(cls, lipsync: LipSync) -> CostModel:
        """Time the real pipeline on a synthetic still avatar for about 8 and about 40 frames (whole batches)."""
        avatar = _synthetic_avatar()
        rng = np.random.default_rng(0)
        times = []
        batch = lipsync.generator.batch
        for wanted in CALIBRATION_FRAMES:
            frames = -(-wanted // batch) * batch  # whole batches: a padded last batch would cost frames not counted
            samples = (0.1 * rng.standard_normal((round(frames / STILL_FPS * SAMPLE_RATE), 1))).astype(np.float32)
            t0 = time.perf_counter()
            lipsync.start(avatar, Audio(samples, SAMPLE_RATE), Options()).complete()
            times.append((frames, time.perf_counter() - t0))
        (n1, t1), (n2, t2) = times
        per_frame = max((t2 - t1) / (n2 - n1), 1e-4)
        return cls(max(0.0, t1 - per_frame * n1), per_frame, CALIBRATION_SIDE**2)


def _synthetic_avatar() -> Avatar:
    """A smooth gradient with a face-sized box: what the encoder sees around a real face, roughly."""
    side = CALIBRATION_SIDE
    ramp = np.linspace(40, 200, side, dtype=np.float32)
    frame = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1), np.full((side, side), 120.0)], axis=2)
    frame = np.ascontiguousarray(frame.astype(np.uint8))
    box = (side // 3, side // 3, 2 * side // 3, 2 * side // 3)
    return Avatar((frame,), (box,), face_input(frame, box)[None], STILL_FPS, "box", "image")
