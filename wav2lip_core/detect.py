"""Face detection on OpenVINO IR (S3FD or BlazeFace) → a Wav2Lip face box; content-hash cache.

S3FD follows Wav2Lip's `face_detection` exactly: the frame's channels are reversed (its
`get_detections_for_batch` turns BGR into RGB) before the (104, 117, 123) mean is subtracted;
priors with variances 0.1/0.2 on six heads of stride 4…128; scores > 0.05 decoded, NMS at IoU 0.3,
faces scoring > 0.5 kept, the most confident one wins. Pads and clipping as `inference.py`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from . import blazeface
from .errors import NoFace
from .schema import Box

if TYPE_CHECKING:
    import openvino as ov

NO_FACE_HINT = "send a face box (x1, y1, x2, y2 in pixels) to skip detection"

S3FD_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
S3FD_VARIANCES = (0.1, 0.2)
S3FD_PRE_THRESHOLD = 0.05  # candidate boxes (detect.py)
S3FD_THRESHOLD = 0.5  # kept faces (sfd_detector.py)
S3FD_NMS_IOU = 0.3


@dataclass(frozen=True)
class Detection:
    """A face rectangle before pads, in the frame's pixels, and its confidence."""

    x1: int
    y1: int
    x2: int
    y2: int
    score: float


def nms(dets: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS over (N, 5) [x1, y1, x2, y2, score], with the original's +1 pixel areas."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        overlap = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[1:][overlap <= iou]
    return keep


def s3fd_decode(outputs: list[np.ndarray]) -> np.ndarray:
    """Candidate boxes (N, 5) from the six (softmaxed conf, loc) head pairs of one image."""
    boxes = []
    for i in range(len(outputs) // 2):
        conf, loc = outputs[2 * i][0], outputs[2 * i + 1][0]  # (2, H, W), (4, H, W)
        stride = 2 ** (i + 2)  # 4, 8, …, 128; the prior side is 4 strides
        hs, ws = np.nonzero(conf[1] > S3FD_PRE_THRESHOLD)
        if hs.size == 0:
            continue
        size = stride * 4.0
        cx, cy = stride / 2 + ws * stride, stride / 2 + hs * stride
        d = loc[:, hs, ws]
        cx = cx + d[0] * S3FD_VARIANCES[0] * size
        cy = cy + d[1] * S3FD_VARIANCES[0] * size
        bw, bh = size * np.exp(d[2] * S3FD_VARIANCES[1]), size * np.exp(d[3] * S3FD_VARIANCES[1])
        x1, y1 = cx - bw / 2, cy - bh / 2
        boxes.append(np.stack([x1, y1, x1 + bw, y1 + bh, conf[1, hs, ws]], axis=1))
    return np.concatenate(boxes) if boxes else np.zeros((0, 5))


class Detector(Protocol):
    name: str

    def detect(self, bgr: np.ndarray) -> Detection | None: ...


class S3FDDetector:
    name = "s3fd"

    def __init__(self, compiled: ov.CompiledModel):
        self.compiled = compiled

    def detect(self, bgr: np.ndarray) -> Detection | None:
        """The most confident face scoring > 0.5, or None."""
        x = (bgr[:, :, ::-1].astype(np.float32) - S3FD_MEAN).transpose(2, 0, 1)[None]
        result = self.compiled(np.ascontiguousarray(x))
        dets = s3fd_decode([result[o] for o in self.compiled.outputs])
        if len(dets) == 0:
            return None
        dets = dets[nms(dets, S3FD_NMS_IOU)]
        dets = dets[dets[:, 4] > S3FD_THRESHOLD]
        if len(dets) == 0:
            return None
        x1, y1, x2, y2 = (int(v) for v in np.clip(dets[0, :4], 0, None))
        return Detection(x1, y1, x2, y2, float(dets[0, 4]))


class BlazeFaceDetector:
    name = "blazeface"

    def __init__(self, compiled: ov.CompiledModel):
        self.compiled = compiled

    def detect(self, bgr: np.ndarray) -> Detection | None:
        """The most confident face as a Wav2Lip-style rectangle, or None."""
        faces = blazeface.detect_faces(self.compiled, bgr)
        if not faces:
            return None
        h, w = bgr.shape[:2]
        return Detection(*blazeface.wav2lip_rect(faces[0], w, h), score=faces[0].score)


def apply_pads(det: Detection, pads: tuple[int, int, int, int], width: int, height: int) -> Box:
    """inference.py's pads (top, bottom, left, right), clipped to the frame."""
    top, bottom, left, right = pads
    return (max(0, det.x1 - left), max(0, det.y1 - top), min(width, det.x2 + right), min(height, det.y2 + bottom))


class FaceFinder:
    """Detector + downscaling for large frames + an LRU cache keyed by (pixels hash, detector, pads)."""

    def __init__(self, detector: Detector, max_side: int, cache_size: int):
        self.detector = detector
        self.max_side = max_side
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str, tuple[int, ...]], Box] = OrderedDict()
        self._lock = threading.Lock()

    def find(self, bgr: np.ndarray, pads: tuple[int, int, int, int]) -> tuple[Box, bool]:
        """The padded face box and whether it came from the cache; NoFace if there is none."""
        digest = hashlib.blake2b(np.ascontiguousarray(bgr).data, digest_size=16)
        digest.update(repr(bgr.shape).encode())
        key = (digest.hexdigest(), self.detector.name, tuple(pads))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], True
        det = self._detect_scaled(bgr)
        if det is None:
            raise NoFace(f"no face found in the {bgr.shape[1]}×{bgr.shape[0]} image ({self.detector.name}); {NO_FACE_HINT}")
        box = apply_pads(det, pads, bgr.shape[1], bgr.shape[0])
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            raise NoFace(f"the face found is too small: box {list(box)}; {NO_FACE_HINT}")
        with self._lock:
            self._cache[key] = box
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return box, False

    def _detect_scaled(self, bgr: np.ndarray) -> Detection | None:
        h, w = bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = bgr if scale == 1.0 else cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        det = self.detector.detect(small)
        if det is None or scale == 1.0:
            return det
        x1, y1, x2, y2 = (round(v / scale) for v in (det.x1, det.y1, det.x2, det.y2))
        return Detection(min(x1, w), min(y1, h), min(x2, w), min(y2, h), det.score)
