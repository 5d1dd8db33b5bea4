"""INT8 with a quality floor: which generator blocks stay float (`convert_to_openvino.py --int8 [--int8-floor DB]`).

The decoder (still avatars) is quantised with the given float blocks (by default quantize.DEFAULT_FLOAT_BLOCKS)
and measured: its drift against the f32 decoder on held-out pairs, and its speed against the float decoder as
served (PRECISION=auto: bf16 where the CPU has it), in alternating passes through the served Generator. If it
meets the floor (PSNR ≥ `--int8-floor`, default 35 dB) at least MIN_SPEEDUP× faster, that is the answer: one
quantisation, as without a floor. Otherwise each remaining block is probed (the PSNR gained by also leaving it
float) and costed (its multiply-accumulates), and blocks are added in order of gain per cost, each mix quantised
and measured again, until one meets the floor or the speed-up falls under MIN_SPEEDUP. No such mix:
Int8FloorNotMet naming the best one, and nothing written. The whole network (video avatars) is then quantised
with the same float blocks. Every mix tried, with its drift and speed, is the manifest's `curve`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from .compose import to_mouths
from .config import Settings
from .errors import Int8FloorNotMet
from .generator import Generator
from .quantize import (
    CALIBRATION_ITEMS,
    DEFAULT_FLOAT_BLOCKS,
    F32,
    HELD_OUT_GROUP,
    HELD_OUT_ITEMS,
    Calibration,
    decoder_block_macs,
    decoder_samples,
    drift,
    load_calibration,
    quantized,
)
from .runtime import DEFAULT_FLOOR_DB, Int8Files, cpu_properties

MIN_SPEEDUP = 1.2  # the INT8 decoder against bf16's: slower than this, INT8's drift is not worth serving (issue 19)
TIMING_PAIRS = 5  # alternating float and INT8 passes over TIMING_FRAMES held-out frames; medians (other processes share the cores)
TIMING_FRAMES = 32  # 8 batches of 4: ~0.2 s a pass at INT8 on 2 cores
Report = Callable[[str], None]


@dataclass
class Int8Options:
    """--int8: where the calibration comes from, the float blocks to start from, the floor (None: no search)."""

    calibration: Path
    float_blocks: tuple[str, ...] = DEFAULT_FLOAT_BLOCKS
    floor_db: float | None = DEFAULT_FLOOR_DB
    calibration_items: int = CALIBRATION_ITEMS


@dataclass
class Point:
    """One mix of float blocks: its drift against f32 on the held-out pairs and, when timed, its speed."""

    kind: str  # "start", "probe" (the start and one more block: that block's sensitivity) or "step" (the search's next mix)
    float_blocks: list[str]
    psnr_db: float
    mean_abs: float
    p999_abs: float
    max_abs: int
    seconds: float | None = None  # the INT8 decoder over TIMING_FRAMES held-out frames, median of TIMING_PAIRS passes
    speedup_vs_bf16: float | None = None  # median of the paired float ÷ INT8 times
    gain_db_per_gmac: float | None = None  # probes: PSNR gained over the start per GMAC per frame left float

    @property
    def drift_vs_f32(self) -> dict[str, float]:
        return {"psnr_db": self.psnr_db, "mean_abs": self.mean_abs, "p999_abs": self.p999_abs, "max_abs": self.max_abs}

    @property
    def fast(self) -> bool:
        return self.speedup_vs_bf16 is not None and self.speedup_vs_bf16 >= MIN_SPEEDUP

    def describe(self) -> str:
        speed = f", {self.seconds:.3f} s, {self.speedup_vs_bf16:.2f}× bf16" if self.speedup_vs_bf16 is not None else ""
        gain = f", {self.gain_db_per_gmac:+.2f} dB/GMAC" if self.gain_db_per_gmac is not None else ""
        return f"{', '.join(self.float_blocks) or 'no block'} float: PSNR {self.psnr_db} dB{speed}{gain}"


def served_decoder(core: ov.Core, model: ov.Model, precision: str, encoder: ov.CompiledModel, settings: Settings) -> Generator:
    """The split decoder as the server runs it: static batch, the CPU properties of PRECISION=`precision`, its face encoder."""
    model = model.clone()
    model.reshape({"mel": [settings.batch_size, 1, 80, 16]})
    compiled = core.compile_model(model, "CPU", cpu_properties(core, precision, settings.threads()))
    return Generator(compiled, settings.batch_size, encoder, int8=precision == "int8")


def timed_pass(generator: Generator, mels: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, float]:
    """The mouths of one pass over `mels` with one face, and its seconds."""
    t0 = time.perf_counter()
    mouths = np.concatenate(list(generator.run(mels, face)))
    return mouths, time.perf_counter() - t0


class Stopwatch:
    """The float decoder as served against a quantised one, timed in alternating passes over the same frames."""

    def __init__(self, core: ov.Core, decoder: ov.Model, encoder: ov.CompiledModel, frames: Calibration, settings: Settings):
        self.core, self.encoder, self.settings = core, encoder, settings
        self.mels, self.face = frames.mels[:TIMING_FRAMES], frames.faces[0]
        self.reference = served_decoder(core, decoder, "auto", encoder, settings)
        self.description = (f"split decoder, batch {settings.batch_size}, {settings.threads()} threads, {len(self.mels)} held-out frames: "
                            f"median of {TIMING_PAIRS} alternating passes against {self.reference.precision}")  # fmt: skip

    def compare(self, model: ov.Model) -> tuple[float, float]:
        """Median seconds of the INT8 decoder's pass, and the median of float ÷ INT8 over the pairs."""
        int8 = served_decoder(self.core, model, "int8", self.encoder, self.settings)
        for generator in (self.reference, int8):  # warm-up: first inferences and the face features
            timed_pass(generator, self.mels[: self.settings.batch_size], self.face)
        pairs = []
        for k in range(TIMING_PAIRS):
            first, second = (self.reference, int8) if k % 2 == 0 else (int8, self.reference)  # neither always runs first
            a, b = timed_pass(first, self.mels, self.face)[1], timed_pass(second, self.mels, self.face)[1]
            pairs.append((a, b) if first is self.reference else (b, a))
        return statistics.median(i for _, i in pairs), statistics.median(f / i for f, i in pairs)


class Trials:
    """The decoder quantised with a set of float blocks, and measured: drift always, speed when asked."""

    def __init__(self, core: ov.Core, directory: Path, calibration: Calibration, held_out: Calibration):
        self.core = core
        encoder = core.compile_model(directory / "wav2lip_face.xml", "CPU", F32)
        self.decoder = core.read_model(directory / "wav2lip_decoder.xml")
        self.samples, self.held = decoder_samples(encoder, calibration), decoder_samples(encoder, held_out, HELD_OUT_GROUP)
        self.reference = self._mouths(self.decoder)
        self.macs = decoder_block_macs(self.decoder)
        self.stopwatch = Stopwatch(core, self.decoder, encoder, held_out, Settings())

    def quantise(self, blocks: Sequence[str]) -> ov.Model:
        return quantized(self.decoder, self.samples, tuple(blocks))

    def measure(self, kind: str, blocks: Sequence[str], model: ov.Model, timed: bool) -> Point:
        d = drift(self._mouths(model), self.reference)
        point = Point(kind, list(blocks), float(d["psnr_db"]), d["mean_abs"], d["p999_abs"], d["max_abs"])
        if timed:
            point.seconds, point.speedup_vs_bf16 = (round(v, 3) for v in self.stopwatch.compare(model))
        return point

    def _mouths(self, model: ov.Model) -> np.ndarray:
        """The mouths (uint8, as served) the model makes of the held-out pairs, at f32 (what the floor is checked on)."""
        compiled = self.core.compile_model(model, "CPU", F32)
        return np.concatenate([to_mouths(compiled(s)[0]) for s in self.held])


@dataclass
class Outcome:
    """The search's curve and the mix it chose, with its quantised decoder."""

    curve: list[Point]
    chosen: Point
    model: ov.Model


def search(trials: Trials, start: Sequence[str], floor_db: float | None, report: Report) -> Outcome:
    """The start mix if it meets the floor fast enough (or there is no floor); else blocks added by gain per cost.

    Int8FloorNotMet when no mix meets the floor at MIN_SPEEDUP× bf16."""
    curve: list[Point] = []
    model = trials.quantise(start)
    first = _record(trials.measure("start", start, model, timed=True), curve, report)
    if floor_db is None or (first.psnr_db >= floor_db and first.fast):
        return Outcome(curve, first, model)
    if not first.fast:  # more float blocks only make it slower
        raise _refusal(curve, floor_db)
    order, model = _probe(trials, first, curve, report)
    blocks = list(start)
    for i, block in enumerate(order):
        blocks.append(block)
        model = model if i == 0 and model is not None else trials.quantise(blocks)  # the first step is the best probe: quantised
        point = _record(trials.measure("step", blocks, model, timed=True), curve, report)
        if not point.fast:
            break
        if point.psnr_db >= floor_db:
            return Outcome(curve, point, model)
    raise _refusal(curve, floor_db)


def _probe(trials: Trials, first: Point, curve: list[Point], report: Report) -> tuple[list[str], ov.Model | None]:
    """The remaining blocks, most PSNR gained per GMAC left float first, and the first one's quantised decoder."""
    ratios: dict[str, float] = {}
    best: ov.Model | None = None
    for block in (b for b in trials.macs if b not in first.float_blocks):
        model = trials.quantise([*first.float_blocks, block])
        point = trials.measure("probe", [*first.float_blocks, block], model, timed=False)
        point.gain_db_per_gmac = round((point.psnr_db - first.psnr_db) / (trials.macs[block] / 1e9), 3)
        if not ratios or point.gain_db_per_gmac > max(ratios.values()):
            best = model  # kept: the search's first step
        ratios[block] = point.gain_db_per_gmac
        _record(point, curve, report)
    return sorted(ratios, key=ratios.__getitem__, reverse=True), best


def _record(point: Point, curve: list[Point], report: Report) -> Point:
    curve.append(point)
    report(f"{point.kind:5s} {point.describe()}")
    return point


def quantize_generator(directory: Path, options: Int8Options, report: Report = lambda line: None) -> Int8Files:
    """Choose the float blocks, then write `wav2lip_int8.xml` and `wav2lip_decoder_int8.xml` beside the float IR in `directory`.

    Int8FloorNotMet, with nothing written, when no mix meets the floor at MIN_SPEEDUP× bf16."""
    items = options.calibration_items
    calibration, held_out = load_calibration(options.calibration, items + HELD_OUT_ITEMS).split(items)
    core = ov.Core()
    trials = Trials(core, directory, calibration, held_out)
    outcome = search(trials, options.float_blocks, options.floor_db, report)
    chosen = outcome.chosen
    files = Int8Files(float_blocks=chosen.float_blocks, calibration=calibration.source, drift_vs_f32=chosen.drift_vs_f32,
                      floor_db=options.floor_db, speedup_vs_bf16=chosen.speedup_vs_bf16, timing=trials.stopwatch.description,
                      curve=[asdict(p) for p in outcome.curve])  # fmt: skip
    ov.save_model(outcome.model, directory / files.decoder)  # float parts FP16
    whole = [{"mel": m[None, None], "face": f[None]} for m, f in zip(calibration.mels, calibration.faces, strict=True)]
    ov.save_model(quantized(core.read_model(directory / "wav2lip.xml"), whole, tuple(chosen.float_blocks)), directory / files.file)
    return files


def _refusal(curve: list[Point], floor_db: float) -> Int8FloorNotMet:
    timed = [p for p in curve if p.speedup_vs_bf16 is not None]
    best = max((p for p in timed if p.fast), key=lambda p: p.psnr_db, default=timed[0])
    return Int8FloorNotMet(
        f"--int8: no mix of float blocks reaches PSNR ≥ {floor_db:g} dB against f32 at ≥ {MIN_SPEEDUP}× bf16 ({len(curve)} mixes tried); "
        f"best: {best.describe()}. The float IR is written, no INT8 files: lower --int8-floor, or give --int8-floor none "
        "to write INT8 whatever the drift, or serve PRECISION=auto"
    )
