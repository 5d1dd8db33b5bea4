"""The "before": Wav2Lip's public `inference.py` pipeline, PyTorch eager, for a still image + box.

A plain transcription of the original behaviour (librosa mel, 16-column chunks at int(i·80/fps),
batch 128, BGR crop → 96², lower half zeroed, /255, output ×255 truncated to uint8, cv2.resize
back into the box) used by the benchmark as the baseline and by the tests as the independent
reference for PSNR. Imports torch: bench and tests only.

    python -m harness.reference CKPT IMAGE AUDIO X1 Y1 X2 Y2 OUT.npy   # the box regions of every frame
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import librosa
import numpy as np
import torch

from harness import ROOT
from harness.wav2lip_audio import reference_chunks, reference_mel
from wav2lip_core.models.wav2lip import Wav2Lip

TIMEOUT_S = 600.0


def load_checkpoint(path: Path) -> Wav2Lip:
    """As inference.py's load_model: checkpoint['state_dict'] with `module.` stripped."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model = Wav2Lip()
    model.load_state_dict({k.replace("module.", ""): v for k, v in state.items()}, strict=False)
    return model.eval()


def reference_frames(
    model: Wav2Lip, frame: np.ndarray, audio_path: Path, box: tuple[int, int, int, int], fps: float = 25.0, batch: int = 128
) -> Iterator[np.ndarray]:
    """Yield inference.py's un-encoded output frames (BGR) for a still image and a given box."""
    wav = librosa.load(str(audio_path), sr=16000)[0]
    chunks = reference_chunks(reference_mel(wav), fps)
    x1, y1, x2, y2 = box
    face = cv2.resize(frame[y1:y2, x1:x2], (96, 96))
    for start in range(0, len(chunks), batch):
        mels = np.asarray(chunks[start : start + batch])
        img = np.asarray([face] * len(mels))
        masked = img.copy()
        masked[:, 48:] = 0
        img = np.concatenate((masked, img), axis=3) / 255.0
        img_t = torch.FloatTensor(np.transpose(img, (0, 3, 1, 2)))
        mel_t = torch.FloatTensor(np.transpose(mels[..., None], (0, 3, 1, 2)))
        with torch.no_grad():
            pred = model(mel_t, img_t).numpy().transpose(0, 2, 3, 1) * 255.0
        for p in pred:
            out = frame.copy()
            out[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
            yield out


def timed_reference(checkpoint: Path, image: Path, audio_path: Path, box: tuple[int, int, int, int], fps: float = 25.0) -> dict[str, float]:
    """The baseline as a user runs it: fresh model load, frames made and kept (inference.py writes an AVI)."""
    t0 = time.perf_counter()
    model = load_checkpoint(checkpoint)
    frame = cv2.imread(str(image))
    n = sum(1 for _ in reference_frames(model, frame, audio_path, box, fps))
    return {"frames": n, "seconds": time.perf_counter() - t0}


TEST_BATCH = 32  # same frames as inference.py's 128 (each frame is computed alone); 0.6 GB less at the peak


def reference_crops(checkpoint: Path, image: Path, audio_path: Path, box: tuple[int, int, int, int]) -> list[np.ndarray]:
    """reference_frames' box regions at 25 fps, computed in a child process at TEST_BATCH: PyTorch eager
    at batch 128 peaks ~1.9 GB, which neither the caller (the pytest process) nor the suite should hold."""
    with tempfile.TemporaryDirectory(prefix="wav2lip-reference-") as tmp:
        out = Path(tmp) / "crops.npy"
        cmd = [sys.executable, "-m", "harness.reference", str(checkpoint), str(image), str(audio_path), *map(str, box), str(out),
               "--batch", str(TEST_BATCH)]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"harness.reference failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        return list(np.load(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="inference.py's frames for a still image and a box; their box regions to OUT.npy")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("image", type=Path)
    p.add_argument("audio", type=Path)
    p.add_argument("box", type=int, nargs=4, metavar="X1 Y1 X2 Y2")
    p.add_argument("out", type=Path, help="(frames, y2 - y1, x2 - x1, 3) uint8 BGR")
    p.add_argument("--batch", type=int, default=128, help="frames per PyTorch call (inference.py: 128)")
    args = p.parse_args(argv)
    x1, y1, x2, y2 = args.box
    model, frame = load_checkpoint(args.checkpoint), cv2.imread(str(args.image))
    frames = reference_frames(model, frame, args.audio, tuple(args.box), batch=args.batch)
    np.save(args.out, np.stack([f[y1:y2, x1:x2].copy() for f in frames]))  # copies: each full frame is freed at once
    return 0


if __name__ == "__main__":
    sys.exit(main())
