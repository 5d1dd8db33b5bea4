"""The one owner of OpenVINO: the manifest the converter writes, one Core with the compile cache and
explicit CPU properties, compiling, and the detector factory.

Everything else receives compiled models and only runs them. OpenVINO is not fork-safe: build a
`Runtime` after fork (gunicorn's `post_worker_init`), never in the master.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import openvino as ov

from .config import Settings
from .detect import BlazeFaceDetector, Detector, S3FDDetector
from .errors import ModelsMissing
from .generator import Generator
from .scheduler import Scheduler

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
GENERATOR, S3FD, BLAZEFACE = "wav2lip", "s3fd", "blazeface"  # the manifest's model keys
CONVERT_HINT = "python convert_to_openvino.py --random-init 0 --out {d}   (or: make models)"
WEIGHTS_HINT = "for real lip-sync: make weights, then make serve again (README: Real weights)"  # after a RANDOM-generator warning
INT8_HINT = "python convert_to_openvino.py --wav2lip CKPT --int8 --out {d}   (or: make models-int8)"
# --int8's quality floor: held-out PSNR of the INT8 decoder's mouths against f32's. Every block INT8 gives 35.0 dB
# on the random test network and its default float blocks 37–39 dB (README, Performance; bench/results/int8_curve.json).
DEFAULT_FLOOR_DB = 35.0
# Detectors run once per avatar: exactness over speed (f32, one stream).
DETECTOR_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}


@dataclass
class SplitFiles:
    """The generator cut in two for still avatars: the face encoder runs once, the decoder per batch."""

    face_encoder: str
    decoder: str


@dataclass
class Int8Files:
    """The INT8 generator (`convert_to_openvino.py --int8`); the split's face encoder stays float: it runs once a request."""

    file: str = "wav2lip_int8.xml"  # whole network (video avatars)
    decoder: str = "wav2lip_decoder_int8.xml"  # split decoder (still avatars)
    float_blocks: list[str] = field(default_factory=list)  # blocks left float (bf16 where the CPU has it)
    calibration: str = ""
    drift_vs_f32: dict[str, float] = field(default_factory=dict)  # decoder on held-out pairs, 0–255 crops
    floor_db: float | None = None  # the held-out PSNR the float blocks were chosen to reach; None: --int8-floor none
    speedup_vs_bf16: float | None = None  # the INT8 decoder against the float one at PRECISION=auto (bf16 where the CPU has it)
    timing: str = ""  # how speedup_vs_bf16 was measured
    curve: list[dict[str, object]] = field(default_factory=list)  # the search: each mix of float blocks tried, its drift and speed

    def summary(self) -> str:
        """Blocks kept float, drift against f32, floor and speed-up over bf16, in one line."""
        d, floor = self.drift_vs_f32, "no floor" if self.floor_db is None else f"floor {self.floor_db:g} dB"
        speed = f"{self.speedup_vs_bf16:.2f}× bf16" if self.speedup_vs_bf16 is not None else "speed-up not measured"
        return (f"{', '.join(self.float_blocks) or 'no block'} float; vs f32 on held-out pairs: PSNR {d.get('psnr_db')} dB ({floor}), "
                f"mean |diff| {d.get('mean_abs')}, max {d.get('max_abs')} (0–255); decoder {speed}")  # fmt: skip

    def describe(self) -> dict[str, object]:
        """What `/health` reports of the INT8 generator served."""
        return {"float_blocks": self.float_blocks, "psnr_db": self.drift_vs_f32.get("psnr_db"),
                "speedup_vs_bf16": self.speedup_vs_bf16, "floor_db": self.floor_db}  # fmt: skip

    def warning(self) -> str | None:
        """Why these files should not be served as they are: written with no floor, and drifting more than the default floor allows."""
        psnr = self.drift_vs_f32.get("psnr_db")
        if self.floor_db is not None or psnr is None or psnr >= DEFAULT_FLOOR_DB:
            return None
        return (f"the INT8 generator was written with --int8-floor none and drifts to PSNR {psnr} dB against f32 "
                f"(under {DEFAULT_FLOOR_DB:g} dB): convert again without --int8-floor none, or serve PRECISION=auto")  # fmt: skip


@dataclass
class ModelFile:
    """One IR in the models folder and where its weights came from."""

    file: str
    precision: str
    weights: str = "real"  # "real" (a checkpoint or a shipped model) or "random" (--random-init)
    source: str | None = None  # checkpoint or .tflite file name
    sha256: str | None = None
    seed: int | None = None
    split: SplitFiles | None = None
    int8: Int8Files | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelFile:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in obj.items() if k in known}
        if isinstance(values.get("split"), dict):
            values["split"] = SplitFiles(**values["split"])
        if isinstance(values.get("int8"), dict):
            values["int8"] = Int8Files(**values["int8"])
        return cls(**values)

    def files(self) -> list[str]:
        split = [self.split.face_encoder, self.split.decoder] if self.split else []
        return [self.file, *split] + ([self.int8.file, self.int8.decoder] if self.int8 else [])


@dataclass
class Manifest:
    """`manifest.json`: which IR files exist, which detector serves, and their provenance."""

    detector: str
    models: dict[str, ModelFile]
    openvino_version: str = field(default_factory=ov.get_version)
    created: str = ""

    @property
    def generator(self) -> ModelFile:
        return self.models[GENERATOR]

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """The converter's manifest with every file it names present, or ModelsMissing naming the fix."""
        path = directory / MANIFEST
        hint = CONVERT_HINT.format(d=directory)
        if not path.is_file():
            raise ModelsMissing(f"no OpenVINO IR in {directory}/ (manifest.json missing). Create it with: {hint}")
        try:
            obj = json.loads(path.read_text())
            manifest = cls(obj["detector"], {k: ModelFile.from_json(v) for k, v in obj["models"].items()},
                           obj.get("openvino_version", ""), obj.get("created", ""))  # fmt: skip
            needed = [*manifest.generator.files(), manifest.models[manifest.detector].file]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelsMissing(f"{path} is not a manifest written by convert_to_openvino.py ({e!r}). Recreate it with: {hint}") from e
        for name in needed:
            if not (directory / name).is_file():
                raise ModelsMissing(f"{directory}/{name} is missing. Recreate it with: {hint}")
        return manifest


def cpu_properties(core: ov.Core, precision: str, threads: int, streams: int = 1) -> dict[str, object]:
    """CPU plugin settings: explicit threads and streams, no pinning (several workers share the cores).
    `int8` runs the quantised IR; its float parts, like `auto`, at bf16 when the CPU has it."""
    if precision in ("auto", "int8"):
        precision = "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
    return {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision, "ENABLE_CPU_PINNING": False, "NUM_STREAMS": streams}


class Runtime:
    """One OpenVINO Core per process; compiles the IR named by the manifest with one set of CPU properties."""

    def __init__(self, settings: Settings, manifest: Manifest):
        self.settings = settings
        self.manifest = manifest
        self.core = ov.Core()
        self.version = ov.get_version()
        if settings.cache_dir is not None:
            self.core.set_property({"CACHE_DIR": str(settings.cache_dir)})
        self.properties = cpu_properties(self.core, settings.precision, settings.threads(), settings.ov_streams)
        self.scheduler = Scheduler(settings.ov_streams + 1)  # every generator's batches wait here for their turn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        return cls(settings, Manifest.read(settings.models_dir))

    def compile(self, file: str, shapes: dict[str, list[int]] | None = None, **overrides: object) -> ov.CompiledModel:
        """Compile one IR of the models folder, reshaped to static `shapes`, with this runtime's properties."""
        model = self.core.read_model(self.settings.models_dir / file)
        if shapes:
            model.reshape(shapes)
        return self.core.compile_model(model, "CPU", self.properties | overrides)

    @property
    def int8(self) -> Int8Files | None:
        """The INT8 files when PRECISION=int8 (ModelsMissing naming the fix when the IR has none), else None."""
        if self.settings.precision != "int8":
            return None
        if self.manifest.generator.int8 is None:
            hint = INT8_HINT.format(d=self.settings.models_dir)
            raise ModelsMissing(f"PRECISION=int8, but {self.settings.models_dir}/ has no INT8 generator. Create it with: {hint}")
        return self.manifest.generator.int8

    def still_generator(self) -> Generator:
        """The generator for still avatars: split (face encoder once per request) when the IR has it."""
        entry, batch = self.manifest.generator, self.settings.batch_size
        if entry.split is None or not self.settings.split_generator:
            return self.clip_generator()
        int8 = self.int8
        decoder = self.compile(int8.decoder if int8 else entry.split.decoder, {"mel": [batch, 1, 80, 16]})
        encoder = self.compile(entry.split.face_encoder)
        return self._log(Generator(decoder, batch, encoder, int8=int8 is not None, scheduler=self.scheduler), "split")

    @functools.cached_property
    def _whole(self) -> Generator:
        batch = self.settings.batch_size
        int8 = self.int8
        compiled = self.compile(
            int8.file if int8 else self.manifest.generator.file, {"mel": [batch, 1, 80, 16], "face": [batch, 6, 96, 96]}
        )
        return self._log(Generator(compiled, batch, int8=int8 is not None, scheduler=self.scheduler), "whole")

    def clip_generator(self) -> Generator:
        """The whole network (a face input per frame: video avatars); compiled on first use, then shared."""
        with self._lock:
            return self._whole

    def clip_generator_ready(self) -> bool:
        """Whether clip_generator() was compiled already (its first use takes ~70 MB more: memory.CLIP_GENERATOR)."""
        return "_whole" in vars(self)

    def detector(self) -> Detector:
        """The manifest's detector, compiled f32."""
        name = self.manifest.detector
        compiled = self.compile(self.manifest.models[name].file, **DETECTOR_PROPERTIES)
        return S3FDDetector(compiled) if name == S3FD else BlazeFaceDetector(compiled)

    @staticmethod
    def _log(generator: Generator, kind: str) -> Generator:
        c = generator.compiled
        actual = {k: str(c.get_property(k)) for k in ("INFERENCE_NUM_THREADS", "NUM_STREAMS")} | {"precision": generator.precision}
        log.info("generator compiled (%s): batch %d, %s", kind, generator.batch, actual)
        return generator
