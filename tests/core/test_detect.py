"""S3FD post-processing, pads, the face-box cache and the S3FD IR on a real-size image."""

from __future__ import annotations

import numpy as np
import pytest

from wav2lip_core.detect import Detection, FaceFinder, S3FDDetector, apply_pads, nms, s3fd_decode
from wav2lip_core.errors import NoFace


def _heads(shape_hw: tuple[int, int]) -> list[np.ndarray]:
    """Six (conf, loc) pairs for an image of shape_hw, all background."""
    outs = []
    for i in range(6):
        stride = 2 ** (i + 2)
        h, w = max(1, shape_hw[0] // stride), max(1, shape_hw[1] // stride)
        conf = np.zeros((1, 2, h, w), np.float32)
        conf[:, 0] = 1.0
        outs += [conf, np.zeros((1, 4, h, w), np.float32)]
    return outs


def test_decode_zero_offsets_gives_the_prior_box() -> None:
    outs = _heads((256, 256))
    outs[2][0, 1, 5, 7] = 0.9  # head 1: stride 8, prior side 32, centre (4 + 7·8, 4 + 5·8)
    boxes = s3fd_decode(outs)
    assert boxes.shape == (1, 5)
    np.testing.assert_allclose(boxes[0], [60 - 16, 44 - 16, 60 + 16, 44 + 16, 0.9], rtol=1e-6)


def test_decode_offsets_use_variances_0_1_and_0_2() -> None:
    outs = _heads((256, 256))
    outs[4][0, 1, 2, 3] = 0.8  # head 2: stride 16, prior side 64, centre (56, 40)
    outs[5][0, :, 2, 3] = [1.0, -0.5, np.log(2) / 0.2, 0.0]  # dx, dy, dw (doubles the width), dh
    x1, y1, x2, y2, score = s3fd_decode(outs)[0]
    assert score == pytest.approx(0.8)
    cx, cy = 56 + 0.1 * 64, 40 - 0.5 * 0.1 * 64
    np.testing.assert_allclose([x1, y1, x2, y2], [cx - 64, cy - 32, cx + 64, cy + 32], rtol=1e-5)


def test_candidates_below_0_05_are_ignored() -> None:
    outs = _heads((128, 128))
    outs[0][0, 1, 3, 3] = 0.049
    assert len(s3fd_decode(outs)) == 0


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    dets = np.array([[10, 10, 50, 50, 0.6], [12, 12, 52, 52, 0.9], [100, 100, 140, 140, 0.7]], float)
    assert nms(dets, 0.3) == [1, 2]


def test_pads_are_top_bottom_left_right_and_clipped() -> None:
    det = Detection(10, 20, 110, 140, 0.99)
    assert apply_pads(det, (5, 10, 15, 20), 1000, 1000) == (0, 15, 130, 150)
    assert apply_pads(det, (0, 10, 0, 0), 120, 145) == (10, 20, 110, 145)


class _Fixed:
    """A detector stub that counts its calls; used only to test the cache and the scaling."""

    name = "fixed"

    def __init__(self, det: Detection | None):
        self.det, self.calls, self.seen = det, 0, None

    def detect(self, bgr: np.ndarray) -> Detection | None:
        self.calls += 1
        self.seen = bgr.shape
        return self.det


def test_cache_is_keyed_by_pixels_and_pads() -> None:
    stub = _Fixed(Detection(10, 10, 60, 70, 0.9))
    finder = FaceFinder(stub, max_side=640, cache_size=2)
    img = np.zeros((100, 100, 3), np.uint8)
    assert finder.find(img, (0, 10, 0, 0)) == ((10, 10, 60, 80), False)
    assert finder.find(img.copy(), (0, 10, 0, 0)) == ((10, 10, 60, 80), True)
    assert finder.find(img, (0, 0, 0, 0)) == ((10, 10, 60, 70), False)
    other = img.copy()
    other[0, 0, 0] = 1
    assert finder.find(other, (0, 10, 0, 0))[1] is False
    assert stub.calls == 3


def test_large_images_are_detected_downscaled_and_boxes_scaled_back() -> None:
    stub = _Fixed(Detection(100, 50, 200, 150, 0.9))
    finder = FaceFinder(stub, max_side=640, cache_size=0)
    box, _ = finder.find(np.zeros((1280, 2560, 3), np.uint8), (0, 0, 0, 0))
    assert stub.seen == (320, 640, 3)
    assert box == (400, 200, 800, 600)


def test_no_face_is_typed() -> None:
    with pytest.raises(NoFace):
        FaceFinder(_Fixed(None), 640, 4).find(np.zeros((64, 64, 3), np.uint8), (0, 10, 0, 0))


def test_s3fd_detector_matches_pytorch_with_the_original_preprocessing(head_s3fd, checkpoints, assets) -> None:
    """IR + our pre/post-processing give the box that the PyTorch model gives on inference.py's input
    (BGR frame with channels reversed, minus (104, 117, 123))."""
    import cv2
    import torch

    from wav2lip_core.models.s3fd import S3FD

    img = cv2.imread(str(assets / "astronaut.jpg"))
    model = S3FD()
    model.load_state_dict(torch.load(checkpoints["s3fd"], weights_only=True))
    x = torch.from_numpy((img[:, :, ::-1].astype(np.float32) - [104, 117, 123]).transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        dets = s3fd_decode([t.numpy() for t in model.eval()(x)])
    dets = dets[nms(dets, 0.3)]
    dets = dets[dets[:, 4] > 0.5]
    assert len(dets) > 0  # the seeded random S3FD does fire on this photo, so the comparison is meaningful
    want = np.clip(dets[0, :4], 0, None).astype(int)
    got = head_s3fd.lipsync.finder.detector.detect(img)
    assert isinstance(head_s3fd.lipsync.finder.detector, S3FDDetector)
    assert got is not None
    np.testing.assert_allclose([got.x1, got.y1, got.x2, got.y2], want, atol=2)
