"""The INT8 generator: `convert_to_openvino.py --int8` (the session's IR is converted with it) and PRECISION=int8."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from helpers import decode_mp4, make_settings

from harness import ASSETS
from wav2lip_core import TalkingHead
from wav2lip_core import audio as A
from wav2lip_core.compose import face_input
from wav2lip_core.errors import CheckpointError, ModelsMissing
from wav2lip_core.image import decode_image
from wav2lip_core.quantize import DEFAULT_FLOAT_BLOCKS, conv_blocks, drift, load_calibration, quantized

BOX = (180, 70, 280, 215)
DECODER_BLOCKS = {"audio_encoder", "output_block", *(f"face_decoder_blocks.{i}" for i in range(7))}
MIN_PSNR_DB = 30.0  # measured 35–39 dB on the random test network; a broken calibration or scale gives < 20


@pytest.fixture(scope="module")
def heads(ir_blazeface: Path) -> dict[str, TalkingHead]:
    return {p: TalkingHead.load(settings=make_settings(ir_blazeface, precision=p)) for p in ("int8", "f32")}


def test_manifest_lists_the_int8_generator_and_its_measured_drift(ir_dir: Path) -> None:
    int8 = json.loads((ir_dir / "manifest.json").read_text())["models"]["wav2lip"]["int8"]
    assert (ir_dir / int8["file"]).is_file() and (ir_dir / int8["decoder"]).is_file()
    assert int8["float_blocks"] == list(DEFAULT_FLOAT_BLOCKS)
    assert "speech" in int8["calibration"] and "face crops" in int8["calibration"]
    d = int8["drift_vs_f32"]
    assert MIN_PSNR_DB <= d["psnr_db"] < 60 and 0 < d["mean_abs"] <= d["p999_abs"] <= d["max_abs"]


def _weights_quantised(conv: ov.Node) -> bool:
    """Whether a convolution's weights come from an int8 constant (quantised) rather than an f16 one (float)."""
    types, todo = set(), [conv.input(1).get_source_output().get_node()]
    while todo:
        node = todo.pop()
        if node.get_type_name() == "Constant":
            types.add(node.get_output_element_type(0).get_type_name())
        todo += [i.get_source_output().get_node() for i in node.inputs()]
    return "i8" in types


def test_the_int8_files_hold_int8_convolutions_except_the_float_blocks(ir_dir: Path) -> None:
    core = ov.Core()
    for file, extra in (("wav2lip_decoder_int8.xml", set()), ("wav2lip_int8.xml", {f"face_encoder_blocks.{i}" for i in range(7)})):
        model = core.read_model(ir_dir / file)
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        blocks = conv_blocks(model)
        assert set(blocks) == DECODER_BLOCKS | extra
        for block, convs in blocks.items():
            quantised = {_weights_quantised(ops[c]) for c in convs}
            assert quantised == {block not in DEFAULT_FLOAT_BLOCKS}, (file, block)


def test_precision_int8_serves_the_quantised_generator_close_to_f32(heads: dict[str, TalkingHead]) -> None:
    int8, f32 = heads["int8"], heads["f32"]
    assert int8.info()["precision"].startswith("int8+") and f32.info()["precision"] == "f32"
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
