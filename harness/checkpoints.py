"""Seeded random checkpoints in the published on-disk formats (no downloads), and the real converter.

    python -m harness.checkpoints OUT_DIR --wav2lip-seed 1234 [--s3fd-seed 4321] [--sensitive]

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
from typing import TYPE_CHECKING

from harness import ROOT

if TYPE_CHECKING:
    from wav2lip_core.models.wav2lip import Wav2Lip

TIMEOUT_S = 300.0
CONVERT_TIMEOUT_S = 900.0
# --sensitive: 4 of the 64 channels of the last decoder block ×50. Measured by `--int8` (seed 1234): INT8 with the default
# float blocks drifts to 24.0 dB PSNR against f32, 31.5 dB with that block float too, 41.6 dB with the output block as well.
OUTLIER_CHANNELS, OUTLIER_GAIN = 4, 50.0


def save_wav2lip(out: Path, seed: int, sensitive: bool = False) -> None:
    """{'state_dict': {'module.<k>': tensor}, 'optimizer', 'global_step', 'global_epoch'}: wav2lip*.pth as published."""
    import torch

    from wav2lip_core.models import randomize_
    from wav2lip_core.models.wav2lip import Wav2Lip

    model = randomize_(Wav2Lip(), seed=seed)
    state = (sensitize_(model) if sensitive else model).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "optimizer": None, "global_step": 0, "global_epoch": 0}, out)


def save_s3fd(out: Path, seed: int) -> None:
    """A plain state_dict: s3fd.pth as published (face_alignment's s3fd-619a316812.pth)."""
    import torch

    from wav2lip_core.models import randomize_
    from wav2lip_core.models.s3fd import S3FD

    torch.save(randomize_(S3FD(), seed=seed).state_dict(), out)


def sensitize_(model: Wav2Lip) -> Wav2Lip:
    """A generator INT8 hurts, on purpose: outlier channels, as trained networks have. The last BatchNorm of the last
    decoder block scales OUTLIER_CHANNELS channels (weight and bias) by OUTLIER_GAIN; the output block's first
    convolution takes them ÷ OUTLIER_GAIN. A per-tensor INT8 activation must span the outliers, which leaves a few
    levels for the other channels: at that block's residual addition and at the output block's input."""
    import torch

    norm, conv = model.face_decoder_blocks[6][-1].conv_block[1], model.output_block[0].conv_block[0]
    with torch.no_grad():
        norm.weight[:OUTLIER_CHANNELS] *= OUTLIER_GAIN
        norm.bias[:OUTLIER_CHANNELS] *= OUTLIER_GAIN
        conv.weight[:, :OUTLIER_CHANNELS] /= OUTLIER_GAIN
    return model


def write_checkpoints(out_dir: Path, wav2lip_seed: int, s3fd_seed: int | None = None, sensitive: bool = False) -> dict[str, Path]:
    """OUT_DIR/wav2lip.pth (and s3fd.pth with a seed), made in a child process; {"wav2lip": path, "s3fd": path}.
    `sensitive`: the generator made sensitive to INT8 (`sensitize_`)."""
    cmd = [sys.executable, "-m", "harness.checkpoints", str(out_dir), "--wav2lip-seed", str(wav2lip_seed)]
    if s3fd_seed is not None:
        cmd += ["--s3fd-seed", str(s3fd_seed)]
    if sensitive:
        cmd.append("--sensitive")
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
    p.add_argument("--sensitive", action="store_true", help="a generator made sensitive to INT8 on purpose (outlier channels)")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = {"wav2lip": args.out_dir / "wav2lip.pth"}
    save_wav2lip(written["wav2lip"], args.wav2lip_seed, args.sensitive)
    if args.s3fd_seed is not None:
        written["s3fd"] = args.out_dir / "s3fd.pth"
        save_s3fd(written["s3fd"], args.s3fd_seed)
    print(json.dumps({k: str(v) for k, v in written.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
