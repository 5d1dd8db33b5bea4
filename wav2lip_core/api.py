"""The public Python API: lip-sync inside your own program, no HTTP.

    from wav2lip_core import TalkingHead
    head = TalkingHead.load(models_dir="ir_models")
    avatar = head.prepare_avatar("test_assets/astronaut.jpg")   # decode + face detection, once
    result = head.generate("test_assets/speech.wav", avatar, out="out.mp4")

The server (`lipsync_server/app.py`) and the CLI (`python -m wav2lip_core`) are thin layers over this class.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import audio as A
from .avatar import VIDEO_SUFFIXES, Avatar
from .config import Settings
from .cost import CostModel
from .detect import FaceFinder
from .pipeline import LipSync, Progress
from .runtime import WEIGHTS_HINT, Runtime
from .schema import Box, Options, Result

log = logging.getLogger(__name__)

Media = str | os.PathLike[str] | bytes | np.ndarray  # a file path, encoded bytes, or a BGR uint8 image array
AudioIn = str | os.PathLike[str] | bytes | np.ndarray  # a file path, encoded bytes, or float samples at AUDIO_RATE
AUDIO_RATE = A.SAMPLE_RATE  # the rate assumed for audio passed as an array (16 kHz, Wav2Lip's own)
RANDOM_WEIGHTS = f"generator weights are RANDOM (--random-init): output is not lip-sync; {WEIGHTS_HINT}"


class TalkingHead:
    """A compiled Wav2Lip + face detector: prepare avatars once, generate many clips. Thread-safe."""

    def __init__(self, lipsync: LipSync, runtime: Runtime):
        self.lipsync = lipsync
        self.runtime = runtime
        self._cost: CostModel | None = None  # measured on first use: loading stays fast
        self._cost_lock = threading.Lock()

    @classmethod
    def load(cls, models_dir: str | os.PathLike[str] | None = None, settings: Settings | None = None, **overrides: Any) -> TalkingHead:
        """Compile the IR (made by convert_to_openvino.py) and warm it up.

        `settings` defaults to `Settings()` (the environment is not read); keyword `overrides` replace
        its fields by name, e.g. `precision="f32", batch_size=8`.
        """
        settings = settings or Settings()
        unknown = set(overrides) - {f.name for f in dataclasses.fields(Settings)}
        if unknown:
            raise TypeError(f"unknown setting(s) {sorted(unknown)}; see wav2lip_core.config.Settings")
        if models_dir is not None:
            overrides["models_dir"] = Path(models_dir)
        settings = dataclasses.replace(settings, **overrides)
        runtime = Runtime.open(settings)
        finder = FaceFinder(runtime.detector(), settings.detect_max_side, settings.face_cache_size)
        lipsync = LipSync(settings, runtime.still_generator(), runtime.clip_generator, finder)
        lipsync.warm_up()
        head = cls(lipsync, runtime)
        for warning in head.warnings():
            log.warning("%s: %s", settings.models_dir, warning)
        return head

    @property
    def settings(self) -> Settings:
        return self.lipsync.settings

    @property
    def cost(self) -> CostModel:
        """This machine's measured cost model (two short calibration renders on first use, ~0.5 s)."""
        with self._cost_lock:
            if self._cost is None:
                self._cost = CostModel.calibrate(self.lipsync)
            return self._cost

    def prepare_avatar(self, media: Media, *, pads: Sequence[int] | None = None, box: Sequence[int] | None = None) -> Avatar:
        """Decode an image or a short clip and find its face once; pass the Avatar to every `generate`."""
        options = Options(**{k: tuple(v) for k, v in (("pads", pads), ("box", box)) if v is not None})
        data, video = _media_bytes(media)
        return self.lipsync.prepare(data, options, video)

    def generate(
        self,
        audio: AudioIn,
        avatar: Avatar | Media,
        out: str | os.PathLike[str] | None = None,
        *,
        fps: float | None = None,
        pads: Sequence[int] | None = None,
        box: Box | Sequence[int] | None = None,
        paste: str = "box",
        loop: str = "pingpong",
        start_frame: int = 0,
        deadline: float | None = None,
        progress: Progress | None = None,
    ) -> Result:
        """Lip-sync `avatar` to `audio`; the MP4 is `result.mp4` and, with `out`, written there.

        `pads` and `box` apply when `avatar` is media; a prepared Avatar already has its boxes.
        `deadline` is a `time.monotonic()` instant; `progress(done, total)` is called per batch.
        """
        given = {"pads": tuple(pads) if pads is not None else None, "box": tuple(box) if box is not None else None}
        if isinstance(avatar, Avatar) and any(v is not None for v in given.values()):
            raise TypeError("pads and box belong to prepare_avatar(); this Avatar already has its face boxes")
        options = Options(fps=fps, paste=paste, loop=loop, start_frame=start_frame, **{k: v for k, v in given.items() if v is not None})
        return self.render(audio, avatar, options, out, deadline=deadline, progress=progress)

    def render(
        self,
        audio: AudioIn,
        avatar: Avatar | Media,
        options: Options,
        out: str | os.PathLike[str] | None = None,
        deadline: float | None = None,
        progress: Progress | None = None,
        video: bool | None = None,
    ) -> Result:
        """`generate` with the options as one `Options` (what the server and the CLI have in hand).

        `video` says what media bytes are (True a clip, False an image); None tells them by their bytes."""
        source, sniffed = (avatar, None) if isinstance(avatar, Avatar) else _media_bytes(avatar)
        video = sniffed if video is None else video
        t0 = time.perf_counter()
        sound = _audio(audio, self.settings.max_audio_seconds)
        render = self.lipsync.start(source, sound, options, deadline, progress, video)
        result = render.complete()
        if self._cost is not None and not render.pace.shared:  # a render that shared the cores says nothing of its own cost
            self._cost.observe(result.frames, result.width * result.height, time.perf_counter() - t0)
        if out is not None:
            Path(out).write_bytes(result.mp4)
        return result

    def info(self) -> dict[str, object]:
        """Models, precision, real or random weights, threads: what the probes and logs report."""
        manifest, generator = self.runtime.manifest, self.lipsync.generator
        return {
            "models_dir": str(self.settings.models_dir),
            "openvino": self.runtime.version,
            "converted_with_openvino": manifest.openvino_version,
            "detector": self.lipsync.finder.detector.name,
            "generator": "wav2lip",
            "generator_weights": manifest.generator.weights,
            "generator_split": generator.split,
            "precision": generator.precision,
            "batch_size": generator.batch,
            "threads": self.settings.threads(),
            "cost_model": self._cost.describe() if self._cost is not None else None,  # measured on first estimate_seconds()
            "int8": self.runtime.int8.describe() if self.runtime.int8 is not None else None,  # PRECISION=int8: float blocks, drift, speed
        }

    def warnings(self) -> list[str]:
        """What to know before trusting the output: random weights; INT8 written with no floor and drifting past the default."""
        int8 = self.runtime.int8
        found = [RANDOM_WEIGHTS if self.runtime.manifest.generator.weights == "random" else None, int8.warning() if int8 else None]
        return [w for w in found if w]

    def estimate_seconds(self, audio_seconds: float, width: int, height: int, fps: float = 25.0) -> float:
        """Predicted `generate` time for a still avatar of width×height and that much audio, on this machine."""
        frames = A.frame_count(round(audio_seconds * A.SAMPLE_RATE), A.SAMPLE_RATE, fps)
        return self.cost.seconds(frames, width * height)


def _media_bytes(media: Media) -> tuple[bytes, bool | None]:
    """Encoded bytes and whether they are a clip (None: decided from the bytes)."""
    if isinstance(media, np.ndarray):
        if media.dtype != np.uint8 or media.ndim != 3 or media.shape[2] != 3:
            raise TypeError(f"an avatar array must be H×W×3 BGR uint8, got {media.dtype} {media.shape}")
        ok, png = cv2.imencode(".png", media)  # lossless; decoded again by the same path as any upload
        if not ok:
            raise ValueError(f"could not encode the {media.shape} avatar array")
        return png.tobytes(), False
    if isinstance(media, bytes):
        return media, None
    path = Path(media)
    return path.read_bytes(), path.suffix.lower() in VIDEO_SUFFIXES


def _audio(audio: AudioIn, max_seconds: float) -> bytes | A.Audio:
    if isinstance(audio, np.ndarray):
        return A.checked(A.Audio(audio.astype(np.float32).reshape(len(audio), -1), AUDIO_RATE), max_seconds)
    return audio if isinstance(audio, bytes) else Path(audio).read_bytes()
