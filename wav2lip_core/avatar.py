"""Avatars: a still image or a short clip, prepared once (decode, face boxes, generator face inputs)
and then played by the render loop, which asks per output frame which source frame to show.

A still repeats its one frame. A clip loops (`repeat`: 0 1 2 0 1 2 …, as the original
`inference.py`'s `i % len(frames)`; `pingpong`: 0 1 2 1 0 1 …, never a jump cut) or runs once with
its last frame held (`none`). Clip boxes are detected per frame and smoothed over 5 frames as the
original does for videos. A clip is decoded one frame at a time (`open_video`): its frames go to a
frame file (frames.py) or, played straight through, to the render loop as they come (dubbing.py),
never all into memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np

from .compose import face_input, fit_box, limit_side, round_to_even, scaled_size
from .detect import NO_FACE_HINT, FaceFinder
from .errors import LimitExceeded, NoFace, UnsupportedMedia
from .frames import Mapped
from .image import decode_image
from .schema import Box, Options

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")
SMOOTH_WINDOW = 5  # inference.py: get_smoothened_boxes(boxes, T=5)
STILL_FPS = 25.0  # output rate of a still avatar unless the request gives one


class Frames(Protocol):
    """An avatar's frames, each (h, w, 3) BGR uint8: an (n, h, w, 3) array (a still's in memory, a looped clip's
    mapped read-only from its frame file), or a streamed clip's, decoded as the render loop asks (dubbing.py)."""

    def __len__(self) -> int: ...
    def __getitem__(self, k: int, /) -> np.ndarray: ...


@dataclass(frozen=True)
class Avatar:
    """Prepared avatar: even-sided BGR frames, a face box and a (6, 96, 96) generator input per frame."""

    frames: Frames  # never written to: a mapped frame file is read-only (compose.Paster copies)
    boxes: tuple[Box, ...]
    faces: np.ndarray  # (n, 6, 96, 96) float32, mapped from the frame file for a looped clip
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


def open_video(data: bytes, max_pixels: int, max_seconds: float, limit: str) -> tuple[Iterator[np.ndarray], float, tuple[int, int]]:
    """A clip's frames decoded one at a time (as sent: not yet fitted), its frame rate and size; the size is checked
    now, the length (`max_seconds`, named by `limit` in the error) as the frames come."""
    container, stream, fps = _opened(data, max_pixels)
    most = max(1, math.ceil(max_seconds * fps))

    def frames() -> Iterator[np.ndarray]:
        with container:
            try:
                for i, frame in enumerate(container.decode(stream)):
                    if i >= most:
                        raise LimitExceeded(f"video is longer than {max_seconds:g} s, {limit}", code="video_too_long")
                    yield frame.to_ndarray(format="bgr24")
            except av.FFmpegError as e:
                raise UnsupportedMedia(f"could not decode the video: {e}", code="bad_video") from e

    return frames(), fps, (stream.width, stream.height)


def video_header(data: bytes, max_pixels: int) -> tuple[float, tuple[int, int]]:
    """A clip's frame rate and size from its header, checked as `open_video` checks them; no frame decoded."""
    container, stream, fps = _opened(data, max_pixels)
    with container:
        return fps, (stream.width, stream.height)


def _opened(data: bytes, max_pixels: int) -> tuple[av.container.InputContainer, av.VideoStream, float]:
    """The container (to be closed by the caller), its video stream, checked against the pixel limit, and its frame rate."""
    try:
        container = av.open(io.BytesIO(data))
    except av.FFmpegError as e:
        raise UnsupportedMedia(f"could not decode the video: {e}", code="bad_video") from e
    if not container.streams.video:
        container.close()
        raise UnsupportedMedia("the video has no video track", code="bad_video")
    stream = container.streams.video[0]
    if stream.width * stream.height > max_pixels:
        container.close()
        raise LimitExceeded(f"video is {stream.width}×{stream.height}; the limit is {max_pixels} pixels", code="image_too_large")
    return container, stream, float(stream.average_rate or STILL_FPS)


def fitted(frames: Iterable[np.ndarray], max_output_side: int) -> Iterator[np.ndarray]:
    """Frames one at a time as the render loop shows them (fit_frame), and the video must have one."""
    count = 0
    for frame in frames:
        count += 1
        yield fit_frame(frame, max_output_side)[0]
    if not count:
        raise UnsupportedMedia("the video has no frames", code="bad_video")


def clip_boxes(
    frames: Iterable[np.ndarray], size: tuple[int, int], options: Options, finder: FaceFinder, max_output_side: int
) -> tuple[list[Box], str]:
    """A box per fitted frame of a clip sent at `size` (width, height): the request's box fitted to each, or detected,
    tracked and smoothed as inference.py does; and where they came from ("box" or "detector")."""
    options.check_box(*size)  # a box refers to the video as sent
    if options.box is not None:  # used exactly, no pads, as inference.py's --box
        scale = scaled_size(*size, max_output_side)[2]
        return [fit_box(options.box, scale, f) for f in frames], "box"
    return smooth_boxes(track(frames, options.pads, finder)), "detector"


def smooth_boxes(boxes: list[Box], window: int = SMOOTH_WINDOW) -> list[Box]:
    """inference.py's get_smoothened_boxes: in place, each box the mean of the next `window` (truncated)."""
    arr = np.array(boxes, dtype=np.int64)
    for i in range(len(arr)):
        span = arr[len(arr) - window :] if i + window > len(arr) else arr[i : i + window]
        arr[i] = np.mean(span, axis=0)
    return [tuple(int(v) for v in b) for b in arr]  # type: ignore[misc]


def prepare(frame: np.ndarray, fps: float, options: Options, finder: FaceFinder, max_output_side: int) -> Avatar:
    """A still: scale and even the image, find (or fit the given) face box, and build the generator's input."""
    options.check_box(frame.shape[1], frame.shape[0])  # a box refers to the media as sent
    out, scale = fit_frame(frame, max_output_side)
    if options.box is not None:  # used exactly, no pads, as inference.py's --box
        box, source = fit_box(options.box, scale, out), "box"
    else:
        box, cached = finder.find(out, options.pads)
        source = "cache" if cached else "detector"
    return image_avatar(out, box, fps, source)


def fit_frame(frame: np.ndarray, max_output_side: int) -> tuple[np.ndarray, float]:
    """A frame scaled to the output limit and cut to even sides (H.264 4:2:0), and the scale applied."""
    scaled, scale = limit_side(frame, max_output_side)
    return round_to_even(scaled), scale


def image_avatar(frame: np.ndarray, box: Box, fps: float, source: str) -> Avatar:
    """An image avatar from its even-sided frame and final box (a registered one: no detection)."""
    return Avatar(frame[None], (box,), face_input(frame, box)[None], fps, source, "image")


def clip_avatar(mapped: Mapped, boxes: list[Box], fps: float, source: str) -> Avatar:
    """A looped clip's Avatar over its mapped frame files (frames.py)."""
    return Avatar(mapped.frames, tuple(boxes), mapped.faces, fps, source, "video")


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


def decode_still(data: bytes, max_pixels: int, max_output_side: int) -> np.ndarray:
    """An image avatar's one frame, as the render loop shows it (fit_frame)."""
    return fit_frame(decode_image(data, max_pixels), max_output_side)[0]
