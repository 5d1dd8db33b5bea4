"""The INT8 speed/drift curve: which generator blocks to leave float. `make bench-int8`.

    python -m bench.int8_curve [--models ir_models]

For the served decoder (still avatars, batch BATCH_SIZE, threads = cores): quantised with NNCF as
`convert_to_openvino.py --int8` does (same calibration), leaving float, in turn, nothing, each block
alone (its sensitivity: how much drift it removes for how much time), and growing sets of blocks;
plus the float decoder. Each is timed over the test speech's 160 frames (median of 3 passes, its
float parts at bf16 where the CPU has it) and compared with the f32 decoder on those frames (the
test photo's face; neither is in the calibration). Writes bench/results/int8_curve.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import openvino as ov

from harness import ASSETS, ROOT
from wav2lip_core import audio as A
from wav2lip_core.compose import face_input
from wav2lip_core.config import Settings
from wav2lip_core.image import decode_image
from wav2lip_core.int8_floor import served_decoder, timed_pass
from wav2lip_core.quantize import CALIBRATION_ITEMS, DEFAULT_FLOAT_BLOCKS, conv_blocks, decoder_samples, drift, load_calibration, quantized
from wav2lip_core.runtime import Manifest

RESULTS = ROOT / "bench" / "results" / "int8_curve.json"
CALIBRATION = ROOT / "calibration"
BOX = (180, 70, 280, 215)
GROWING = (  # cheap and sensitive first (from the one-block runs), then the expensive blocks
    ("face_decoder_blocks.0", "face_decoder_blocks.1"),
    DEFAULT_FLOAT_BLOCKS,
    (*DEFAULT_FLOAT_BLOCKS, "face_decoder_blocks.2", "face_decoder_blocks.3"),
    (*DEFAULT_FLOAT_BLOCKS, *(f"face_decoder_blocks.{i}" for i in range(2, 7))),
)


class Bench:
    """The test clip's mel windows and face, the face encoder, and the f32 decoder's mouths (the reference)."""

    def __init__(self, models: Path) -> None:
        self.settings, self.core = Settings(), ov.Core()
        manifest = Manifest.read(models)
        frame = decode_image((ASSETS / "astronaut.jpg").read_bytes(), 10**8)
        sound = A.decode_audio((ASSETS / "speech.wav").read_bytes(), 60)
        n = A.frame_count(sound.samples.shape[0], sound.sample_rate, 25.0)
        self.mels, self.face = A.mel_chunks(A.melspectrogram(A.to_16k_mono(sound)), n, 25.0), face_input(frame, BOX)
        self.encoder = self.core.compile_model(models / manifest.generator.split.face_encoder, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.float_model = self.core.read_model(models / manifest.generator.split.decoder)
        self.reference, _ = self.run(self.float_model, "f32", 0)

    def run(self, model: ov.Model, precision: str, passes: int) -> tuple[np.ndarray, float]:
        """The clip's mouths through the served Generator (static batch, the face encoder once), and the median
        seconds of `passes` timed passes after that first one."""
        generator = served_decoder(self.core, model, precision, self.encoder, self.settings)
        mouths, _ = timed_pass(generator, self.mels, self.face)
        times = [timed_pass(generator, self.mels, self.face)[1] for _ in range(passes)]
        return mouths, statistics.median(times) if times else 0.0

    def point(self, label: str, model: ov.Model, precision: str) -> dict[str, object]:
        mouths, seconds = self.run(model, precision, 3)
        row = {"float_blocks": label, "seconds": round(seconds, 3), "fps": round(len(self.mels) / seconds, 1)}
        row |= drift(mouths, self.reference)
        print(f"{label:60s} {seconds:6.3f} s  PSNR {row['psnr_db']:5.2f} dB  mean {row['mean_abs']:.2f}  max {row['max_abs']}", flush=True)
        return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "ir_models")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    b = Bench(args.models)
    samples = decoder_samples(b.encoder, load_calibration(CALIBRATION, CALIBRATION_ITEMS))
    blocks = list(conv_blocks(b.float_model))
    sets = [()] + [(block,) for block in blocks] + list(GROWING)
    rows = [b.point("nothing INT8 (float decoder)", b.float_model, "auto")]
    for keep in sets:
        rows.append(b.point(", ".join(keep) or "none (every block INT8)", quantized(b.float_model, samples, keep), "int8"))
    res = {"batch": b.settings.batch_size, "threads": b.settings.threads(), "openvino": ov.get_version(), "frames": len(b.mels),
           "default_float_blocks": list(DEFAULT_FLOAT_BLOCKS), "points": rows}  # fmt: skip
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
