"""The INT8 generator: `convert_to_openvino.py --int8` (the session's IR is converted with it) and PRECISION=int8;
its quality floor on a network made sensitive to INT8 on purpose (harness.checkpoints.sensitize_)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from helpers import decode_mp4, loaded_app, make_settings

from harness import ASSETS
from harness.checkpoints import run_converter, write_checkpoints
from wav2lip_core import TalkingHead
from wav2lip_core import audio as A
from wav2lip_core.compose import face_input
from wav2lip_core.errors import CheckpointError, ModelsMissing
from wav2lip_core.image import decode_image
from wav2lip_core.int8_floor import MIN_SPEEDUP
from wav2lip_core.quantize import BLOCK, DEFAULT_FLOAT_BLOCKS, conv_blocks, drift, load_calibration, quantized
from wav2lip_core.runtime import DEFAULT_FLOOR_DB

BOX = (180, 70, 280, 215)
DECODER_BLOCKS = {"audio_encoder", "output_block", *(f"face_decoder_blocks.{i}" for i in range(7))}
MIN_PSNR_DB = 30.0  # measured 35–39 dB on the random test network; a broken calibration or scale gives < 20
FEW_ITEMS = ("--int8-calibration-items", "16")  # the sensitive network's runs: NNCF on 16 pairs (seconds, not tens)


@pytest.fixture(scope="module")
def heads(ir_blazeface: Path) -> dict[str, TalkingHead]:
    return {p: TalkingHead.load(settings=make_settings(ir_blazeface, precision=p)) for p in ("int8", "f32")}


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wav2lip.pth of the test seed with outlier channels: INT8 with the default float blocks drifts far under the floor."""
    return write_checkpoints(tmp_path_factory.mktemp("sensitive"), wav2lip_seed=1234, sensitive=True)["wav2lip"]


def _int8_entry(ir: Path) -> dict | None:
    return json.loads((ir / "manifest.json").read_text())["models"]["wav2lip"]["int8"]


def _convert_int8(checkpoint: Path, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run_converter("--wav2lip", str(checkpoint), "--int8", *FEW_ITEMS, *options, "--out", str(out))


def test_manifest_lists_the_int8_generator_and_its_measured_drift(ir_dir: Path) -> None:
    int8 = _int8_entry(ir_dir)
    assert (ir_dir / int8["file"]).is_file() and (ir_dir / int8["decoder"]).is_file()
    assert "speech" in int8["calibration"] and "face crops" in int8["calibration"]
    d = int8["drift_vs_f32"]
    assert DEFAULT_FLOOR_DB <= d["psnr_db"] < 60 and 0 < d["mean_abs"] <= d["p999_abs"] <= d["max_abs"]
    # the random network: the default float blocks meet the floor fast enough, so they were the only mix tried
    assert int8["float_blocks"] == list(DEFAULT_FLOAT_BLOCKS) and int8["floor_db"] == DEFAULT_FLOOR_DB
    assert [p["kind"] for p in int8["curve"]] == ["start"] and int8["curve"][0]["psnr_db"] == d["psnr_db"]
    assert int8["speedup_vs_bf16"] >= MIN_SPEEDUP and "alternating passes" in int8["timing"]


def _weights_quantised(conv: ov.Node) -> bool:
    """Whether a convolution's weights come from an int8 constant (quantised) rather than an f16 one (float)."""
    types, todo = set(), [conv.input(1).get_source_output().get_node()]
    while todo:
        node = todo.pop()
        if node.get_type_name() == "Constant":
            types.add(node.get_output_element_type(0).get_type_name())
        todo += [i.get_source_output().get_node() for i in node.inputs()]
    return "i8" in types


def _blocks_fed_quantised_activations(model: ov.Model) -> set[str]:
    """The blocks with an op (a convolution, a residual addition, …) whose input is a FakeQuantize of an activation."""
    of_conv = {conv: block for block, convs in conv_blocks(model).items() for conv in convs}
    found = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize" or op.input(0).get_source_output().get_node().get_type_name() == "Constant":
            continue
        for target in op.output(0).get_target_inputs():
            name = target.get_node().get_friendly_name()
            block = of_conv.get(name) or next((m.group(1) for m in [BLOCK.search(name)] if m), None)
            found |= {block} if block else set()
    return found


def _assert_float_exactly(model: ov.Model, float_blocks: set[str], blocks: set[str]) -> None:
    """Every convolution INT8 but those of `float_blocks`, whose ops take no quantised activation either."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    convs = conv_blocks(model)
    assert set(convs) == blocks
    for block, names in convs.items():
        assert {_weights_quantised(ops[c]) for c in names} == {block not in float_blocks}, block
    assert _blocks_fed_quantised_activations(model) == blocks - float_blocks


def test_the_int8_files_hold_int8_convolutions_except_the_float_blocks(ir_dir: Path) -> None:
    core = ov.Core()
    for file, extra in (("wav2lip_decoder_int8.xml", set()), ("wav2lip_int8.xml", {f"face_encoder_blocks.{i}" for i in range(7)})):
        _assert_float_exactly(core.read_model(ir_dir / file), set(DEFAULT_FLOAT_BLOCKS), DECODER_BLOCKS | extra)


def test_a_sensitive_network_keeps_more_blocks_float_to_meet_the_floor(sensitive: Path, tmp_path: Path) -> None:
    proc = _convert_int8(sensitive, tmp_path / "ir")
    assert proc.returncode == 0, proc.stderr
    int8 = _int8_entry(tmp_path / "ir")
    curve, chosen = int8["curve"], int8["float_blocks"]
    assert curve[0]["kind"] == "start" and curve[0]["psnr_db"] < DEFAULT_FLOOR_DB  # the defaults alone do not meet it
    probes, steps = ([p for p in curve if p["kind"] == kind] for kind in ("probe", "step"))
    assert {p["float_blocks"][-1] for p in probes} == DECODER_BLOCKS - set(DEFAULT_FLOAT_BLOCKS)
    assert steps[0]["float_blocks"] == max(probes, key=lambda p: p["gain_db_per_gmac"])["float_blocks"]  # most gain per cost first
    assert steps[-1]["float_blocks"] == chosen and chosen[:3] == list(DEFAULT_FLOAT_BLOCKS)
    assert "face_decoder_blocks.6" in chosen  # where the outliers are
    assert all(p["psnr_db"] < DEFAULT_FLOOR_DB for p in steps[:-1])  # the search stopped at the first mix that met it
    assert int8["drift_vs_f32"]["psnr_db"] == steps[-1]["psnr_db"] >= DEFAULT_FLOOR_DB
    assert int8["speedup_vs_bf16"] == steps[-1]["speedup_vs_bf16"] >= MIN_SPEEDUP
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("wrote ") and f"INT8: {', '.join(chosen)} float" in last, last
    assert f"PSNR {int8['drift_vs_f32']['psnr_db']} dB" in last and f"{int8['speedup_vs_bf16']:.2f}× bf16" in last, last
    _assert_float_exactly(ov.Core().read_model(tmp_path / "ir" / int8["decoder"]), set(chosen), DECODER_BLOCKS)


def test_a_floor_no_mix_meets_fast_enough_is_refused_and_the_float_ir_written(sensitive: Path, tmp_path: Path) -> None:
    out = tmp_path / "ir"
    start = (*DEFAULT_FLOAT_BLOCKS, "face_decoder_blocks.2", "face_decoder_blocks.3", "face_decoder_blocks.4")  # fewer mixes to try
    proc = _convert_int8(sensitive, out, "--int8-float", ",".join(start), "--int8-floor", "60")
    assert proc.returncode == 2, proc.stdout[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --int8: no mix of float blocks reaches PSNR ≥ 60 dB"), proc.stderr
    assert f"best: {', '.join(start)}" in lines[0] and "× bf16" in lines[0] and "--int8-floor none" in lines[0]
    assert f"start {', '.join(start)} float: PSNR" in proc.stdout  # --int8-float is where the search starts
    assert _int8_entry(out) is None and not list(out.glob("*int8*"))
    assert all((out / f).is_file() for f in ("wav2lip.xml", "wav2lip_decoder.xml", "wav2lip_face.xml", "blazeface.xml"))


def test_no_floor_writes_int8_whatever_the_drift_and_serving_it_warns(sensitive: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "ir"
    proc = _convert_int8(sensitive, out, "--int8-floor", "none")
    assert proc.returncode == 0, proc.stderr
    int8 = _int8_entry(out)
    assert int8["floor_db"] is None and int8["float_blocks"] == list(DEFAULT_FLOAT_BLOCKS) and len(int8["curve"]) == 1
    psnr = int8["drift_vs_f32"]["psnr_db"]
    assert psnr < DEFAULT_FLOOR_DB and "WARNING: the INT8 generator was written with --int8-floor none" in proc.stdout
    with caplog.at_level(logging.WARNING, logger="wav2lip_core.api"):
        app = loaded_app(make_settings(out, precision="int8", avatar_dir=tmp_path / "avatars"))
    assert any("--int8-floor none" in r.getMessage() and f"PSNR {psnr} dB" in r.getMessage() for r in caplog.records)
    health = app.test_client().get("/health").get_json()
    assert health["int8"] == {"float_blocks": list(DEFAULT_FLOAT_BLOCKS), "psnr_db": psnr, "floor_db": None,
                              "speedup_vs_bf16": int8["speedup_vs_bf16"]}  # fmt: skip
    assert "--int8-floor none" in health["warning"] and "RANDOM" not in health["warning"]


def test_precision_int8_serves_the_quantised_generator_close_to_f32(heads: dict[str, TalkingHead]) -> None:
    int8, f32 = heads["int8"], heads["f32"]
    assert int8.info()["precision"].startswith("int8+") and f32.info()["precision"] == "f32"
    assert int8.info()["int8"]["floor_db"] == DEFAULT_FLOOR_DB and f32.info()["int8"] is None and int8.warnings() == []
    frame = decode_image((ASSETS / "astronaut.jpg").read_bytes(), 10**8)
    sound = A.decode_audio((ASSETS / "speech.wav").read_bytes(), 60)
    mels = A.mel_chunks(A.melspectrogram(A.to_16k_mono(sound)), 40, 25.0)  # never calibrated on: held-out speech
    face = face_input(frame, BOX)
    got, ref = (np.concatenate(list(h.lipsync.generator.run(mels, face))) for h in (int8, f32))
    d = drift(got, ref)
    assert MIN_PSNR_DB <= d["psnr_db"] < 60, d  # quantised (not the float IR), and close to it
    clip = int8.lipsync.clip_generator()  # video avatars: the whole network, quantised too
    assert clip.precision.startswith("int8+")
    whole = np.concatenate(list(clip.run(mels[:8], np.stack([face, face]), index=np.arange(8) % 2)))
    assert drift(whole, ref[:8])["psnr_db"] >= MIN_PSNR_DB


def test_precision_int8_makes_a_whole_video(heads: dict[str, TalkingHead]) -> None:
    result = heads["int8"].generate((ASSETS / "speech.wav").read_bytes(), (ASSETS / "astronaut.jpg").read_bytes(), box=BOX)
    d = decode_mp4(result.mp4)
    assert len(d.frames) == result.frames == 160 and (d.width, d.height) == (512, 512)


def test_precision_int8_without_an_int8_generator_names_the_fix(ir_blazeface: Path, tmp_path: Path) -> None:
    for f in ir_blazeface.iterdir():
        if "int8" not in f.name:
            (tmp_path / f.name).symlink_to(f)
    (tmp_path / "manifest.json").unlink()
    manifest = json.loads((ir_blazeface / "manifest.json").read_text())
    del manifest["models"]["wav2lip"]["int8"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelsMissing, match=r"PRECISION=int8.*--int8"):
        TalkingHead.load(settings=make_settings(tmp_path, precision="int8"))


def test_unknown_float_blocks_are_refused_with_the_known_ones(ir_dir: Path) -> None:
    model = ov.Core().read_model(ir_dir / "wav2lip_decoder.xml")
    with pytest.raises(CheckpointError, match=r"unknown generator block\(s\) \['decoder'\]; known: .*audio_encoder"):
        quantized(model, [], ("decoder",))


def test_int8_without_nncf_says_what_to_install(ir_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # `import nncf` then raises ImportError
    model = ov.Core().read_model(ir_dir / "wav2lip_decoder.xml")
    with pytest.raises(CheckpointError, match=r"needs the nncf package: pip install -r requirements-convert.txt"):
        quantized(model, [], ())


def test_calibration_needs_speech_and_faces(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="needs speech files"):
        load_calibration(tmp_path, 10)
    shutil.copy(ASSETS / "speech.wav", tmp_path / "speech.wav")
    (tmp_path / "faces.json").write_text(json.dumps({"faces": [{"image": str(ASSETS / "astronaut.jpg"), "box": list(BOX)}]}))
    with pytest.raises(CheckpointError, match="has 160 frames of speech; --int8 needs at least 500"):
        load_calibration(tmp_path, 500)
    c = load_calibration(tmp_path, 100)
    assert c.mels.shape == (100, 80, 16) and c.faces.shape == (100, 6, 96, 96) and len({f.tobytes() for f in c.faces}) > 1
