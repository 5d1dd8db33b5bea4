"""Video avatars (the CLI's `--face clip.mp4`): a short clip whose frames loop over the audio, with
per-frame face boxes smoothed over 5 frames, as the original `inference.py` does for videos."""

from __future__ import annotations

import io

import av
import numpy as np

from .compose import Box, round_to_even
from .errors import LimitExceeded, UnsupportedMedia

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")
MAX_VIDEO_FRAMES = 300  # a looped avatar clip, not a film: ~10 s at 30 fps, ≤ 240 MB at 512²
SMOOTH_WINDOW = 5  # inference.py: get_smoothened_boxes(boxes, T=5)


def decode_video(data: bytes, max_pixels: int) -> tuple[list[np.ndarray], float]:
    """All frames as even-sided BGR uint8 arrays, and the clip's frame rate."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise UnsupportedMedia("the avatar clip has no video track", code="bad_video")
            stream = container.streams.video[0]
            if stream.width * stream.height > max_pixels:
                raise LimitExceeded(f"video is {stream.width}×{stream.height}; the limit is {max_pixels} pixels", code="image_too_large")
            fps = float(stream.average_rate or 25)
            frames = []
            for frame in container.decode(stream):
                frames.append(round_to_even(frame.to_ndarray(format="bgr24")))
                if len(frames) > MAX_VIDEO_FRAMES:
                    raise LimitExceeded(f"avatar clip has more than {MAX_VIDEO_FRAMES} frames", code="video_too_long")
    except av.FFmpegError as e:
        raise UnsupportedMedia(f"could not decode the avatar clip: {e}", code="bad_video") from e
    if not frames:
        raise UnsupportedMedia("the avatar clip has no frames", code="bad_video")
    return frames, fps


def smooth_boxes(boxes: list[Box], window: int = SMOOTH_WINDOW) -> list[Box]:
    """inference.py's get_smoothened_boxes: in place, each box the mean of the next `window` (truncated)."""
    arr = np.array(boxes, dtype=np.int64)
    for i in range(len(arr)):
        span = arr[len(arr) - window :] if i + window > len(arr) else arr[i : i + window]
        arr[i] = np.mean(span, axis=0)
    return [tuple(int(v) for v in b) for b in arr]  # type: ignore[misc]
