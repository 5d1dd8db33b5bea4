"""Shared fixtures: seeded random checkpoints in the original on-disk formats, converted once per
session by the real converter; a compiled pipeline; a real gunicorn server on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "test_assets"
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """wav2lip.pth as {'state_dict': {'module.<name>': tensor}, ...} and s3fd.pth as a plain state_dict."""
    import torch

    from wav2lip_core.models import randomize_
    from wav2lip_core.models.s3fd import S3FD
    from wav2lip_core.models.wav2lip import Wav2Lip

    d = tmp_path_factory.mktemp("checkpoints")
    gen = randomize_(Wav2Lip(), seed=1234).state_dict()
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in gen.items()}, "optimizer": None, "global_step": 0, "global_epoch": 0},
        d / "wav2lip.pth",
    )
    torch.save(randomize_(S3FD(), seed=4321).state_dict(), d / "s3fd.pth")
    return {"wav2lip": d / "wav2lip.pth", "s3fd": d / "s3fd.pth"}


def run_converter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "convert_to_openvino.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


@pytest.fixture(scope="session")
def ir_dir(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IR of the seeded checkpoints (generator + S3FD + BlazeFace), converted by the real CLI."""
    out = tmp_path_factory.mktemp("ir") / "ir_models"
    proc = run_converter("--wav2lip", str(checkpoints["wav2lip"]), "--s3fd", str(checkpoints["s3fd"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def ir_blazeface(ir_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same generator with BlazeFace as detector (what `make serve` builds without checkpoints)."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("ir_bf") / "ir_models"
    out.mkdir()
    for f in [*ir_dir.glob("wav2lip*"), *ir_dir.glob("blazeface*")]:  # the whole and the split generator
        shutil.copy(f, out / f.name)
    manifest = json.loads((ir_dir / "manifest.json").read_text())
    manifest["detector"] = "blazeface"
    del manifest["models"]["s3fd"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def make_settings(models_dir: Path, **overrides: object):
    from dataclasses import replace

    from wav2lip_core.config import Settings

    return replace(Settings(), models_dir=models_dir, cache_dir=None, **overrides)


def loaded_app(settings):
    """A Flask app (in process) whose models are compiled and warm."""
    from app import create_app

    app = create_app(settings)
    models = app.extensions["models"]
    models.start_loading()
    t0 = time.monotonic()
    while models.head is None and models.error is None and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    assert models.head is not None, models.error
    return app


@pytest.fixture(scope="session")
def lipsync(ir_blazeface: Path):
    from wav2lip_core.pipeline import LipSync

    return LipSync.load(make_settings(ir_blazeface))


@pytest.fixture(scope="session")
def lipsync_s3fd(ir_dir: Path):
    from wav2lip_core.pipeline import LipSync

    return LipSync.load(make_settings(ir_dir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 60.0) -> float:
    """Poll /health until 200; returns seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


class Server:
    """A real gunicorn serving app:app on a loopback port."""

    def __init__(self, models_dir: Path, log_path: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MODELS_DIR": str(models_dir), "OV_CACHE_DIR": "", "BIND": f"127.0.0.1:{self.port}", **env}
        self.log_path = log_path
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_ready(self.url)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Default configuration (1 worker) with a small queue so overload is reachable in tests."""
    s = Server(ir_blazeface, tmp_path_factory.mktemp("logs") / "gunicorn.log", CORS_ORIGINS="http://localhost:8123,null")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def head(ir_blazeface: Path):
    from wav2lip_core import TalkingHead

    return TalkingHead.load(settings=make_settings(ir_blazeface))


@pytest.fixture(scope="session")
def head_s3fd(ir_dir: Path):
    from wav2lip_core import TalkingHead

    return TalkingHead.load(settings=make_settings(ir_dir))
