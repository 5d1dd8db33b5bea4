"""Helpers the tests share: the app in process, test media made in memory (PyAV,
soundfile, Pillow) and MP4 decoding; no files left behind. Fixtures live in conftest.py."""

from __future__ import annotations

import base64
import io
import math
import struct
import time
import zlib
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image

from harness import ASSETS
from harness.clips import idle_clip  # noqa: F401  (shared with bench)
from harness.jobs import http, submit_job, wait_job  # noqa: F401  (shared with bench)
from wav2lip_core.config import Settings

SMALL_BOX = [50, 30, 140, 150]  # the astronaut's face inside small_face(), given to skip detection
ERROR_SHAPE_KEYS = {"code", "message"}
MODELS_TIMEOUT_S = 120


def make_settings(models_dir: Path, **overrides: object) -> Settings:
    """Default settings on `models_dir`, no compile cache, no job threads (a job thread holds its app, and with it
    the compiled models, until the process ends: tests of jobs ask for them), with `overrides`."""
    return replace(Settings(), **({"models_dir": models_dir, "cache_dir": None, "job_workers": 0} | overrides))


def loaded_app(settings: Settings):
    """A Flask app (in process) whose models are compiled and warm."""
    from lipsync_server.app import create_app

    app = create_app(settings)
    models = app.extensions["models"]
    models.start_loading()
    t0 = time.monotonic()
    while models.head is None and models.error is None and time.monotonic() - t0 < MODELS_TIMEOUT_S:
        time.sleep(0.05)
    assert models.head is not None, models.error
    return app


def encode_audio(samples: np.ndarray, rate: int, fmt: str, codec: str, layout: str | None = None) -> bytes:
    """Encode (n, channels) float32 with PyAV, e.g. ("webm", "libopus"), ("ipod", "aac"), ("mp3", "libmp3lame")."""
    if codec == "vorbis":  # PyAV here lacks libvorbis; FFmpeg's own encoder writes a bogus last granule position
        buf = io.BytesIO()
        sf.write(buf, samples, rate, format="OGG", subtype="VORBIS")
        return buf.getvalue()
    buf = io.BytesIO()
    layout = layout or ("stereo" if samples.shape[1] == 2 else "mono")
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


@dataclass
class Decoded:
    video_codec: str
    audio_codec: str | None
    pix_fmt: str
    width: int
    height: int
    frames: list[np.ndarray]
    video_duration: float
    audio_duration: float | None


def decode_mp4(data: bytes) -> Decoded:
    """Every BGR frame and the stream facts of an MP4."""
    with av.open(io.BytesIO(data)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
        return Decoded(
            v.codec_context.name,
            a.codec_context.name if a else None,
            v.codec_context.pix_fmt,
            v.width,
            v.height,
            frames,
            float(v.duration * v.time_base),
            float(a.duration * a.time_base) if a else None,
        )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
