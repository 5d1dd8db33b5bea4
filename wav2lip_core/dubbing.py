"""Dubbing-length videos (minutes of 720p/1080p, `loop: none`), streamed: never all frames in memory.

Passes over the upload, each decoding forward and holding one frame. The first finds every frame's
face box (downscaled for the detector, as for stills); a frame without a face takes the nearest
frame's box; the boxes are smoothed as the original `inference.py` does. Then two cursors decode
again while the video renders: one feeds the generator its face inputs (up to two batches ahead),
the other the paste. Decoding twice costs ~4 ms a 1080p frame; holding the look-ahead would cost
~200 MB. The result is an `Avatar` whose `frames` and `faces` are such lazy views.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .avatar import Avatar, clip_boxes, fitted, open_video
from .compose import face_input
from .detect import FaceFinder
from .errors import UnsupportedMedia
from .schema import Box, Options

LIMIT = "the limit for a video played straight through (MAX_VIDEO_SECONDS)"


def _frames(data: bytes, max_pixels: int, max_seconds: float, max_output_side: int) -> tuple[Iterator[np.ndarray], float, tuple[int, int]]:
    """Decoded, output-sized frames one at a time, the video's frame rate and size; limits checked as they come."""
    frames, fps, size = open_video(data, max_pixels, max_seconds, LIMIT)
    return fitted(frames, max_output_side), fps, size


class _Cursor:
    """One forward-only pass over the frames: holds only the current frame (and the first, for its size)."""

    def __init__(self, frames: Iterator[np.ndarray], count: int):
        self._frames = frames
        self.count = count
        self._k, self._frame = -1, np.empty(0)
        self.first = self.get(0)

    def get(self, k: int) -> np.ndarray:
        if k == 0 and self._k > 0:
            return self.first
        if k < self._k:
            raise IndexError(f"frame {k} was asked for after frame {self._k}: a streamed video is read forward only")
        while self._k < k:
            try:
                self._frame = next(self._frames)
            except StopIteration as e:  # fewer frames than the first pass counted: not the same upload
                raise UnsupportedMedia(f"the video ended at frame {self._k + 1} of {self.count}", code="bad_video") from e
            self._k += 1
        return self._frame


class LazyFrames:
    """`avatar.frames` for the render loop, which asks for frames in order (the paste position)."""

    def __init__(self, cursor: _Cursor):
        self._cursor = cursor

    def __len__(self) -> int:
        return self._cursor.count

    def __getitem__(self, k: int) -> np.ndarray:
        return self._cursor.get(k)


class LazyFaces:
    """`avatar.faces` for the generator, which asks for frames in order too, up to two batches ahead of
    the paste: its own decoding pass, so no frame is held for the look-ahead (at 1080p, 32 frames = 200 MB)."""

    def __init__(self, cursor: _Cursor, boxes: list[Box]):
        self._cursor = cursor
        self._boxes = boxes

    def __len__(self) -> int:
        return self._cursor.count

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        return np.stack([face_input(self._cursor.get(int(k)), self._boxes[int(k)]) for k in np.atleast_1d(index)])


def streamed(data: bytes, options: Options, finder: FaceFinder, max_pixels: int, max_seconds: float, max_output_side: int) -> Avatar:
    """Pass one (boxes) now; pass two happens as the returned Avatar is rendered."""
    frames, fps, size = _frames(data, max_pixels, max_seconds, max_output_side)
    boxes, source = clip_boxes(frames, size, options, finder, max_output_side)
    cursor = lambda: _Cursor(_frames(data, max_pixels, max_seconds, max_output_side)[0], len(boxes))
    return Avatar(LazyFrames(cursor()), tuple(boxes), LazyFaces(cursor(), boxes), fps, source, "video")  # type: ignore[arg-type]
