"""Fixtures only (helpers are in helpers.py): seeded random checkpoints in the original on-disk
formats, converted once per session by the real converter; compiled pipelines; a real gunicorn
server on a loopback port.

Memory: compiled pipelines live per module and their heap is returned after it; what needs torch
and much memory runs in a child process (checkpoints, the PyTorch reference at batch 128, the
converter, the servers): the pytest process peaks ~1.3 GB instead of 3.2 GB.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import make_settings

from harness import ASSETS
from harness.checkpoints import run_converter, write_checkpoints
from harness.gunicorn import Gunicorn
from harness.page import PAGE_ORIGIN
from harness.redis import RedisServer
from lipsync_server.memory import trim
from wav2lip_core.runtime import BLAZEFACE, S3FD, Manifest

NODE_PROJECT = Path(__file__).parent / "node"  # what the Node tests install: package.json + package-lock.json
NPM_TIMEOUT_S = 300  # a clean install (~35 packages) takes seconds; a dead registry must not hang CI


@pytest.fixture(autouse=True, scope="module")
def _return_freed_memory() -> Iterator[None]:
    """After each module (its apps and pipelines dropped), hand the freed heap back to the system.

    glibc keeps freed memory in its arenas, so without this the process's RSS only grows from module
    to module: measured over `make test`, 1.5 GB at the peak without, 1.3 GB with."""
    yield
    gc.collect()
    trim()


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """wav2lip.pth as {'state_dict': {'module.<name>': tensor}, ...} and s3fd.pth as a plain state_dict."""
    return write_checkpoints(tmp_path_factory.mktemp("checkpoints"), wav2lip_seed=1234, s3fd_seed=4321)


@pytest.fixture(scope="session")
def ir_dir(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IR of the seeded checkpoints (generator, its INT8 version, S3FD, BlazeFace), converted by the real CLI."""
    out = tmp_path_factory.mktemp("ir") / "ir_models"
    proc = run_converter("--wav2lip", str(checkpoints["wav2lip"]), "--s3fd", str(checkpoints["s3fd"]), "--int8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def ir_blazeface(ir_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same generator with BlazeFace as detector (what `make serve` builds without checkpoints)."""
    out = tmp_path_factory.mktemp("ir_bf") / "ir_models"
    out.mkdir()
    for f in [*ir_dir.glob("wav2lip*"), *ir_dir.glob("blazeface*")]:  # the whole and the split generator
        shutil.copy(f, out / f.name)
    manifest = Manifest.read(ir_dir)
    del manifest.models[S3FD]
    replace(manifest, detector=BLAZEFACE).write(out)
    return out


@pytest.fixture(scope="module")
def head(ir_blazeface: Path):
    """The public API on the BlazeFace IR (what `make serve` builds without checkpoints)."""
    from wav2lip_core import TalkingHead

    return TalkingHead.load(settings=make_settings(ir_blazeface))


@pytest.fixture(scope="module")
def head_s3fd(ir_dir: Path):
    from wav2lip_core import TalkingHead

    return TalkingHead.load(settings=make_settings(ir_dir))


@pytest.fixture(scope="session")
def server(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """Default configuration (1 worker) with a small queue so overload is reachable in tests."""
    log = tmp_path_factory.mktemp("logs") / "gunicorn.log"
    avatars = tmp_path_factory.mktemp("avatars")  # registered avatars: not the checkout's avatars/
    env = {"CORS_ORIGINS": f"{PAGE_ORIGIN},null", "AVATAR_DIR": str(avatars)}
    with Gunicorn(ir_blazeface, log, env=env, ready_timeout_s=120) as s:
        yield s


@pytest.fixture(scope="session")
def node() -> str:
    """Node >= 18 (built-in fetch, FormData, Blob): the clients' runtime. Required: .ci/run installs it."""
    exe = shutil.which("node") or "/usr/bin/node"
    if not os.access(exe, os.X_OK):
        pytest.fail("'node' is not installed; the client tests need it (Debian: apt-get install nodejs; .ci/run does this)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        pytest.fail(f"node {version} has no built-in fetch; the clients need Node >= 18")
    return exe


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium for the browser page and the docs' page examples. Required: .ci/run installs it."""
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(exe, os.X_OK):
        pytest.fail("'chromium' is not installed; the browser tests need it (Debian: apt-get install chromium; .ci/run does this)")
    return exe


@pytest.fixture(scope="session")
def node_packages() -> Path:
    """tests/node/node_modules, installed from its lockfile (`npm ci`) unless every locked package is there already:
    axios and form-data (the drop-in client), TypeScript and Node's types, the Node client as a package. Required."""
    modules, lock = NODE_PROJECT / "node_modules", json.loads((NODE_PROJECT / "package-lock.json").read_text())
    installed = modules / ".package-lock.json"  # npm writes it last: a finished install, and what it installed
    if installed.is_file() and set(lock["packages"]) - {""} <= set(json.loads(installed.read_text())["packages"]):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("'npm' is not installed; the Node tests need it (Debian: apt-get install npm; .ci/run does this)")
    cmd = [npm, "ci", "--prefix", str(NODE_PROJECT), "--no-audit", "--no-fund"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} took longer than {NPM_TIMEOUT_S} s:\n{e.stderr}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return modules


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (append-only data in a temporary folder); tests use their own key prefixes."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
