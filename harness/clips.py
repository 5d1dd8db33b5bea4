"""Synthetic avatar videos with real head motion, made here (no downloads): tests and bench share them."""

from __future__ import annotations

import io
import math
from pathlib import Path

import av
import numpy as np

from harness import ASSETS

FACE_IN_PORTRAIT = (225, 135)  # centre of the astronaut's face box in astronaut.jpg (x, y)


def idle_clip(
    width: int = 640, height: int = 360, frames: int = 30, fps: int = 25, crf: int = 12, period: int | None = None, out: Path | None = None
) -> tuple[bytes, list[tuple[float, float]]]:
    """A head that moves: the astronaut portrait drifted, scaled and slightly rotated along a smooth
    path on a grey canvas, H.264. Returns the MP4 and where the face centre is in each frame (one cycle
    of the path every `period` frames, default the whole clip; with `out` the file is written there and
    the bytes returned are empty, for clips too long to hold)."""
    import cv2

    portrait = cv2.imread(str(ASSETS / "astronaut.jpg"))
    buf, centres = io.BytesIO(), []
    with av.open(str(out) if out else buf, "w", format="mp4") as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for i in range(frames):
            t = 2 * math.pi * i / (period or frames)
            scale = 0.6 * height / 512 * (1 + 0.05 * math.sin(t))
            angle = 4 * math.sin(t)  # degrees
            cx, cy = width / 2 + 0.08 * width * math.sin(t), height / 2 + 0.04 * height * math.cos(t)
            m = cv2.getRotationMatrix2D((256, 256), angle, scale)
            m[:, 2] += (cx - 256, cy - 256)
            frame = cv2.warpAffine(portrait, m, (width, height), borderValue=(128, 128, 128))
            centres.append(tuple(m @ np.array([*FACE_IN_PORTRAIT, 1.0])))
            c.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        c.mux(stream.encode(None))
    return buf.getvalue(), centres
