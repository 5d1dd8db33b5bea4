"""Issue 5: every hostile request gets a typed 4xx JSON error and leaves the server serving; unusual
but valid media succeed; the real gunicorn server survives overload, deadlines, killed workers and
does not leak memory or temporary files."""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import re
import signal
import socket
import struct
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from conftest import ASSETS, Server, make_settings
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

MAX_AUDIO_S = 3.0  # the test app's MAX_AUDIO_SECONDS: "audio too long" needs only 4 s of audio
SMALL_BOX = [50, 30, 140, 150]  # the astronaut's face inside small_face(), given to skip detection
ERROR_SHAPE_KEYS = {"code", "message"}

# ---------------------------------------------------------------- media, made in memory


@cache
def speech() -> tuple[np.ndarray, int]:
    """test_assets/speech.wav: (n, 1) float32 at 16 kHz, 6.4 s."""
    samples, rate = sf.read(ASSETS / "speech.wav", dtype="float32", always_2d=True)
    return samples, rate


def speech_s(seconds: float) -> np.ndarray:
    samples, rate = speech()
    reps = math.ceil(seconds * rate / len(samples))
    return np.tile(samples, (reps, 1))[: round(seconds * rate)]


def wav(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def encoded(samples: np.ndarray, rate: int, fmt: str, codec: str, layout: str = "mono") -> bytes:
    """Encode (n, channels) float32 with PyAV, e.g. ("webm", "libopus"), ("ipod", "aac"), ("mp3", "libmp3lame")."""
    if codec == "vorbis":  # PyAV here lacks libvorbis; FFmpeg's own encoder writes a bogus last granule position
        buf = io.BytesIO()
        sf.write(buf, samples, rate, format="OGG", subtype="VORBIS")
        return buf.getvalue()
    buf = io.BytesIO()
    out_rate = 48000 if codec == "libopus" else rate
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=out_rate, layout=layout)
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=out_rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T, dtype=np.float32), format="fltp", layout=layout)
        frame.sample_rate = rate
        for out in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(out))
        container.mux(stream.encode(None))
    return buf.getvalue()


def video_without_audio() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


@cache
def astronaut() -> Image.Image:
    return Image.open(ASSETS / "astronaut.jpg").convert("RGB")


def image_bytes(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


@cache
def small_face() -> bytes:
    """A 192×192 crop around the astronaut's face: cheap to decode, paste and encode."""
    return image_bytes(astronaut().crop((120, 40, 312, 232)))


def png_header_only(width: int, height: int) -> bytes:
    """A real 32×32 PNG whose IHDR claims width×height: a decompression bomb without the bytes."""
    data = bytearray(image_bytes(Image.new("L", (32, 32))))
    data[16:24] = struct.pack(">II", width, height)  # IHDR payload starts after signature, length, "IHDR"
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def good_body(**fields: object) -> dict[str, object]:
    """A cheap valid request (one frame), with `fields` replacing or adding to it."""
    return {"image": b64(small_face()), "audio": b64(wav(speech_s(0.01))), "box": SMALL_BOX} | fields


def assert_error(resp, statuses: set[int], code: str | None = None) -> dict[str, str]:
    """The contract's error JSON: {"error": {"code", "message"}}, no traceback, a typed status."""
    assert resp.status_code in statuses, (resp.status_code, resp.get_data(as_text=True)[:300])
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_SHAPE_KEYS, body
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    assert resp.headers["X-Request-ID"]
    return body["error"]


# ---------------------------------------------------------------- the Flask app, in process


@pytest.fixture(scope="module")
def client(ir_blazeface: Path):
    from app import create_app

    app = create_app(make_settings(ir_blazeface, batch_size=4, max_audio_seconds=MAX_AUDIO_S))
    models = app.extensions["models"]
    models.start_loading()
    t0 = time.monotonic()
    while models.lipsync is None and models.error is None and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    assert models.lipsync is not None, models.error
    return app.test_client()


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
    ("opus_too_long", lambda: good_body(audio=b64(encoded(speech_s(MAX_AUDIO_S + 1), 16000, "webm", "libopus"))), LIMIT, "audio_too_long"),
    ("mp3_corrupted", lambda: good_body(audio=b64(corrupt(encoded(speech_s(1), 16000, "mp3", "libmp3lame")))), MEDIA, "bad_audio"),
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
    return encoded(one, 16000, "adts", "aac") + encoded(np.repeat(one, 2, axis=1), 16000, "adts", "aac", "stereo")


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
    "flac": (lambda: encoded(speech_s(1), 16000, "flac", "flac"), 1e-3),
    "ogg_vorbis": (lambda: encoded(speech_s(1), 16000, "ogg", "vorbis"), 0.12),
    "mp3": (lambda: encoded(speech_s(1), 16000, "mp3", "libmp3lame"), 0.12),
    "opus_webm": (lambda: encoded(speech_s(1), 16000, "webm", "libopus"), 0.12),
    "aac_m4a": (lambda: encoded(speech_s(1), 16000, "ipod", "aac"), 0.12),
    "aac_5.1": (lambda: encoded(np.repeat(speech_s(1), 6, axis=1), 16000, "ipod", "aac", "5.1"), 0.12),
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


# ---------------------------------------------------------------- the real gunicorn server


def workers(master: int) -> set[int]:
    """Pids whose parent is the gunicorn master."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:  # the process exited while we listed /proc
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            out.add(int(d.name))
    return out


def owner(server_port: int, client_port: int, pids: set[int], timeout: float = 3.0) -> int:
    """The worker that accepted our TCP connection: /proc/net/tcp gives its inode, /proc/<pid>/fd the holder."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        inodes = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].split(":")[1], 16) == server_port and int(f[2].split(":")[1], 16) == client_port and f[9] != "0":
                inodes.add(f"socket:[{f[9]}]")
        for pid in pids:
            fds = Path(f"/proc/{pid}/fd")
            for fd in fds.iterdir() if fds.exists() else ():
                try:
                    if os.readlink(fd) in inodes:
                        return pid
                except OSError:  # the fd closed while we looked
                    continue
        time.sleep(0.02)
    raise TimeoutError(f"no worker of {pids} holds the connection from port {client_port}")


def connection_to(server: Server, pid: int, timeout: float = 30.0) -> http.client.HTTPConnection:
    """A keep-alive connection accepted by worker `pid` (connect until that worker accepts one, ≤ 20 tries)."""
    spare = []
    try:
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
            conn.connect()
            if owner(server.port, conn.sock.getsockname()[1], workers(server.proc.pid)) == pid:
                return conn
            spare.append(conn)
        raise AssertionError(f"worker {pid} accepted none of 20 connections")
    finally:
        for conn in spare:
            conn.close()


def call(conn: http.client.HTTPConnection, body: dict | bytes, path: str = "/api/generate", **headers: str) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **headers})
    resp = conn.getresponse()
    return resp.status, dict(resp.headers), json.loads(resp.read())


def post(server: Server, body: dict, timeout: float = 60.0) -> tuple[int, dict, dict, float]:
    """One request on a fresh connection: status, headers, JSON, seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    t0 = time.monotonic()
    try:
        status, headers, body_out = call(conn, body)
    finally:
        conn.close()
    return status, headers, body_out, time.monotonic() - t0


def log_records(server: Server) -> list[dict]:
    return [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]


def wait_workers_ready(server: Server, n: int, timeout: float = 60.0) -> set[int]:
    """Until n current workers have logged "models ready"; returns their pids."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ready = {r["pid"] for r in log_records(server) if r.get("message", "").startswith("models ready")}
        current = workers(server.proc.pid)
        if len(current) == n and current <= ready:
            return current
        time.sleep(0.1)
    raise TimeoutError(f"{n} workers not ready after {timeout} s")


@pytest.fixture(scope="module")
def pool(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """2 workers × 1 request, no queue, 3 s deadline, batch 1 (cheap one-frame requests), private TMPDIR."""
    tmp = tmp_path_factory.mktemp("pool_tmp")
    s = Server(ir_blazeface, tmp_path_factory.mktemp("pool_logs") / "gunicorn.log",
               WEB_CONCURRENCY="2", MAX_CONCURRENT="1", MAX_QUEUE="0", BATCH_SIZE="1",
               REQUEST_TIMEOUT_S="3", TMPDIR=str(tmp))  # fmt: skip
    s.tmpdir = tmp
    try:
        wait_workers_ready(s, 2)
        yield s
    finally:
        s.stop()


def test_body_over_limit_is_413_before_the_body_is_read(pool: Server) -> None:
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
        head = f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {10**10}\r\n\r\n"
        sock.sendall(head.encode() + b'{"image": "')
        t0 = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)  # the socket timeout bounds this
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"\r\nX-Request-ID: " in reply.split(b"\r\n\r\n", 1)[0]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "payload_too_large"
    assert time.monotonic() - t0 < 5


def test_overload_is_503_with_retry_after_at_once(pool: Server) -> None:
    body = good_body(audio=b64(wav(speech_s(1.2))), fps=25)  # ~30 frames: ~1.5 s of work per request
    with ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda _: post(pool, body), range(6)))
    busy = [r for r in results if r[0] == 503]
    print("statuses", sorted(r[0] for r in results), "503 latencies", [round(r[3], 3) for r in busy])
    assert len(busy) >= 2  # 2 workers × 1 slot, no queue: at least 4 of 6 simultaneous requests cannot run
    assert all(r[0] in (200, 503) for r in results)
    for _status, headers, out, seconds in busy:
        assert int(headers["Retry-After"]) >= 1 and out["error"]["code"] == "busy"
        assert seconds < 1.0, "503 must be immediate, not after waiting"
    assert post(pool, good_body())[0] == 200


def test_a_stalled_upload_does_not_hold_the_compute_slot(pool: Server) -> None:
    """One connection per worker sends its headers and part of the body, then stalls: others still run."""
    stalled = []
    try:
        for pid in sorted(workers(pool.proc.pid)):
            conn = connection_to(pool, pid)
            conn.putrequest("POST", "/api/generate")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", "100000")
            conn.endheaders(b'{"image": "')
            stalled.append(conn)
        time.sleep(0.3)  # each worker has a thread blocked reading a body that never comes
        assert [post(pool, good_body())[0] for _ in range(3)] == [200] * 3
    finally:
        for conn in stalled:
            conn.close()


def test_deadline_is_504_and_the_worker_keeps_serving(pool: Server) -> None:
    before = workers(pool.proc.pid)
    status, _, out, seconds = post(pool, good_body(audio=b64(wav(speech_s(60))), fps=25))  # 1500 frames ≫ 3 s
    print(f"504 after {seconds:.2f} s")
    assert status == 504 and out["error"]["code"] == "deadline_exceeded", out
    assert seconds < 3 + 5
    assert [post(pool, good_body())[0] for _ in range(4)] == [200] * 4
    assert workers(pool.proc.pid) == before  # no worker died or was recycled


def test_metrics_sum_both_workers(pool: Server) -> None:
    def count_400() -> float:
        with urllib.request.urlopen(f"{pool.url}/metrics", timeout=10) as r:
            match = re.search(r'^lipsync_requests_total\{status="400"\} (\S+)$', r.read().decode(), re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    before = count_400()
    pids = sorted(workers(pool.proc.pid))
    for pid, n in zip(pids, (3, 2), strict=True):
        conn = connection_to(pool, pid)
        try:
            assert [call(conn, {"fps": 25})[0] for _ in range(n)] == [400] * n
        finally:
            conn.close()
    assert count_400() - before == 5


def test_json_log_lines_carry_request_id_status_pid(pool: Server) -> None:
    rid = f"log-probe-{uuid.uuid4().hex}"
    conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=10)
    try:
        status, headers, _ = call(conn, {"image": "!!"}, **{"X-Request-ID": rid})
    finally:
        conn.close()
    assert status == 400 and headers["X-Request-ID"] == rid
    t0 = time.monotonic()
    while not (records := [r for r in log_records(pool) if r.get("request_id") == rid]) and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert len(records) == 1, records
    assert records[0]["status"] == 400 and records[0]["pid"] in workers(pool.proc.pid) and records[0]["path"] == "/api/generate"


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def test_rss_growth_over_200_requests(pool: Server) -> None:
    pid = min(workers(pool.proc.pid))
    conn = connection_to(pool, pid)  # keep-alive: every request goes to this worker
    body = good_body(audio=b64(wav(speech_s(0.5))), fps=2)  # 0.5 s of audio, one frame
    try:
        for _ in range(20):  # warm-up: allocator pools and caches reach their steady size
            assert call(conn, body)[0] == 200
        before = rss_mb(pid)
        t0 = time.monotonic()
        for _ in range(200):
            assert call(conn, body)[0] == 200
        after = rss_mb(pid)
    finally:
        conn.close()
    print(
        f"worker {pid} RSS {before:.1f} MB → {after:.1f} MB (+{after - before:.1f} MB) over 200 requests in {time.monotonic() - t0:.1f} s"
    )
    assert after - before <= 50


def listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.startswith("wav2lip-metrics-")}


def test_no_temporary_files_are_left_behind(pool: Server) -> None:
    shm = Path("/dev/shm")
    before_tmp, before_shm = listing(pool.tmpdir), listing(shm)
    bodies = [
        good_body(),
        good_body(audio=b64(encoded(speech_s(0.5), 16000, "webm", "libopus"))),
        good_body(audio=b64(encoded(speech_s(0.5), 16000, "ipod", "aac"))),
        good_body(audio=b64(video_without_audio())),
        good_body(image=b64(small_face()[:500])),
        good_body(audio=b64(wav(speech_s(60)))),  # 504: the deadline abandons a half-written MP4
    ]
    statuses = [post(pool, b)[0] for b in bodies]
    assert statuses == [200, 200, 200, 415, 415, 504]
    assert listing(pool.tmpdir) == before_tmp, listing(pool.tmpdir) - before_tmp
    assert not listing(shm) - before_shm, listing(shm) - before_shm
    # the listing is the server's own tempfile.gettempdir(): gunicorn.conf.py put its metrics directory there
    assert any(p.name.startswith("wav2lip-metrics-") for p in pool.tmpdir.iterdir())


def test_sigkill_mid_request_fails_cleanly_and_the_worker_is_replaced(pool: Server) -> None:
    victim, survivor = sorted(workers(pool.proc.pid))
    doomed, spared = connection_to(pool, victim, timeout=10), connection_to(pool, survivor, timeout=30)
    long_body = json.dumps(good_body(audio=b64(wav(speech_s(30))), fps=25)).encode()  # would take > 3 s
    doomed.request("POST", "/api/generate", body=long_body, headers={"Content-Type": "application/json"})
    with ThreadPoolExecutor(1) as ex:
        spared_result = ex.submit(call, spared, good_body(audio=b64(wav(speech_s(0.5))), fps=25))  # ~0.7 s of work
        time.sleep(0.5)  # both requests are computing now
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            doomed.getresponse().read()  # reset or closed by the kernel, not a hang (timeout 10 s)
        assert time.monotonic() - killed_at < 5
        assert spared_result.result(timeout=30)[0] == 200  # the other worker is unaffected
    doomed.close()
    spared.close()
    new = wait_workers_ready(pool, 2, timeout=15) - {survivor}
    assert len(new) == 1 and victim not in new
    conn = connection_to(pool, new.pop(), timeout=10)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    recovery = time.monotonic() - killed_at
    print(f"worker {victim} killed; replacement serving /health 200 after {recovery:.1f} s")
    assert recovery < 15
    assert post(pool, good_body())[0] == 200
