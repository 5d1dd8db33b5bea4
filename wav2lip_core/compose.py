"""Crop, mask and paste-back, exactly as Wav2Lip's `inference.py` (pure numpy/cv2).

Boxes are `schema.Box`: (x1, y1, x2, y2) pixels with x2/y2 exclusive, the crop is `frame[y1:y2, x1:x2]`.
"""

from __future__ import annotations

import cv2
import numpy as np

from .schema import Box

IMG_SIZE = 96  # Wav2Lip's face crop side


def round_to_even(frame: np.ndarray) -> np.ndarray:
    """Drop a last odd row/column: H.264 yuv420p needs even sides, and no pixel moves."""
    h, w = frame.shape[:2]
    return frame[: h - h % 2, : w - w % 2]


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int, float]:
    """The size a width×height picture is downscaled to so its longer side is ≤ max_side (0: no limit), and the scale."""
    if not max_side or max(width, height) <= max_side:
        return width, height, 1.0
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The rendered frame's size for a width×height input: scaled to MAX_OUTPUT_SIDE, then even-sided (round_to_even)."""
    w, h, _ = scaled_size(width, height, max_side)
    return w - w % 2, h - h % 2


def limit_side(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is ≤ max_side (0: no limit); returns the frame and its scale."""
    h, w = frame.shape[:2]
    sw, sh, scale = scaled_size(w, h, max_side)
    if scale == 1.0:
        return frame, 1.0
    return cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA), scale


def fit_box(box: Box, scale: float, frame: np.ndarray) -> Box:
    """A caller's box on the input image → the same region on the (scaled, even-sided) frame."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (round(v * scale) for v in box)
    x1, y1 = min(max(0, x1), w - 2), min(max(0, y1), h - 2)
    return x1, y1, min(w, max(x2, x1 + 2)), min(h, max(y2, y1 + 2))


def face_input(frame: np.ndarray, box: Box) -> np.ndarray:
    """(6, 96, 96) float32: lower-half-masked crop and the crop itself, BGR, / 255 (inference.py)."""
    x1, y1, x2, y2 = box
    face = cv2.resize(frame[y1:y2, x1:x2], (IMG_SIZE, IMG_SIZE))
    masked = face.copy()
    masked[IMG_SIZE // 2 :] = 0
    stacked = np.concatenate((masked, face), axis=2) / 255.0  # float64 like the original, then cast
    return np.ascontiguousarray(stacked.transpose(2, 0, 1), dtype=np.float32)


def to_mouths(pred: np.ndarray) -> np.ndarray:
    """Generator output (B, 3, 96, 96) in [0, 1] → (B, 96, 96, 3) uint8, truncated like `astype`."""
    return (pred.transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)


def feather_mask(box: Box) -> np.ndarray:
    """(h, w, 1) float32 alpha: 1 on the lower face, fading to 0 at the box edges and above the nose."""
    x1, y1, x2, y2 = box
    h, w = y2 - y1, x2 - x1
    ys = np.clip((np.arange(h) / max(1, h) - 0.45) / 0.15, 0.0, 1.0)  # ramp in from 45 % to 60 % height
    edge = max(2, min(h, w) // 12)
    ramp = lambda n: np.minimum(1.0, np.minimum(np.arange(n) + 1, np.arange(n)[::-1] + 1) / edge)
    alpha = np.minimum(ys, ramp(h))[:, None] * ramp(w)[None, :]
    return alpha[:, :, None].astype(np.float32)


class Paster:
    """Pastes mouths into one reusable frame buffer: only the box region ever changes."""

    def __init__(self, frame: np.ndarray, box: Box, mode: str = "box"):
        """`mode` is an `Options.paste` value (checked there): "box" or "feather". The frame is copied: it may be
        a read-only view of a mapped frame file (frames.py), which is never written to."""
        self.frame = np.array(frame, copy=True, subok=False)  # a plain array on the heap, even from a memmap
        self.box = box
        x1, y1, x2, y2 = box
        self.size = (x2 - x1, y2 - y1)
        self.region = self.frame[y1:y2, x1:x2]
        self.original = self.region.astype(np.float32) if mode == "feather" else None
        self.alpha = feather_mask(box) if mode == "feather" else None

    def paste(self, mouth: np.ndarray) -> np.ndarray:
        """Resize a 96×96 mouth crop to the box and write it into the frame, which is returned."""
        patch = cv2.resize(mouth, self.size)
        if self.alpha is None:
            self.region[...] = patch
        else:
            blended = self.original + self.alpha * (patch.astype(np.float32) - self.original)
            self.region[...] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        return self.frame
