"""The public Python API and the CLI, as docs/library.md shows them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import decode_mp4

from harness import ASSETS, ROOT
from wav2lip_core import Avatar, TalkingHead
from wav2lip_core.errors import BadRequest, LimitExceeded
from wav2lip_core.runtime import Manifest

BOX = (180, 70, 280, 215)


LIBRARY_DOC = ROOT / "docs" / "library.md"  # the CLI and the Python API, without a server


def doc_block(heading: str, lang: str) -> str:
    """The first ```lang block after `heading` in docs/library.md."""
    text = LIBRARY_DOC.read_text()
    start = text.index(heading)
    match = re.search(rf"```{lang}\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no {lang} block after {heading!r}"
    return match.group(1)


@pytest.fixture
def workdir(tmp_path: Path, ir_blazeface: Path) -> Path:
    """A folder laid out like the repository root: ir_models/ and test_assets/."""
    (tmp_path / "ir_models").symlink_to(ir_blazeface)
    (tmp_path / "test_assets").symlink_to(ASSETS)
    return tmp_path


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OV_CACHE_DIR": "", **env}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def test_the_python_example_runs_as_written(workdir: Path) -> None:
    proc = run([sys.executable, "-c", doc_block("## Python API", "python")], workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    estimate, frames = float(proc.stdout.splitlines()[0]), int(proc.stdout.splitlines()[1].split()[0])
    assert frames == 160 and estimate > 0
    d = decode_mp4((workdir / "out.mp4").read_bytes())
    assert len(d.frames) == 160 and (d.width, d.height) == (512, 512)


def test_the_cli_line_runs_as_written(workdir: Path) -> None:
    line = doc_block("## Command line", "sh").strip()
    cmd = line.replace(".venv/bin/python", sys.executable).split()
    proc = run(cmd, workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote out.mp4: 160 frames" in proc.stdout
    bad = run([*cmd, "--fps", "0"], workdir)
    assert bad.returncode == 2 and "error: fps must be a number between 1 and 60" in bad.stderr
    missing = run(cmd, workdir, MODELS_DIR=str(workdir / "nowhere"))
    assert missing.returncode == 2 and "convert_to_openvino.py" in missing.stderr


def test_info_says_what_is_served(head: TalkingHead) -> None:
    info = head.info()
    assert info["detector"] == "blazeface"
    assert info["generator_weights"] == Manifest.read(head.settings.models_dir).generator.weights == "real"  # a seeded checkpoint
    assert info["precision"] in ("bf16", "f32") and info["batch_size"] == head.settings.batch_size
    assert info["threads"] >= 1 and info["openvino"]


def test_estimate_is_linear_in_audio_and_grows_with_pixels(head: TalkingHead) -> None:
    e1, e2, e4 = (head.estimate_seconds(s, 512, 512) for s in (10, 20, 40))
    assert 0 < e1 < e2 < e4
    assert abs((e4 - e2) - 2 * (e2 - e1)) < 1e-6 * e4  # equal steps: fixed + per-frame
    assert head.estimate_seconds(20, 1920, 1080) > e2


def test_prepared_avatar_array_and_bytes_give_identical_video(head: TalkingHead) -> None:
    import cv2

    image = (ASSETS / "astronaut.jpg").read_bytes()
    samples, rate = sf.read(ASSETS / "speech.wav", dtype="float32")
    assert rate == 16000
    audio = samples[: rate // 2]
    avatar = head.prepare_avatar(image, box=BOX)
    assert isinstance(avatar, Avatar) and avatar.boxes == (BOX,) and avatar.kind == "image"
    from_avatar = head.generate(audio, avatar)
    from_bytes = head.generate(audio, image, box=BOX)
    from_array = head.generate(audio, cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR), box=BOX)
    frames = [decode_mp4(r.mp4).frames for r in (from_avatar, from_bytes, from_array)]
    assert len(frames[0]) == 13 and all(np.array_equal(a, b) for a, b in zip(frames[0], frames[1], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(frames[0], frames[2], strict=True))


def test_misuse_is_refused_clearly(head: TalkingHead) -> None:
    avatar = head.prepare_avatar((ASSETS / "astronaut.jpg").read_bytes(), box=BOX)
    with pytest.raises(TypeError, match="prepare_avatar"):
        head.generate(np.zeros(1600, np.float32), avatar, box=BOX)
    with pytest.raises(BadRequest) as e:
        head.generate(np.zeros(1600, np.float32), avatar, loop="sideways")
    assert e.value.code == "invalid_loop"
    with pytest.raises(LimitExceeded):
        head.generate(np.zeros(int(16000 * (head.settings.max_audio_seconds + 1)), np.float32), avatar)
    with pytest.raises(TypeError, match="unknown setting"):
        TalkingHead.load(head.settings.models_dir, batchsize=4)
