"""Helpers that make test media with PyAV and decode MP4s (no files left behind)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf


def encode_audio(samples: np.ndarray, rate: int, fmt: str, codec: str) -> bytes:
    """(n, channels) float32 → an encoded file in memory, e.g. ("ogg", "vorbis"), ("webm", "libopus")."""
    buf = io.BytesIO()
    if codec == "vorbis":  # FFmpeg's own vorbis encoder is experimental; libsndfile's is not
        sf.write(buf, samples, rate, format="OGG", subtype="VORBIS")
        return buf.getvalue()
    channels = samples.shape[1]
    with av.open(buf, "w", format=fmt) as c:
        out_rate = 48000 if codec == "libopus" else rate
        stream = c.add_stream(codec, rate=out_rate, layout="stereo" if channels == 2 else "mono")
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=stream.layout, rate=out_rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T, dtype=np.float32), format="fltp", layout=stream.layout)
        frame.sample_rate = rate
        for r in [*resampler.resample(frame), *resampler.resample(None)]:
            c.mux(stream.encode(r))
        c.mux(stream.encode(None))
    return buf.getvalue()


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
