"""Avatars: a still image or a short clip, prepared once (decode, face boxes, generator face inputs)
and then played by the render loop, which asks per output frame which source frame to show.

A still repeats its one frame. A clip loops (`repeat`: 0 1 2 0 1 2 …, as the original
`inference.py`'s `i % len(frames)`; `pingpong`: 0 1 2 1 0 1 …, never a jump cut) or runs once with
its last frame held (`none`). Clip boxes are detected per frame and smoothed over 5 frames as the
original does for videos.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

from .compose import face_input, fit_box, limit_side, round_to_even
from .detect import FaceFinder
from .errors import LimitExceeded, UnsupportedMedia
from .image import decode_image
from .schema import Box, Options

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")
MAX_VIDEO_FRAMES = 300  # a looped avatar clip, not a film: ~10 s at 30 fps, ≤ 240 MB at 512²
SMOOTH_WINDOW = 5  # inference.py: get_smoothened_boxes(boxes, T=5)
STILL_FPS = 25.0  # output rate of a still avatar unless the request gives one


@dataclass(frozen=True)
class Avatar:
    """Prepared avatar: even-sided BGR frames, a face box and a (6, 96, 96) generator input per frame."""

    frames: tuple[np.ndarray, ...]
    boxes: tuple[Box, ...]
    faces: np.ndarray  # (n, 6, 96, 96) float32
    fps: float  # the clip's own rate; STILL_FPS for an image
    face_source: str  # "box" (given), "cache" (seen before) or "detector"
    kind: str  # "image" | "video"

    @property
    def still(self) -> bool:
        """One frame: the generator's face half runs once (split generator)."""
        return len(self.frames) == 1

    @property
    def width(self) -> int:
        return self.frames[0].shape[1]

    @property
    def height(self) -> int:
        return self.frames[0].shape[0]

    def period(self, loop: str) -> int:
        """Length of the loop sequence (positions wrap modulo it); `none` never wraps."""
        count = len(self.frames)
        return 1 if count == 1 else {"pingpong": 2 * count - 2, "repeat": count}.get(loop, 0)

    def sequence(self, n: int, loop: str, start: int = 0) -> np.ndarray:
        """Source frame index for each of `n` output frames, the first at loop position `start`."""
        pos, count, period = np.arange(start, start + n), len(self.frames), self.period(loop)
        if period == 0:  # none: straight through, the last frame held
            return np.minimum(pos, count - 1)
        pos %= period
        return np.where(pos < count, pos, period - pos)

    def end_position(self, n: int, loop: str, start: int = 0) -> int:
        """The loop position after `n` frames from `start`: where the idle loop (or the next clip) resumes."""
        period = self.period(loop)
        return (start + n) % period if period else min(start + n, len(self.frames) - 1)


def is_video(data: bytes) -> bool:
    """Container magic of the clip formats we take (MP4/MOV, Matroska/WebM, AVI)."""
    return data[4:8] == b"ftyp" or data[:4] == b"\x1a\x45\xdf\xa3" or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")


def decode_video(data: bytes, max_pixels: int) -> tuple[list[np.ndarray], float]:
    """All frames as BGR uint8 arrays, and the clip's frame rate."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise UnsupportedMedia("the avatar clip has no video track", code="bad_video")
            stream = container.streams.video[0]
            if stream.width * stream.height > max_pixels:
                raise LimitExceeded(f"video is {stream.width}×{stream.height}; the limit is {max_pixels} pixels", code="image_too_large")
            fps = float(stream.average_rate or STILL_FPS)
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="bgr24"))
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


def prepare(frames: list[np.ndarray], fps: float, kind: str, options: Options, finder: FaceFinder, max_output_side: int) -> Avatar:
    """Scale and even the frames, find (or fit the given) face box of each, and build the generator's inputs."""
    options.check_box(frames[0].shape[1], frames[0].shape[0])  # a box refers to the media as sent
    scaled = [limit_side(f, max_output_side) for f in frames]
    out = [round_to_even(f) for f, _ in scaled]
    if options.box is not None:  # used exactly, no pads, as inference.py's --box
        boxes, source = [fit_box(options.box, s, f) for f, (_, s) in zip(out, scaled, strict=True)], "box"
    else:
        found = [finder.find(f, options.pads) for f in out]
        boxes = [b for b, _ in found] if len(out) == 1 else smooth_boxes([b for b, _ in found])
        source = "cache" if all(cached for _, cached in found) else "detector"
    faces = np.stack([face_input(f, b) for f, b in zip(out, boxes, strict=True)])
    return Avatar(tuple(out), tuple(boxes), faces, fps, source, kind)


def decode(data: bytes, max_pixels: int, video: bool | None = None) -> tuple[list[np.ndarray], float, str]:
    """An image or a clip (`video=None`: decided by the bytes) → frames, frame rate, kind."""
    if video if video is not None else is_video(data):
        frames, fps = decode_video(data, max_pixels)
        return frames, fps, "video"
    return [decode_image(data, max_pixels)], STILL_FPS, "image"
