"""The INT8 generator's parts: calibration set, blocks, NNCF post-training quantisation, drift (conversion only: imports nncf).

    python convert_to_openvino.py --wav2lip checkpoints/wav2lip_gan.pth --int8      # then PRECISION=int8

Calibration is made here from `calibration/` (or `--calibration DIR`): mel windows of the speech files
in it (espeak-ng voices at several rates, `calibration/make.sh`) and face crops of the photos its
`faces.json` names, each varied (mirrored, the box jittered, brighter or darker). The decoder (still
avatars) is calibrated with the face features the float face encoder gives those crops; the whole
network (video avatars) with the crops themselves. Blocks listed in `float_blocks` keep their float
weights and activations, residual additions included (bf16 where the CPU has it): by default the audio
encoder and the first two decoder blocks, the cheap parts whose error costs the most (`make bench-int8`
and the README give the measured curve). `int8_floor.py` chooses the float blocks for a quality floor
and writes the files.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openvino as ov

from . import audio as A
from .compose import face_input
from .errors import CheckpointError

FPS = 25.0
MODULE_PATH = r"__module\.(?:net\.)?"  # how converted op names start: the PyTorch module path (`net.` in the split's wrappers)
BLOCK = re.compile(MODULE_PATH + r"(audio_encoder|face_encoder_blocks\.\d+|face_decoder_blocks\.\d+|output_block)")
CONVS = ("Convolution", "ConvolutionBackpropData")
DEFAULT_FLOAT_BLOCKS = ("audio_encoder", "face_decoder_blocks.0", "face_decoder_blocks.1")
CALIBRATION_ITEMS = 300  # NNCF's default subset: statistics of 300 (mel window, face) pairs
HELD_OUT_ITEMS = 64  # pairs never seen by the calibration, for the drift figures
HELD_OUT_GROUP = 8  # held-out mel windows run in one batch, with the face of the first: 8 faces, 8 inferences a measurement
FACE_VARIANTS = 16  # per photo
SPEECH_SUFFIXES = (".wav", ".ogg", ".flac", ".mp3")
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@dataclass
class Calibration:
    """(mel window, face input) pairs: `mels` (N, 80, 16) and `faces` (N, 6, 96, 96), float32."""

    mels: np.ndarray
    faces: np.ndarray
    source: str

    def split(self, n: int) -> tuple[Calibration, Calibration]:
        """The first `n` pairs and the rest."""
        return (Calibration(self.mels[:n], self.faces[:n], self.source), Calibration(self.mels[n:], self.faces[n:], self.source))


def load_calibration(directory: Path, items: int, seed: int = 0) -> Calibration:
    """`items` random pairs of a speech window and a varied face crop from `directory`."""
    speech = sorted(p for p in directory.iterdir() if p.suffix.lower() in SPEECH_SUFFIXES) if directory.is_dir() else []
    faces_json = directory / "faces.json"
    if not speech or not faces_json.is_file():
        raise CheckpointError(f"{directory}/ needs speech files ({', '.join(SPEECH_SUFFIXES)}) and faces.json for --int8 calibration",
                              code="calibration_missing")  # fmt: skip
    mels = np.concatenate([_mel_windows(p) for p in speech])
    rng = np.random.default_rng(seed)
    faces = np.stack([v for entry in json.loads(faces_json.read_text())["faces"] for v in _face_variants(directory, entry, rng)])
    if len(mels) < items:
        raise CheckpointError(f"{directory}/ has {len(mels)} frames of speech; --int8 needs at least {items}", code="calibration_missing")
    pick = rng.choice(len(mels), items, replace=False)
    source = f"{len(speech)} speech file(s), {len(mels) / FPS:.0f} s, {len(faces)} face crops from {directory.name}/"
    return Calibration(mels[pick], faces[rng.integers(0, len(faces), items)], source)


def _mel_windows(path: Path) -> np.ndarray:
    sound = A.decode_audio(path.read_bytes(), 3600)
    frames = A.frame_count(sound.samples.shape[0], sound.sample_rate, FPS)
    return A.mel_chunks(A.melspectrogram(A.to_16k_mono(sound)), frames, FPS)


def _face_variants(directory: Path, entry: dict, rng: np.random.Generator) -> list[np.ndarray]:
    """Face inputs of one photo: mirrored or not, the box moved by up to 12 px a side, gain 0.7–1.3, offset ±25."""
    frame = cv2.imread(str(directory / entry["image"]))
    if frame is None:
        raise CheckpointError(f"{directory / entry['image']}: not an image (named in {directory}/faces.json)", code="calibration_missing")
    h, w = frame.shape[:2]
    out = []
    for i in range(FACE_VARIANTS):
        x1, y1, x2, y2 = entry["box"]
        image = frame
        if i % 2:
            image, x1, x2 = frame[:, ::-1], w - x2, w - x1
        jx1, jy1, jx2, jy2 = rng.integers(-12, 13, 4)
        box = (max(0, x1 + jx1), max(0, y1 + jy1), min(w, x2 + jx2), min(h, y2 + jy2))
        lit = np.clip(image.astype(np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25), 0, 255).astype(np.uint8)
        out.append(face_input(lit, box))
    return out


def conv_blocks(model: ov.Model) -> dict[str, list[str]]:
    """The network's blocks (`audio_encoder`, `face_decoder_blocks.3`, …) → names of their convolutions.

    Conversion folds each BatchNorm into its convolution, which then has a generated name; the
    BatchNorm's Add that follows keeps the PyTorch module path."""
    blocks: dict[str, list[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in CONVS:
            continue
        names = [op.get_friendly_name()] + [t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs()]
        found = next((m.group(1) for m in map(BLOCK.search, names) if m), None)
        if found is None:
            raise CheckpointError(f"convolution {op.get_friendly_name()} belongs to no known block of the generator", code="parity_failed")
        blocks.setdefault(found, []).append(op.get_friendly_name())
    return blocks


def macs(op: ov.Node) -> int:
    """Multiply-accumulates of one (transposed) convolution, from its static shapes."""
    weights = list(op.input(1).get_shape())  # conv: (Cout, Cin, kh, kw); transposed: (Cin, Cout, kh, kw)
    if op.get_type_name() == "Convolution":
        return int(np.prod(list(op.output(0).get_shape())) * np.prod(weights[1:]))
    return int(np.prod(list(op.input(0).get_shape())) * np.prod(weights[1:]))


def decoder_block_macs(decoder: ov.Model) -> dict[str, int]:
    """Multiply-accumulates per frame of each block of the split decoder (its convolutions at batch 1)."""
    model = decoder.clone()
    model.reshape({"mel": [1, 1, 80, 16]})
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    return {block: sum(macs(ops[n]) for n in names) for block, names in conv_blocks(model).items()}


def quantized(model: ov.Model, samples: list[dict[str, np.ndarray]], float_blocks: tuple[str, ...]) -> ov.Model:
    """NNCF post-training INT8 (mixed preset: symmetric weights, asymmetric activations); `float_blocks` stay float."""
    try:
        import nncf
    except ImportError as e:
        raise CheckpointError("--int8 needs the nncf package: pip install -r requirements-convert.txt", code="missing_dependency") from e
    nncf.set_log_level(logging.WARNING)  # its progress bars stay: minutes of work on a small machine
    blocks = conv_blocks(model)
    unknown = sorted(set(float_blocks) - set(blocks))
    if unknown:
        raise CheckpointError(f"unknown generator block(s) {unknown}; known: {sorted(blocks)}", code="bad_option")
    # a float block's convolutions by name (theirs are generated), its other ops (residual additions) by module path
    patterns = [MODULE_PATH + re.escape(b) + r"[./]" for b in float_blocks]
    ignored = nncf.IgnoredScope(names=[n for b in float_blocks for n in blocks[b]], patterns=patterns)
    dataset = nncf.Dataset(samples)
    return nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED, subset_size=len(samples), ignored_scope=ignored)


def decoder_samples(encoder: ov.CompiledModel, pairs: Calibration, group: int = 1) -> list[dict[str, np.ndarray]]:
    """The split decoder's inputs: `group` pairs' mel windows at a time, with the face encoder's features of the first one's face."""
    out = []
    for i in range(0, len(pairs.mels), group):
        feats = encoder({"face": pairs.faces[i][None]})
        out.append({"mel": pairs.mels[i : i + group, None]} | {p.get_any_name(): np.array(feats[p]) for p in encoder.outputs})
    return out


def drift(got: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Differences of two sets of uint8 mouth crops (0–255): mean and max |diff|, 99.9th percentile, PSNR."""
    diff = np.abs(got.astype(np.int16) - reference.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
    return {"mean_abs": round(float(diff.mean()), 3), "p999_abs": float(np.percentile(diff, 99.9)), "max_abs": int(diff.max()),
            "psnr_db": round(psnr, 2)}  # fmt: skip
