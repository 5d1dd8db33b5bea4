"""harness/peers.py: the transcribed Intel backend's datagen and frame count (no model, no ffmpeg)."""

from __future__ import annotations

import cv2
import numpy as np

from harness.peers import datagen, written_frames


def test_datagen_batches_masks_and_scales_like_the_original() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (40, 50, 3), np.uint8)
    x1, y1, x2, y2 = 10, 5, 30, 35
    face = frame[y1:y2, x1:x2]
    chunks = [rng.uniform(-4, 4, (80, 16)) for _ in range(5)]
    batches = list(datagen(frame, face, (y1, y2, x1, x2), chunks, batch=2))
    assert [len(b.frames) for b in batches] == [2, 2, 1]
    crop = cv2.resize(face, (96, 96)) / 255.0
    for k, b in enumerate(batches):
        n = len(b.frames)
        assert b.faces.shape == (n, 96, 96, 6) and b.faces.dtype == np.float64
        assert b.mels.shape == (n, 80, 16, 1)
        np.testing.assert_array_equal(b.mels[..., 0], np.asarray(chunks[2 * k : 2 * k + n]))
        np.testing.assert_array_equal(b.faces[:, :, :, 3:], np.broadcast_to(crop, (n, 96, 96, 3)))  # the crop
        np.testing.assert_array_equal(b.faces[:, :48, :, :3], np.broadcast_to(crop[:48], (n, 48, 96, 3)))  # masked: upper half kept
        assert not b.faces[:, 48:, :, :3].any()  # lower half zeroed
        assert b.coords == [(y1, y2, x1, x2)] * n
        for f in b.frames:  # a copy per chunk, painted in place later
            assert f is not frame and np.array_equal(f, frame)


def test_the_still_is_written_once_more_unless_one_frame_was_made() -> None:
    assert written_frames(1) == 1
    assert [written_frames(n) for n in (2, 157, 160)] == [3, 158, 161]
