"""Seeded random checkpoints in the published on-disk formats (no downloads), and the real converter.

    python -m harness.checkpoints OUT_DIR --wav2lip-seed 1234 [--s3fd-seed 4321]

`write_checkpoints` runs that in a child process: building the models needs torch and a few hundred
MB that the caller (the pytest process, the bench) then never holds. `run_converter` runs
convert_to_openvino.py, which turns checkpoints into the IR the server loads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from harness import ROOT

TIMEOUT_S = 300.0
CONVERT_TIMEOUT_S = 900.0


def save_wav2lip(out: Path, seed: int) -> None:
    """{'state_dict': {'module.<k>': tensor}, 'optimizer', 'global_step', 'global_epoch'}: wav2lip*.pth as published."""
    import torch

    from wav2lip_core.models import randomize_
    from wav2lip_core.models.wav2lip import Wav2Lip

    state = randomize_(Wav2Lip(), seed=seed).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "optimizer": None, "global_step": 0, "global_epoch": 0}, out)


def save_s3fd(out: Path, seed: int) -> None:
    """A plain state_dict: s3fd.pth as published (face_alignment's s3fd-619a316812.pth)."""
    import torch

    from wav2lip_core.models import randomize_
    from wav2lip_core.models.s3fd import S3FD

    torch.save(randomize_(S3FD(), seed=seed).state_dict(), out)


def write_checkpoints(out_dir: Path, wav2lip_seed: int, s3fd_seed: int | None = None) -> dict[str, Path]:
    """OUT_DIR/wav2lip.pth (and s3fd.pth with a seed), made in a child process; {"wav2lip": path, "s3fd": path}."""
    cmd = [sys.executable, "-m", "harness.checkpoints", str(out_dir), "--wav2lip-seed", str(wav2lip_seed)]
    if s3fd_seed is not None:
        cmd += ["--s3fd-seed", str(s3fd_seed)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return {name: Path(path) for name, path in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def run_converter(*args: str, env: Mapping[str, str] | None = None, stdin: int = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """convert_to_openvino.py ARGS in a child process (in `env`, reading `stdin`: no terminal unless given), its output captured."""
    cmd = [sys.executable, str(ROOT / "convert_to_openvino.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, stdin=stdin, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--wav2lip-seed", type=int, required=True)
    p.add_argument("--s3fd-seed", type=int, help="also write s3fd.pth")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = {"wav2lip": args.out_dir / "wav2lip.pth"}
    save_wav2lip(written["wav2lip"], args.wav2lip_seed)
    if args.s3fd_seed is not None:
        written["s3fd"] = args.out_dir / "s3fd.pth"
        save_s3fd(written["s3fd"], args.s3fd_seed)
    print(json.dumps({k: str(v) for k, v in written.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
