"""The data path, top to bottom: decode → mel → face box → generator → paste → MP4.

`LipSync.load()` compiles the models once (per gunicorn worker, after fork); `run()` serves one
request and may be called from several threads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov

from . import audio as A
from .avatar import decode_video, smooth_boxes
from .compose import PASTE_MODES, Box, Paster, face_input, fit_box, limit_side, round_to_even
from .config import Settings
from .detect import BlazeFaceDetector, FaceFinder, S3FDDetector
from .errors import BadRequest, DeadlineExceeded, ModelsMissing
from .generator import Generator, cpu_properties
from .image import decode_image
from .video import Mp4Writer

log = logging.getLogger(__name__)

CONVERT_HINT = "python convert_to_openvino.py --random-init 0 --out {d}   (or: make models)"
DEFAULT_PADS = (0, 10, 0, 0)  # inference.py: top, bottom, left, right


@dataclass
class Options:
    """Per-request options; validated by `check()` against the decoded frame."""

    fps: float = 25.0
    pads: tuple[int, int, int, int] = DEFAULT_PADS
    box: Box | None = None
    paste: str = "box"

    def check(self, width: int, height: int) -> None:
        """Raise BadRequest naming the first invalid option."""
        if not 1 <= self.fps <= 60:
            raise BadRequest(f"fps must be between 1 and 60, got {self.fps}", code="invalid_fps")
        if self.paste not in PASTE_MODES:
            raise BadRequest(f"paste must be one of {list(PASTE_MODES)}, got {self.paste!r}", code="invalid_paste")
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise BadRequest(
                    f"box {list(self.box)} must satisfy 0 ≤ x1 < x2 ≤ {width} and 0 ≤ y1 < y2 ≤ {height} (image {width}×{height})",
                    code="invalid_box",
                )


@dataclass
class Result:
    """One lip-synced clip and what it took."""

    mp4: bytes
    duration_s: float
    fps: float
    frames: int
    width: int
    height: int
    face_box: Box
    face_source: str  # "box" (given by the caller), "cache" (repeated avatar) or "detector"
    timings_ms: dict[str, float] = field(default_factory=dict)


class _Clock:
    """Accumulates wall time per stage."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._t) * 1000
        self._t = now


def read_manifest(models_dir: Path) -> dict:
    """The converter's manifest, or ModelsMissing naming the command that creates it."""
    path = models_dir / "manifest.json"
    if not path.is_file():
        raise ModelsMissing(f"no OpenVINO IR in {models_dir}/ (manifest.json missing). Create it with: {CONVERT_HINT.format(d=models_dir)}")
    manifest = json.loads(path.read_text())
    for name in ("wav2lip", manifest["detector"]):
        if not (models_dir / manifest["models"][name]["file"]).is_file():
            raise ModelsMissing(
                f"{models_dir}/{manifest['models'][name]['file']} is missing. Recreate it with: {CONVERT_HINT.format(d=models_dir)}"
            )
    return manifest


class LipSync:
    """Compiled generator + detector; thread-safe `run()`."""

    def __init__(self, settings: Settings, manifest: dict, generator: Generator, finder: FaceFinder):
        self.settings = settings
        self.manifest = manifest
        self.generator = generator
        self.finder = finder
        self._whole: Generator | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings) -> LipSync:
        """Compile the IR in `settings.models_dir` and warm it up with one tiny request."""
        manifest = read_manifest(settings.models_dir)
        core = ov.Core()
        if settings.cache_dir is not None:
            core.set_property({"CACHE_DIR": str(settings.cache_dir)})
        props = cpu_properties(core, settings.precision, settings.threads(), settings.ov_streams)
        entry, d = manifest["models"]["wav2lip"], settings.models_dir
        if "split" in entry and settings.split_generator:
            generator = Generator.load(
                core, d / entry["split"]["decoder"], settings.batch_size, props, face_xml=d / entry["split"]["face_encoder"]
            )
        else:
            generator = Generator.load(core, d / entry["file"], settings.batch_size, props)
        name = manifest["detector"]
        det_props = props | {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}  # once per avatar: exactness over speed
        compiled = core.compile_model(settings.models_dir / manifest["models"][name]["file"], "CPU", det_props)
        detector = S3FDDetector(compiled) if name == "s3fd" else BlazeFaceDetector(compiled)
        if manifest["models"]["wav2lip"].get("weights") == "random":
            log.warning("the generator in %s has RANDOM weights (converted with --random-init): mouths are noise", settings.models_dir)
        self = cls(settings, manifest, generator, FaceFinder(detector, settings.detect_max_side, settings.face_cache_size))
        self.warm_up()
        return self

    @property
    def weights(self) -> str:
        return str(self.manifest["models"]["wav2lip"].get("weights", "real"))

    def warm_up(self) -> None:
        """First inference of each model outside any request: no first-call penalty."""
        list(self.generator.run(np.zeros((1, 80, 16), np.float32), np.zeros((6, 96, 96), np.float32)))
        self.finder.detector.detect(np.zeros((64, 64, 3), np.uint8))

    def run(
        self,
        image: bytes,
        audio: bytes,
        options: Options,
        deadline: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Result:
        """One request: bytes in, MP4 out. `deadline` is a time.monotonic() instant; `progress(done, total)` per batch."""
        s = self.settings
        clock = _Clock()

        def check() -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"the request took longer than {s.request_timeout_s:g} s and was stopped")

        image_bgr = decode_image(image, s.max_image_pixels)
        options.check(image_bgr.shape[1], image_bgr.shape[0])  # a box refers to the image as sent
        frame, scale = limit_side(image_bgr, s.max_output_side)
        frame = round_to_even(frame)
        height, width = frame.shape[:2]
        sound = A.decode_audio(audio, s.max_audio_seconds)
        clock.lap("decode")

        wav = A.to_16k_mono(sound)
        n_frames = A.frame_count(sound.samples.shape[0], sound.sample_rate, options.fps)
        mels = A.mel_chunks(A.melspectrogram(wav), n_frames, options.fps)
        clock.lap("mel")

        if options.box is not None:  # used exactly, no pads, as inference.py's --box
            box, source = fit_box(options.box, scale, frame), "box"
        else:
            box, cached = self.finder.find(frame, options.pads)
            source = "cache" if cached else "detector"
        clock.lap("detect")
        check()

        face = face_input(frame, box)
        paster = Paster(frame, box, options.paste)
        writer = Mp4Writer(width, height, options.fps, sound, s.x264_preset, s.x264_crf, s.x264_params)
        clock.lap("encode")
        try:
            self._render(mels, face, paster, writer, clock, check, progress)
            mp4 = writer.finish()
        except BaseException:
            writer.abort()
            raise
        clock.lap("encode")
        return Result(mp4, sound.duration_s, options.fps, n_frames, width, height, box, source, clock.ms)

    def run_video(self, video: bytes, audio: bytes, options: Options, progress: Callable[[int, int], None] | None = None) -> Result:
        """A short video avatar looped over the audio (the CLI's --face clip.mp4): per-frame boxes and faces."""
        s = self.settings
        clock = _Clock()
        frames, _ = decode_video(video, s.max_image_pixels)
        height, width = frames[0].shape[:2]
        options.check(width, height)
        sound = A.decode_audio(audio, s.max_audio_seconds)
        clock.lap("decode")
        n_frames = A.frame_count(sound.samples.shape[0], sound.sample_rate, options.fps)
        mels = A.mel_chunks(A.melspectrogram(A.to_16k_mono(sound)), n_frames, options.fps)
        clock.lap("mel")
        if options.box is not None:
            boxes, source = [options.box] * len(frames), "box"
        else:
            boxes, source = smooth_boxes([self.finder.find(f, options.pads)[0] for f in frames]), "detector"
        clock.lap("detect")
        faces = np.stack([face_input(f, b) for f, b in zip(frames, boxes, strict=True)])
        index = np.arange(n_frames) % len(frames)  # the clip loops, as inference.py's i % len(frames)
        writer = Mp4Writer(width, height, options.fps, sound, s.x264_preset, s.x264_crf, s.x264_params)
        try:
            for mouths in self._whole_generator().run(mels, faces, index=index):
                clock.lap("infer")
                for mouth in mouths:
                    k = index[writer.frames]
                    writer.write(Paster(frames[k], boxes[k], options.paste).paste(mouth))
                clock.lap("encode")
                if progress is not None:
                    progress(writer.frames, n_frames)
            mp4 = writer.finish()
        except BaseException:
            writer.abort()
            raise
        clock.lap("encode")
        return Result(mp4, sound.duration_s, options.fps, n_frames, width, height, boxes[0], source, clock.ms)

    def _whole_generator(self) -> Generator:
        """The whole network, for per-frame faces; compiled on first use (video avatars are CLI-only)."""
        if self.generator.face_encoder is None:
            return self.generator
        with self._lock:
            if self._whole is None:
                s = self.settings
                core = ov.Core()
                props = cpu_properties(core, s.precision, s.threads(), s.ov_streams)
                self._whole = Generator.load(core, s.models_dir / self.manifest["models"]["wav2lip"]["file"], s.batch_size, props)
            return self._whole

    def _render(
        self,
        mels: np.ndarray,
        face: np.ndarray,
        paster: Paster,
        writer: Mp4Writer,
        clock: _Clock,
        check: Callable[[], None],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        for mouths in self.generator.run(mels, face, check):
            clock.lap("infer")  # time spent waiting for the generator, not overlapped by the loop below
            for mouth in mouths:
                paster.paste(mouth)
                clock.lap("paste")
                writer.write(paster.frame, dirty=paster.box)
                clock.lap("encode")
            if progress is not None:
                progress(writer.frames, len(mels))
