"""End to end through the public API (`TalkingHead`): the MP4 against the original inference.py's raw frames, and its facts."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from helpers import decode_mp4, psnr

from harness.reference import reference_crops
from wav2lip_core import audio as A
from wav2lip_core.compose import Paster, face_input
from wav2lip_core.errors import NoFace

BOX = (180, 70, 280, 215)  # x1, y1, x2, y2 around the astronaut's face


@pytest.fixture(scope="module")
def clip(head, assets):
    return head.generate((assets / "speech.wav").read_bytes(), (assets / "astronaut.jpg").read_bytes(), box=BOX)


def test_mp4_facts(clip) -> None:
    d = decode_mp4(clip.mp4)
    assert (d.video_codec, d.audio_codec, d.pix_fmt) == ("h264", "aac", "yuv420p")
    assert (d.width, d.height) == (clip.width, clip.height) == (512, 512)
    assert len(d.frames) == clip.frames == math.ceil(6.4 * 25) == 160
    assert abs(d.video_duration - d.audio_duration) < 1 / 25
    assert abs(d.video_duration - 6.4) < 1 / 25


@pytest.fixture(scope="module")
def reference(checkpoints, assets) -> list[np.ndarray]:
    """inference.py's un-encoded frames (PyTorch f32), box region only; made in a child process."""
    return reference_crops(checkpoints["wav2lip"], assets / "astronaut.jpg", assets / "speech.wav", BOX)


def _luma(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YUV)[:, :, 0]


def test_unencoded_frames_match_original_inference(head, reference, assets) -> None:
    """Before the codec, our pasted frames equal inference.py's up to the served precision (bf16/f32)."""
    frame = cv2.imread(str(assets / "astronaut.jpg"))
    wav = A.to_16k_mono(A.decode_audio((assets / "speech.wav").read_bytes(), 60))
    mels = A.mel_chunks(A.melspectrogram(wav), 160, 25)
    paster = Paster(frame, BOX)
    x1, y1, x2, y2 = BOX
    ours = [paster.paste(m)[y1:y2, x1:x2].copy() for batch in head.lipsync.generator.run(mels, face_input(frame, BOX)) for m in batch]
    scores = [psnr(o, r) for o, r in zip(ours, reference, strict=False)]
    shifted = [psnr(o, r) for o, r in zip(ours[1:], reference, strict=False)]
    print(f"un-encoded mean PSNR {np.mean(scores):.1f} dB ({head.lipsync.generator.precision}); one-frame offset {np.mean(shifted):.1f} dB")
    assert np.mean(scores) >= 45
    assert np.mean(shifted) < np.mean(scores) - 10  # the comparison sees the audio alignment


def test_mp4_face_region_matches_original_inference(clip, reference) -> None:
    """Decoded MP4 vs inference.py's raw frames: luma PSNR, and the mouth motion is in sync.

    The random test generator paints high-frequency colour noise that 4:2:0 chroma cannot carry
    (BGR PSNR ~28 dB here at any CRF); a trained one paints a face. So luma PSNR is asserted, and the
    frame-to-frame motion must correlate with the reference's, clearly more than with a 4-frame
    offset (adjacent frames share 80 % of their mel window, so a 1-frame offset correlates too).
    """
    x1, y1, x2, y2 = BOX
    ours = np.array([_luma(f[y1:y2, x1:x2]) for f in decode_mp4(clip.mp4).frames], dtype=np.float64)
    refs = np.array([_luma(r) for r in reference], dtype=np.float64)
    n = len(refs)
    assert n >= 155  # the original drops the audio's last frames; we compare all it makes
    scores = [psnr(o, r) for o, r in zip(ours, refs, strict=False)]
    motion = lambda v: (v - v.mean(axis=0)).reshape(len(v), -1)
    corr = lambda a, b: float(np.corrcoef(motion(a).ravel(), motion(b).ravel())[0, 1])
    m = min(n, len(ours) - 4)
    aligned, offset = corr(ours[:m], refs[:m]), corr(ours[4 : m + 4], refs[:m])
    print(f"MP4 luma PSNR {np.mean(scores):.2f} dB (min {min(scores):.2f}); motion corr {aligned:.3f}, 4-frame offset {offset:.3f}")
    assert np.mean(scores) >= 30
    assert aligned > 0.85 and aligned > offset + 0.15


def test_pixels_outside_the_box_are_the_input(clip, assets) -> None:
    frame = cv2.imread(str(assets / "astronaut.jpg"))
    out = decode_mp4(clip.mp4).frames[80]
    mask = np.ones(frame.shape[:2], bool)
    x1, y1, x2, y2 = BOX
    mask[max(0, y1 - 8) : y2 + 8, max(0, x1 - 8) : x2 + 8] = False  # codec blocks bleed a little
    assert psnr(out[mask], frame[mask]) > 35


def test_blazeface_finds_the_astronaut_and_the_cache_skips_detection(head, assets, monkeypatch: pytest.MonkeyPatch) -> None:
    image, audio = (assets / "astronaut.jpg").read_bytes(), (assets / "speech.wav").read_bytes()[:32044]
    detector, calls = head.lipsync.finder.detector, []
    detect = detector.detect
    monkeypatch.setattr(detector, "detect", lambda bgr: calls.append(bgr.shape) or detect(bgr))
    first = head.generate(audio, image)
    x1, y1, x2, y2 = first.face_box
    assert 150 <= x1 < 200 and 40 <= y1 < 110 and 240 < x2 <= 300 and 180 < y2 <= 240, first.face_box
    ran = len(calls)
    again = head.generate(audio, image)
    assert again.face_box == first.face_box and (first.face_source, again.face_source) == ("detector", "cache")
    assert ran >= 1 and len(calls) == ran  # a repeated avatar skips the detector: only its pixels are hashed
    padded = head.generate(audio, image, pads=(0, 30, 0, 0))
    assert padded.face_source == "detector" and padded.face_box[3] == first.face_box[3] + 20  # pads are part of the key


def test_no_face_is_a_typed_error_that_names_the_fix(head, assets) -> None:
    with pytest.raises(NoFace) as e:
        head.generate((assets / "speech.wav").read_bytes()[:8044], (assets / "cat.jpg").read_bytes())
    assert e.value.status == 422 and e.value.code == "no_face" and "box" in e.value.message


def test_odd_size_feather_and_fps(head, assets) -> None:
    frame = cv2.imread(str(assets / "astronaut.jpg"))[:383, :511]
    _, png = cv2.imencode(".png", frame)
    result = head.generate((assets / "speech.wav").read_bytes()[: 44 + 2 * 16000], png.tobytes(), fps=30, paste="feather", box=BOX)
    d = decode_mp4(result.mp4)
    assert (d.width, d.height) == (510, 382) and len(d.frames) == 30
    assert abs(d.video_duration - d.audio_duration) < 1 / 30


def _clip(assets, n: int, shift: int) -> bytes:
    """An n-frame H.264 clip of the astronaut moving `shift` px right per frame."""
    import io

    import av

    img = cv2.imread(str(assets / "astronaut.jpg"))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        stream.options = {"crf": "10"}
        for i in range(n):
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.roll(img, shift * i, axis=1), format="bgr24")))
        c.mux(stream.encode(None))
    return buf.getvalue()


def test_video_avatar_loops_over_the_audio(head, assets) -> None:
    """A 12-frame clip under 1 s of audio: 25 frames, frame i shows clip frame i % 12, face boxes follow it."""
    img = cv2.imread(str(assets / "astronaut.jpg"))
    result = head.generate((assets / "speech.wav").read_bytes()[: 44 + 2 * 16000], _clip(assets, 12, 3), fps=25, loop="repeat")
    d = decode_mp4(result.mp4)
    assert len(d.frames) == result.frames == 25 and (d.width, d.height) == (512, 512)
    for i in (0, 5, 11, 12, 24):
        want = np.roll(img, 3 * (i % 12), axis=1)
        keep = np.ones((512, 512), bool)
        keep[:260, 120:350] = False  # the face region (moving box) is generated
        assert psnr(d.frames[i][keep], want[keep]) > 30, i
    assert 150 <= result.face_box[0] < 200  # BlazeFace found the face in the first frame


def test_smooth_boxes_is_the_originals_in_place_mean() -> None:
    from wav2lip_core.avatar import smooth_boxes

    boxes = [(0, 0, 10, 10), (5, 5, 15, 15), (10, 10, 20, 20)]
    # window of 2, in place: [mean(b0, b1), mean(b1, b2), mean(smoothed b1, b2)]
    assert smooth_boxes(boxes, window=2) == [(2, 2, 12, 12), (7, 7, 17, 17), (8, 8, 18, 18)]
