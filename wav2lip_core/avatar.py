"""Avatars: a still image or a short clip, prepared once (decode, face boxes, generator face inputs)
and then played by the render loop, which asks per output frame which source frame to show.

A still repeats its one frame. A clip loops (`repeat`: 0 1 2 0 1 2 …, as the original
`inference.py`'s `i % len(frames)`; `pingpong`: 0 1 2 1 0 1 …, never a jump cut) or runs once with
its last frame held (`none`). Clip boxes are detected per frame and smoothed over 5 frames as the
original does for videos.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass

import av
import numpy as np

from .compose import face_input, fit_box, limit_side, round_to_even
from .detect import NO_FACE_HINT, FaceFinder
from .errors import LimitExceeded, NoFace, UnsupportedMedia
from .image import decode_image
from .schema import Box, Options

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")
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


def media_type(data: bytes, kind: str) -> str:
    """The MIME type of an upload, from its magic bytes."""
    if kind == "image":
        for magic, mime in ((b"\xff\xd8", "image/jpeg"), (b"\x89PNG", "image/png"), (b"BM", "image/bmp")):
            if data.startswith(magic):
                return mime
        return "image/webp" if data[8:12] == b"WEBP" else "application/octet-stream"
    if data[4:8] == b"ftyp":
        return "video/quicktime" if data[8:10] == b"qt" else "video/mp4"
    return "video/webm" if data[:4] == b"\x1a\x45\xdf\xa3" else "video/x-msvideo"


def is_video(data: bytes) -> bool:
    """Container magic of the clip formats we take (MP4/MOV, Matroska/WebM, AVI)."""
    return data[4:8] == b"ftyp" or data[:4] == b"\x1a\x45\xdf\xa3" or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")


def decode_video(data: bytes, max_pixels: int, max_seconds: float) -> tuple[list[np.ndarray], float]:
    """All frames as BGR uint8 arrays, and the clip's frame rate; limits checked before and while decoding."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise UnsupportedMedia("the video has no video track", code="bad_video")
            stream = container.streams.video[0]
            if stream.width * stream.height > max_pixels:
                raise LimitExceeded(f"video is {stream.width}×{stream.height}; the limit is {max_pixels} pixels", code="image_too_large")
            fps = float(stream.average_rate or STILL_FPS)
            limit = max(1, math.ceil(max_seconds * fps))
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="bgr24"))
                if len(frames) > limit:
                    raise LimitExceeded(
                        f"video is longer than {max_seconds:g} s, the limit for a looped video held in memory (MAX_AVATAR_SECONDS); "
                        'send "loop": "none" to stream a long video straight through',
                        code="video_too_long",
                    )
    except av.FFmpegError as e:
        raise UnsupportedMedia(f"could not decode the video: {e}", code="bad_video") from e
    if not frames:
        raise UnsupportedMedia("the video has no frames", code="bad_video")
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
    out, scale = fit_frames(frames, max_output_side)
    if options.box is not None:  # used exactly, no pads, as inference.py's --box
        boxes, source = [fit_box(options.box, scale, f) for f in out], "box"
    elif len(out) == 1:
        box, cached = finder.find(out[0], options.pads)
        boxes, source = [box], "cache" if cached else "detector"
    else:
        boxes, source = smooth_boxes(track(out, options.pads, finder)), "detector"
    return restore(out, boxes, fps, source, kind)


def fit_frames(frames: list[np.ndarray], max_output_side: int) -> tuple[list[np.ndarray], float]:
    """Frames scaled to the output limit and cut to even sides (H.264 4:2:0), and the scale applied."""
    scaled = [limit_side(f, max_output_side) for f in frames]
    return [round_to_even(f) for f, _ in scaled], scaled[0][1]


def restore(frames: list[np.ndarray], boxes: list[Box], fps: float, source: str, kind: str) -> Avatar:
    """An Avatar from even-sided frames and their final boxes (a registered avatar: no detection)."""
    faces = np.stack([face_input(f, b) for f, b in zip(frames, boxes, strict=True)])
    return Avatar(tuple(frames), tuple(boxes), faces, fps, source, kind)


def track(frames: Iterable[np.ndarray], pads: Box, finder: FaceFinder) -> list[Box]:
    """A box per frame; a frame where the detector finds no face takes the nearest frame's box."""
    found: list[Box | None] = []
    for frame in frames:
        try:
            found.append(finder.find(frame, pads)[0])
        except NoFace:
            found.append(None)
    known = [i for i, b in enumerate(found) if b is not None]
    if not known:
        raise NoFace(f"no face found in any of the {len(found)} frames; {NO_FACE_HINT}")
    return [found[i] or found[min(known, key=lambda k: abs(k - i))] for i in range(len(found))]  # type: ignore[misc]


def decode(data: bytes, max_pixels: int, max_seconds: float, video: bool | None = None) -> tuple[list[np.ndarray], float, str]:
    """An image or a clip (`video=None`: decided by the bytes) → frames, frame rate, kind."""
    if video if video is not None else is_video(data):
        frames, fps = decode_video(data, max_pixels, max_seconds)
        return frames, fps, "video"
    return [decode_image(data, max_pixels)], STILL_FPS, "image"
