"""The INT8 generator: NNCF post-training quantisation of the converted IR (conversion only: imports nncf).

    python convert_to_openvino.py --wav2lip checkpoints/wav2lip_gan.pth --int8      # then PRECISION=int8

Calibration is made here from `calibration/` (or `--calibration DIR`): mel windows of the speech files
in it (espeak-ng voices at several rates, `calibration/make.sh`) and face crops of the photos its
`faces.json` names, each varied (mirrored, the box jittered, brighter or darker). The decoder (still
avatars) is calibrated with the face features the float face encoder gives those crops; the whole
network (video avatars) with the crops themselves. Blocks listed in `float_blocks` keep their float
weights and activations (bf16 where the CPU has it): by default the audio encoder and the first two
decoder blocks, the cheap parts whose error costs the most (`make bench` and the README give the
measured curve). The drift of the result against the float IR is measured here on held-out speech
and faces and written to the manifest.
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
from .compose import face_input, to_mouths
from .errors import CheckpointError
from .runtime import Int8Files

FPS = 25.0
BLOCK = re.compile(r"__module\.(?:net\.)?(audio_encoder|face_encoder_blocks\.\d+|face_decoder_blocks\.\d+|output_block)")
DEFAULT_FLOAT_BLOCKS = ("audio_encoder", "face_decoder_blocks.0", "face_decoder_blocks.1")
CALIBRATION_ITEMS = 300  # NNCF's default subset: statistics of 300 (mel window, face) pairs
HELD_OUT_ITEMS = 64  # pairs never seen by the calibration, for the drift figures
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
        if op.get_type_name() not in ("Convolution", "ConvolutionBackpropData"):
            continue
        names = [op.get_friendly_name()] + [t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs()]
        found = next((m.group(1) for m in map(BLOCK.search, names) if m), None)
        if found is None:
            raise CheckpointError(f"convolution {op.get_friendly_name()} belongs to no known block of the generator", code="parity_failed")
        blocks.setdefault(found, []).append(op.get_friendly_name())
    return blocks


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
    ignored = nncf.IgnoredScope(names=[n for b in float_blocks for n in blocks[b]])
    dataset = nncf.Dataset(samples)
    return nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED, subset_size=len(samples), ignored_scope=ignored)


def quantize_generator(directory: Path, calibration_dir: Path, float_blocks: tuple[str, ...]) -> Int8Files:
    """Write `wav2lip_int8.xml` and `wav2lip_decoder_int8.xml` beside the float IR in `directory`; measure the drift."""
    calibration, held_out = load_calibration(calibration_dir, CALIBRATION_ITEMS + HELD_OUT_ITEMS).split(CALIBRATION_ITEMS)
    core = ov.Core()
    encoder = core.compile_model(directory / "wav2lip_face.xml", "CPU", F32)
    whole_samples = [{"mel": m[None, None], "face": f[None]} for m, f in zip(calibration.mels, calibration.faces, strict=True)]
    files = Int8Files("wav2lip_int8.xml", "wav2lip_decoder_int8.xml", list(float_blocks), calibration.source)
    for name, source, samples in ((files.decoder, "wav2lip_decoder.xml", decoder_samples(encoder, calibration)),
                                  (files.file, "wav2lip.xml", whole_samples)):  # fmt: skip
        ov.save_model(quantized(core.read_model(directory / source), samples, float_blocks), directory / name)  # float parts FP16
    held = decoder_samples(encoder, held_out)
    files.drift_vs_f32 = drift(_outputs(core, directory / files.decoder, held), _outputs(core, directory / "wav2lip_decoder.xml", held))
    return files


def decoder_samples(encoder: ov.CompiledModel, pairs: Calibration) -> list[dict[str, np.ndarray]]:
    """The split decoder's inputs for each pair: its mel window and the face encoder's features of its face."""
    out = []
    for mel, face in zip(pairs.mels, pairs.faces, strict=True):
        feats = encoder({"face": face[None]})
        out.append({"mel": mel[None, None]} | {p.get_any_name(): np.array(feats[p]) for p in encoder.outputs})
    return out


def _outputs(core: ov.Core, xml: Path, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The mouths (uint8, as served) an IR makes of `samples`, at f32."""
    compiled = core.compile_model(xml, "CPU", F32)
    return np.concatenate([to_mouths(compiled(s)[0]) for s in samples])


def drift(got: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Differences of two sets of uint8 mouth crops (0–255): mean and max |diff|, 99.9th percentile, PSNR."""
    diff = np.abs(got.astype(np.int16) - reference.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
    return {"mean_abs": round(float(diff.mean()), 3), "p999_abs": float(np.percentile(diff, 99.9)), "max_abs": int(diff.max()),
            "psnr_db": round(psnr, 2)}  # fmt: skip
