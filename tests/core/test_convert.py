"""The converter: original checkpoint formats in, IR that matches PyTorch out; broken input refused cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

from harness.checkpoints import run_converter
from wav2lip_core.models.s3fd import S3FD
from wav2lip_core.models.wav2lip import Wav2Lip


def test_manifest_describes_every_model(ir_dir: Path, checkpoints: dict[str, Path]) -> None:
    m = json.loads((ir_dir / "manifest.json").read_text())
    assert m["detector"] == "s3fd"
    assert set(m["models"]) == {"wav2lip", "s3fd", "blazeface"}
    assert m["openvino_version"] == ov.get_version()
    import hashlib

    assert m["models"]["wav2lip"]["sha256"] == hashlib.sha256(checkpoints["wav2lip"].read_bytes()).hexdigest()
    assert m["models"]["wav2lip"]["weights"] == "real" and m["models"]["blazeface"]["weights"] == "real"
    assert m["models"]["wav2lip"]["inputs"] == {"mel": "[?,1,80,16]", "face": "[?,6,96,96]"}
    files = [e["file"] for e in m["models"].values()] + list(m["models"]["wav2lip"]["split"].values())
    assert len(files) == 5
    for f in files:
        assert (ir_dir / f).is_file() and (ir_dir / f).with_suffix(".bin").is_file()


def test_split_generator_equals_the_whole(ir_dir: Path) -> None:
    """Face encoder once + decoder with broadcast features = the whole network on a repeated face."""
    core, f32 = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    rng = np.random.default_rng(11)
    mel = rng.uniform(-4, 4, (5, 1, 80, 16)).astype(np.float32)
    face = rng.random((1, 6, 96, 96), dtype=np.float32)
    whole = core.compile_model(ir_dir / "wav2lip.xml", "CPU", f32)({"mel": mel, "face": np.repeat(face, 5, axis=0)})[0]
    feats = core.compile_model(ir_dir / "wav2lip_face.xml", "CPU", f32)({"face": face})
    decoder = core.compile_model(ir_dir / "wav2lip_decoder.xml", "CPU", f32)
    split = decoder({"mel": mel} | {p.get_any_name(): feats[p.get_any_name()] for p in decoder.inputs[1:]})[0]
    assert split.shape == whole.shape == (5, 3, 96, 96)
    assert np.abs(split - whole).max() < 1e-4


def _load_state(path: Path, model: torch.nn.Module) -> torch.nn.Module:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


def test_generator_ir_matches_pytorch(ir_dir: Path, checkpoints: dict[str, Path]) -> None:
    model = _load_state(checkpoints["wav2lip"], Wav2Lip())
    rng = np.random.default_rng(7)
    mel = rng.uniform(-4, 4, (3, 1, 80, 16)).astype(np.float32)
    face = rng.random((3, 6, 96, 96), dtype=np.float32)
    compiled = ov.Core().compile_model(ir_dir / "wav2lip.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({"mel": mel, "face": face})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(mel), torch.from_numpy(face)).numpy()
    assert ref.std() > 0.01  # the random model is not degenerate, so the comparison means something
    assert np.abs(got - ref).max() * 255 < 1.0


def test_s3fd_ir_matches_pytorch(ir_dir: Path, checkpoints: dict[str, Path]) -> None:
    model = _load_state(checkpoints["s3fd"], S3FD())
    image = np.random.default_rng(3).uniform(-120, 130, (1, 3, 192, 256)).astype(np.float32)
    compiled = ov.Core().compile_model(ir_dir / "s3fd.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({"image": image})
    with torch.no_grad():
        refs = model(torch.from_numpy(image))
    for port, ref in zip(compiled.outputs, refs, strict=True):
        r = ref.numpy()
        assert got[port].shape == r.shape
        assert np.abs(got[port] - r).max() <= 1e-2 * max(1.0, np.abs(r).max())


def test_plain_state_dict_without_module_prefix(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    state = torch.load(checkpoints["wav2lip"], weights_only=True)["state_dict"]
    plain = tmp_path / "plain.pth"
    torch.save({k.removeprefix("module."): v for k, v in state.items()}, plain)
    proc = run_converter("--wav2lip", str(plain), "--out", str(tmp_path / "ir"))
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "ir" / "manifest.json").read_text())
    assert m["detector"] == "blazeface" and "s3fd" not in m["models"]
    assert "max abs diff" in proc.stdout


def test_random_init_is_labelled(tmp_path: Path) -> None:
    proc = run_converter("--random-init", "5", "--out", str(tmp_path / "ir"))
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM" in proc.stdout
    m = json.loads((tmp_path / "ir" / "manifest.json").read_text())
    assert m["models"]["wav2lip"]["weights"] == "random" and m["models"]["wav2lip"]["seed"] == 5


def _broken(kind: str, checkpoints: dict[str, Path], d: Path) -> Path:
    p = d / f"{kind}.pth"
    if kind == "missing":
        return d / "does-not-exist.pth"
    if kind == "text":
        p.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        p.write_bytes(checkpoints["wav2lip"].read_bytes()[:100_000])
    elif kind == "wrong_keys":  # an S3FD checkpoint given as the generator
        p.write_bytes(checkpoints["s3fd"].read_bytes())
    elif kind == "wrong_shapes":
        state = torch.load(checkpoints["wav2lip"], weights_only=True)["state_dict"]
        state["module.output_block.1.weight"] = torch.zeros(3, 16, 1, 1)
        torch.save({"state_dict": state}, p)
    return p


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "wrong_keys", "wrong_shapes"])
def test_broken_checkpoint_is_refused_cleanly(kind: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ir"
    out.mkdir()
    (out / "keep.txt").write_text("previous content")
    proc = run_converter("--wav2lip", str(_broken(kind, checkpoints, tmp_path)), "--out", str(out))
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # no partial IR
    assert not list(tmp_path.glob(".convert-*"))  # staging folder removed
