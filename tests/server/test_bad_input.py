"""Issue 5, hostile and odd input: every bad request gets a typed 4xx JSON error and leaves the app
serving; unusual but valid media succeed; no request body gives a 5xx (hypothesis)."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import (
    ASSETS,
    SMALL_BOX,
    assert_error,
    astronaut,
    b64,
    encode_audio,
    good_body,
    image_bytes,
    loaded_app,
    make_settings,
    png_header_only,
    small_face,
    speech_s,
    video_without_audio,
    wav,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

MAX_AUDIO_S = 3.0  # the test app's MAX_AUDIO_SECONDS: "audio too long" needs only 4 s of audio

# ---------------------------------------------------------------- the Flask app, in process


@pytest.fixture(scope="module")
def client(ir_blazeface: Path):
    return loaded_app(make_settings(ir_blazeface, batch_size=4, max_audio_seconds=MAX_AUDIO_S)).test_client()


def still_serves(client) -> None:
    resp = client.post("/api/generate", json=good_body())
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["frames"] == 1


NOT_JSON = {400}
FIELD = {400}
MEDIA = {415}  # undecodable or unsupported image/audio
LIMIT = {413, 422}  # audio too long, image too large or too small

BAD: list[tuple[str, Callable[[], object], set[int], str]] = [
    # (name, body: a dict to send as JSON or raw bytes, allowed statuses, error code)
    ("not_json", lambda: b"this is not json", NOT_JSON, "invalid_json"),
    ("empty_body", lambda: b"", NOT_JSON, "invalid_json"),
    ("bad_utf8", lambda: b'{"image": "\xff\xfe"}', NOT_JSON, "invalid_json"),
    ("json_array", lambda: [1, 2], NOT_JSON, "invalid_json"),
    ("json_string", lambda: "image", NOT_JSON, "invalid_json"),
    ("json_null", lambda: b"null", NOT_JSON, "invalid_json"),
    ("nested_100000", lambda: b"[" * 100_000 + b"]" * 100_000, NOT_JSON, "invalid_json"),
    ("nested_object_field", lambda: b'{"fps": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, NOT_JSON, "invalid_json"),
    ("int_5000_digits", lambda: b'{"fps": ' + b"7" * 5000 + b"}", NOT_JSON, "invalid_json"),
    ("missing_image", lambda: {k: v for k, v in good_body().items() if k != "image"}, FIELD, "missing_field"),
    ("missing_audio", lambda: {k: v for k, v in good_body().items() if k != "audio"}, FIELD, "missing_field"),
    ("null_image", lambda: good_body(image=None), FIELD, "missing_field"),
    ("null_audio", lambda: good_body(audio=None), FIELD, "missing_field"),
    ("image_number", lambda: good_body(image=12345), FIELD, "invalid_field"),
    ("audio_list", lambda: good_body(audio=["AAAA"]), FIELD, "invalid_field"),
    ("audio_object", lambda: good_body(audio={"data": "AAAA"}), FIELD, "invalid_field"),
    ("image_bool", lambda: good_body(image=True), FIELD, "invalid_field"),
    ("empty_image", lambda: good_body(image=""), FIELD, "empty_field"),
    ("empty_audio_string", lambda: good_body(audio="  \n"), FIELD, "empty_field"),
    ("b64_bad_chars", lambda: good_body(image="iVBOR*w0KGgo!"), FIELD, "invalid_base64"),
    ("b64_non_ascii", lambda: good_body(audio="UklGRé" + b64(b"x" * 30)), FIELD, "invalid_base64"),
    ("b64_bad_length", lambda: good_body(image="AAAAA"), FIELD, "invalid_base64"),
    ("data_url_not_b64", lambda: good_body(image="data:image/png,iVBORw0KGgo"), FIELD, "invalid_base64"),
    ("random_bytes_image", lambda: good_body(image=b64(np.random.default_rng(1).bytes(4000))), MEDIA, "bad_image"),
    ("random_bytes_audio", lambda: good_body(audio=b64(np.random.default_rng(2).bytes(4000))), MEDIA, "bad_audio"),
    ("text_as_image", lambda: good_body(image=b64(b"just some text\n" * 40)), MEDIA, "bad_image"),
    ("text_as_audio", lambda: good_body(audio=b64(b"just some text\n" * 40)), MEDIA, "bad_audio"),
    ("truncated_png", lambda: good_body(image=b64(small_face()[: len(small_face()) // 2])), MEDIA, "bad_image"),
    # cut inside the header: Pillow recognises the format, then raises OSError while reading it
    ("truncated_png_header", lambda: good_body(image=b64(small_face()[:20])), MEDIA, "bad_image"),
    ("truncated_jpeg_header", lambda: good_body(image=b64((ASSETS / "astronaut.jpg").read_bytes()[:100])), MEDIA, "bad_image"),
    ("truncated_webp_header", lambda: good_body(image=b64(image_bytes(astronaut(), "WEBP")[:100])), MEDIA, "bad_image"),
    ("truncated_bmp_header", lambda: good_body(image=b64(image_bytes(astronaut(), "BMP")[:30])), MEDIA, "bad_image"),
    ("truncated_jpeg", lambda: good_body(image=b64((ASSETS / "astronaut.jpg").read_bytes()[:20000])), MEDIA, "bad_image"),
    ("image_1x1", lambda: good_body(image=b64(image_bytes(Image.new("RGB", (1, 1)))), box=None), LIMIT, "image_too_small"),
    ("png_20000x20000", lambda: good_body(image=b64(png_header_only(20000, 20000))), LIMIT, "image_too_large"),
    ("png_5000x4000", lambda: good_body(image=b64(png_header_only(5000, 4000))), LIMIT, "image_too_large"),
    ("no_face", lambda: good_body(image=b64((ASSETS / "cat.jpg").read_bytes()), box=None), {422}, "no_face"),
    ("wav_0_samples", lambda: good_body(audio=b64(wav(np.zeros((0, 1), np.float32)))), FIELD, "empty_audio"),
    ("wav_too_long", lambda: good_body(audio=b64(wav(speech_s(MAX_AUDIO_S + 1)))), LIMIT, "audio_too_long"),
    (
        "opus_too_long",
        lambda: good_body(audio=b64(encode_audio(speech_s(MAX_AUDIO_S + 1), 16000, "webm", "libopus"))),
        LIMIT,
        "audio_too_long",
    ),
    ("mp3_corrupted", lambda: good_body(audio=b64(corrupt(encode_audio(speech_s(1), 16000, "mp3", "libmp3lame")))), MEDIA, "bad_audio"),
    ("video_as_audio", lambda: good_body(audio=b64(video_without_audio())), MEDIA, "no_audio_track"),
    ("layout_changes", lambda: good_body(audio=b64(mono_then_stereo())), MEDIA, "bad_audio"),
    ("fps_0", lambda: good_body(fps=0), FIELD, "invalid_fps"),
    ("fps_-1", lambda: good_body(fps=-1), FIELD, "invalid_fps"),
    ("fps_1e9", lambda: good_body(fps=1e9), FIELD, "invalid_fps"),
    ("fps_61", lambda: good_body(fps=61), FIELD, "invalid_fps"),
    ("fps_string", lambda: good_body(fps="25"), FIELD, "invalid_fps"),
    ("fps_true", lambda: good_body(fps=True), FIELD, "invalid_fps"),
    ("fps_400_digits", lambda: good_body(fps=10**400), FIELD, "invalid_fps"),
    ("fps_1e400", lambda: json.dumps(good_body(fps=1)).replace('"fps": 1', '"fps": 1e400').encode(), FIELD, "invalid_fps"),
    ("fps_nan", lambda: json.dumps(good_body(fps=1)).replace('"fps": 1', '"fps": NaN').encode(), NOT_JSON, "invalid_json"),
    ("box_negative", lambda: good_body(box=[-10, 30, 140, 150]), FIELD, "invalid_box"),
    ("box_outside", lambda: good_body(box=[50, 30, 500, 150]), FIELD, "invalid_box"),
    ("box_inverted", lambda: good_body(box=[140, 150, 50, 30]), FIELD, "invalid_box"),
    ("box_empty", lambda: good_body(box=[50, 30, 50, 150]), FIELD, "invalid_box"),
    ("box_three", lambda: good_body(box=[50, 30, 140]), FIELD, "invalid_box"),
    ("box_string", lambda: good_body(box="50,30,140,150"), FIELD, "invalid_box"),
    ("box_fraction", lambda: good_body(box=[50.5, 30, 140, 150]), FIELD, "invalid_box"),
    ("box_mixed", lambda: good_body(box=[50, 30, 140, "150"]), FIELD, "invalid_box"),
    ("pads_string", lambda: good_body(pads="0,10,0,0", box=None), FIELD, "invalid_pads"),
    ("pads_five", lambda: good_body(pads=[0, 10, 0, 0, 0], box=None), FIELD, "invalid_pads"),
    ("pads_object", lambda: good_body(pads={"top": 0}, box=None), FIELD, "invalid_pads"),
    ("pads_huge", lambda: good_body(pads=[0, 10**6, 0, 0], box=None), FIELD, "invalid_pads"),
    ("paste_unknown", lambda: good_body(paste="blur"), FIELD, "invalid_paste"),
    ("paste_number", lambda: good_body(paste=1), FIELD, "invalid_paste"),
]


def corrupt(data: bytes) -> bytes:
    """Keep the first 200 bytes (ID3/frame header) of an MP3, replace the rest with noise."""
    return data[:200] + np.random.default_rng(3).bytes(len(data) - 200)


def mono_then_stereo() -> bytes:
    """Two ADTS AAC streams back to back: the channel layout and rate change mid-stream."""
    one = speech_s(0.5)
    return encode_audio(one, 16000, "adts", "aac") + encode_audio(np.repeat(one, 2, axis=1), 16000, "adts", "aac", "stereo")


@pytest.mark.parametrize(("make", "statuses", "code"), [pytest.param(m, s, c, id=n) for n, m, s, c in BAD])
def test_bad_request_is_refused_and_the_next_succeeds(client, make, statuses: set[int], code: str) -> None:
    body = make()
    t0 = time.perf_counter()
    if isinstance(body, bytes):
        resp = client.post("/api/generate", data=body, content_type="application/json")
    else:
        resp = client.post("/api/generate", json=body)
    elapsed = time.perf_counter() - t0
    err = assert_error(resp, statuses, code)
    if code in ("image_too_large", "audio_too_long"):  # the message names the limit
        assert re.search(r"limit is (16777216|3 s)", err["message"]), err
    if code == "image_too_large":
        assert elapsed < 0.5, f"a header-only bomb took {elapsed:.2f} s: pixels were decoded"
    still_serves(client)


@pytest.mark.parametrize(
    ("content_type", "data"),
    [("text/plain", json.dumps({"a": 1})), ("application/x-www-form-urlencoded", "image=AAAA&audio=AAAA"), (None, json.dumps({"a": 1}))],
)
def test_wrong_content_type_is_415(client, content_type: str | None, data: str) -> None:
    assert_error(client.post("/api/generate", data=data, content_type=content_type), {415}, "unsupported_content_type")
    still_serves(client)


def test_unknown_route_and_method_are_json(client) -> None:
    assert_error(client.get("/api/generate"), {405})
    assert_error(client.post("/api/nothing-here", json={}), {404})


# ---------------------------------------------------------------- unusual but valid media


def gray16() -> Image.Image:
    return Image.fromarray(np.asarray(astronaut().convert("L"), np.uint16) * 257)


def rgba() -> Image.Image:
    im = astronaut().convert("RGBA")
    im.putalpha(Image.linear_gradient("L").resize(im.size))
    return im


IMAGES: dict[str, Callable[[], bytes]] = {
    "grayscale": lambda: image_bytes(astronaut().convert("L")),
    "16bit": lambda: image_bytes(gray16()),
    "cmyk_jpeg": lambda: image_bytes(astronaut().convert("CMYK"), "JPEG"),
    "rgba": lambda: image_bytes(rgba()),
    "palette": lambda: image_bytes(astronaut().convert("P")),
    "jpeg": lambda: (ASSETS / "astronaut.jpg").read_bytes(),
    "webp": lambda: image_bytes(astronaut(), "WEBP"),
    "bmp": lambda: image_bytes(astronaut(), "BMP"),
}


def check_video(resp, fps: float, width: int, height: int, seconds: float, tolerance: float) -> dict:
    """A 200 whose MP4 decodes to `frames` frames of the right size, frames = ceil(duration × fps)."""
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    assert (out["width"], out["height"], out["fps"]) == (width, height, fps)
    assert abs(out["duration_s"] - seconds) <= tolerance, (out["duration_s"], seconds)
    # duration_s is rounded to the ms: frames is the ceiling of the exact duration × fps
    assert out["frames"] - 1 < (out["duration_s"] + 5e-4) * fps and out["frames"] >= (out["duration_s"] - 5e-4) * fps
    with av.open(io.BytesIO(base64.b64decode(out["video"]))) as c:
        assert len(c.streams.audio) == 1
        frames = list(c.decode(video=0))
    assert len(frames) == out["frames"]
    assert (frames[0].width, frames[0].height) == (width, height)
    return out


@pytest.mark.parametrize("kind", list(IMAGES))
def test_image_variants_succeed(client, kind: str) -> None:
    resp = client.post("/api/generate", json={"image": b64(IMAGES[kind]()), "audio": b64(wav(speech_s(0.3))), "fps": 10})
    check_video(resp, 10, 512, 512, 0.3, 1e-3)


def test_odd_size_is_rounded_down_to_even(client) -> None:
    im = astronaut().crop((0, 0, 511, 383))
    resp = client.post("/api/generate", json={"image": b64(image_bytes(im)), "audio": b64(wav(speech_s(0.3))), "fps": 10})
    check_video(resp, 10, 510, 382, 0.3, 1e-3)


AUDIO: dict[str, tuple[Callable[[], bytes], float]] = {
    # name: (encoded 1 s of speech, duration tolerance: lossy codecs add encoder priming/padding)
    "wav_stereo_44k": (lambda: wav(np.repeat(resample(speech_s(1), 44100), 2, axis=1), 44100), 1e-3),
    "wav_float32": (lambda: wav(speech_s(1), subtype="FLOAT"), 1e-3),
    "flac": (lambda: encode_audio(speech_s(1), 16000, "flac", "flac"), 1e-3),
    "ogg_vorbis": (lambda: encode_audio(speech_s(1), 16000, "ogg", "vorbis"), 0.12),
    "mp3": (lambda: encode_audio(speech_s(1), 16000, "mp3", "libmp3lame"), 0.12),
    "opus_webm": (lambda: encode_audio(speech_s(1), 16000, "webm", "libopus"), 0.12),
    "aac_m4a": (lambda: encode_audio(speech_s(1), 16000, "ipod", "aac"), 0.12),
    "aac_5.1": (lambda: encode_audio(np.repeat(speech_s(1), 6, axis=1), 16000, "ipod", "aac", "5.1"), 0.12),
    "all_zero": (lambda: wav(np.zeros((16000, 1), np.float32)), 1e-3),
}


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    t = np.arange(round(len(samples) * rate / 16000)) * 16000 / rate
    return np.interp(t, np.arange(len(samples)), samples[:, 0]).astype(np.float32)[:, None]


@pytest.mark.parametrize("kind", list(AUDIO))
def test_audio_variants_succeed(client, kind: str) -> None:
    make, tolerance = AUDIO[kind]
    resp = client.post("/api/generate", json={"image": b64(small_face()), "audio": b64(make()), "box": SMALL_BOX, "fps": 10})
    check_video(resp, 10, 192, 192, 1.0, tolerance)


def test_10_ms_of_audio_is_one_frame(client) -> None:
    out = check_video(client.post("/api/generate", json=good_body()), 25, 192, 192, 0.01, 1e-3)
    assert out["frames"] == 1


# ---------------------------------------------------------------- property: no body gives a 5xx

JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
JSON_VALUE = st.recursive(
    JSON_LEAF, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=12
)
B64_JUNK = st.one_of(
    st.binary(max_size=64).map(b64),
    st.text(alphabet="ABCxyz019+/-_=. \n:;,data", max_size=40),
    st.sampled_from(["data:image/png;base64,", "====", "data:;base64,QUJD", "A" * 4001]),
    st.builds(lambda: b64(small_face())),
    st.builds(lambda: b64(wav(speech_s(0.01)))),
)
FIELD_VALUE = st.one_of(JSON_VALUE, B64_JUNK, st.sampled_from([[0, 10, 0, 0], SMALL_BOX, "feather", "box", 25, 0.5, 60, [1, 2, 3, 4.0]]))
FIELD_NAME = st.sampled_from(["image", "audio", "fps", "pads", "box", "paste"]) | st.text(max_size=6)
BODY = st.dictionaries(FIELD_NAME, FIELD_VALUE, max_size=7)
MUTATED = st.dictionaries(FIELD_NAME, FIELD_VALUE, max_size=3).map(lambda d: good_body() | d)  # a valid request, a few fields changed
RAW = st.one_of(
    BODY.map(lambda b: json.dumps(b).encode()),
    MUTATED.map(lambda b: json.dumps(b).encode()),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=120),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=RAW)
def test_no_request_body_gives_a_5xx(client, raw: bytes) -> None:
    resp = client.post("/api/generate", data=raw, content_type="application/json")
    event(f"status {resp.status_code}")
    assert resp.status_code < 500, resp.get_data(as_text=True)[:300]
    if resp.status_code == 200:
        assert resp.get_json()["frames"] >= 1
    else:
        assert_error(resp, set(range(400, 500)))
